"""`lmforge corpus` and `lmforge tokenizer`: the data that feeds every later stage."""

from __future__ import annotations

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.data.stage import (
    EMBEDDED,
    CorpusSettings,
    TokenizerSettings,
    run_corpus,
    run_tokenizer,
)

tokenizer_app = typer.Typer(help="Train byte-level BPE tokenizers with chat special tokens.",
                            no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer", rich_help_panel="Lifecycle stages")


@app.command(rich_help_panel="Lifecycle stages",
             help="Register the embedded default corpus (the documentation shipped with "
                  "Python: pydoc topics and standard-library docstrings) as a dataset.")
def corpus() -> None:
    out = run_corpus(workspace(), CorpusSettings())
    console.print(f"dataset [bold]{out.artifact.id}[/]: {out.summary}")


@tokenizer_app.command("train", help="Train a byte-level BPE tokenizer on text/JSONL files, "
                                     f"folders, globs, dataset ids, or '{EMBEDDED}'.")
def tokenizer_train(
    inputs: list[str] = typer.Option(
        [EMBEDDED], "--input", "-i",
        help=f"Repeatable. A path, folder, glob, dataset artifact id, or '{EMBEDDED}' "
             "(the embedded corpus)."),
    vocab_size: int = typer.Option(4096, help="Tokens in the vocabulary, special ones included."),
    min_frequency: int = typer.Option(2, help="Merge only pairs seen at least this often."),
    text_field: str = typer.Option("text", help="JSONL field holding the text."),
) -> None:
    out = run_tokenizer(workspace(), TokenizerSettings(tuple(inputs), vocab_size, min_frequency,
                                                       text_field))
    console.print(f"tokenizer [bold]{out.artifact.id}[/]: {out.summary}")
