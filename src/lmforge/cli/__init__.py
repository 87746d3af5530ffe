"""Command-line interface: one verb per lifecycle stage, one module per group of verbs."""

from lmforge.cli import data_cmds, design_cmds, model_cmds, registry_cmds, run_cmd  # noqa: F401
from lmforge.cli.app import app, main

__all__ = ["app", "main"]
