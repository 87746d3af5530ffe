"""Command-line interface: one verb per lifecycle stage, one module per group of verbs."""

import importlib

from lmforge.cli.app import app, main

# Importing a module registers its verbs; this order is the order `lmforge --help` shows.
for _module in ("run_cmd", "design_cmds", "data_cmds", "curate_cmd", "model_cmds", "chat_cmd",
                "serve_cmd", "train_cmds", "eval_cmds", "redteam_cmds", "lora_cmds",
                "registry_cmds", "card_cmd", "reproduce_cmd"):
    importlib.import_module(f"lmforge.cli.{_module}")

__all__ = ["app", "main"]
