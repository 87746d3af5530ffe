"""The root `lmforge` command: global options, and errors shown as one clean line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from lmforge import __version__
from lmforge.errors import Interrupted, LmforgeError
from lmforge.registry import Workspace

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="lmforge",
    help="Take a language model through its whole life: design, curate, initialize, pretrain, "
         "evaluate, fine-tune, red-team, serve and retire it, with one record of every step.\n\n"
         "Start with `lmforge run` (the quickstart lifecycle on the embedded corpus), or run "
         "the stages one by one: design → tokenizer → init → generate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_workspace_root: Path | None = None
_registry_url: str | None = None


def workspace() -> Workspace:
    """The workspace chosen by --workspace, $LMFORGE_HOME, or ./lmforge-workspace, with its
    record where --registry-url or $LMFORGE_REGISTRY_URL says (else in the folder)."""
    return Workspace.open(_workspace_root, registry_url=_registry_url)


def _version(value: bool) -> None:
    if value:
        console.print(f"lmforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    workspace_dir: Path = typer.Option(
        None, "--workspace", "-w", envvar="LMFORGE_HOME",
        help="Workspace folder (registry + artifacts). Default: ./lmforge-workspace"),
    registry_url: str = typer.Option(
        None, "--registry-url", envvar="LMFORGE_REGISTRY_URL", show_envvar=True,
        help="Keep the record in PostgreSQL, shared by a team's machines "
             "(postgresql://USER@HOST:5432/DBNAME; pip install 'lmforge\\[team]'); artifact "
             "files stay in the workspace folder, which they share. Default: the folder's "
             "registry.db (SQLite)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    global _workspace_root, _registry_url
    _workspace_root = workspace_dir
    _registry_url = registry_url or None
    if _registry_url:  # the processes this one starts (servers, ranks) share the record too
        os.environ["LMFORGE_REGISTRY_URL"] = _registry_url


def main() -> None:
    """Console entry point: user mistakes exit 2 with one line, never a traceback."""
    try:
        app()
    except LmforgeError as e:
        # Under torchrun every rank meets the same mistake: rank 0 says it once.
        if os.environ.get("RANK", "0") == "0":
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
            if e.hint:
                err_console.print(f"  [bold]fix:[/] {escape(e.hint)}", highlight=False)
        sys.exit(2)
    except Interrupted as e:  # a training step inside `lmforge run` (verbs catch their own)
        err_console.print(f"{escape(str(e))}; run the same command again to resume",
                          highlight=False)
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # e.g. `lmforge registry ls | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
