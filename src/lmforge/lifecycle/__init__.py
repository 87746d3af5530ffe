"""Recipes and the stage runner: the lifecycle as one command."""
