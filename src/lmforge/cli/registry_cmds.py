"""`lmforge registry`: the record of every artifact, its lineage and lifecycle."""

from __future__ import annotations

import json

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.registry import render

registry_app = typer.Typer(help="List, inspect and trace artifacts in the workspace.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry", rich_help_panel="The record")


@registry_app.command("ls", help="List artifacts, newest first.")
def ls(
    kind: str = typer.Option(None, help="Only this kind (dataset, tokenizer, design, model, ...)."),
    state: str = typer.Option(None, help="Only models in this lifecycle state."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    ws = workspace()
    records = ws.list(kind=kind, state=state)
    if as_json:
        for r in records:
            print(json.dumps({"id": r.id, "kind": r.kind, "stage": r.stage, "state": r.state,
                              "name": r.name, "created": r.created}))
        return
    console.print(render.artifacts_table(records, ws.aliases()))


@registry_app.command(help="Everything about one artifact: parents, settings, metrics, files "
                           "with checksums (verified), lifecycle events.")
def show(
    ref: str = typer.Argument(..., help="Id, id prefix, alias, kind:latest or folder."),
) -> None:
    ws = workspace()
    art = ws.resolve(ref)
    console.print(render.show(art, ws.state_of(art.id), ws.history(art.id), ws.aliases_of(art.id)))


@registry_app.command(help="The tree of what made an artifact, back to its sources.")
def lineage(ref: str = typer.Argument(..., help="Id, id prefix, alias or kind:latest.")) -> None:
    console.print(render.lineage_tree(workspace().lineage(ref)))


@registry_app.command(help="Point a name (e.g. production) at an artifact.")
def alias(
    name: str = typer.Argument(..., help="The alias."),
    ref: str = typer.Argument(..., help="The artifact it names."),
) -> None:
    art_id = workspace().set_alias(name, ref)
    console.print(f"{name} -> {art_id}")


@registry_app.command(help="Move a model to a lifecycle state (e.g. approved). Approval needs "
                           "an eval report and a red-team report of this exact model that "
                           "passed their gates (`lmforge eval MODEL --gate ...`, `lmforge "
                           "redteam MODEL`). --force overrides, and the record says so.")
def promote(
    ref: str = typer.Argument(..., help="The model (id, prefix or alias)."),
    state: str = typer.Argument(..., help="pretrained, tuned, approved, deployed, deprecated, "
                                          "retired, archived."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the record)."),
    force: bool = typer.Option(False, help="Move even if a check fails (recorded as forced)."),
) -> None:
    event = workspace().set_state(ref, state, reason, force=force)
    forced = " [yellow](forced)[/]" if event.forced else ""
    console.print(f"{event.artifact_id}: {event.from_state} -> {event.to_state}{forced}")
    if event.note:  # what the move rests on (or overrode), as kept in the record
        console.print(f"  on the record: {event.note}", highlight=False)
