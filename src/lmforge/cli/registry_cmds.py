"""`lmforge registry`: the record of every artifact, its lineage and lifecycle."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.errors import LmforgeError
from lmforge.registry import render

registry_app = typer.Typer(help="List, inspect, trace and verify artifacts in the workspace; "
                                "move models through their life, to deprecation, retirement "
                                "and archive.",
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
    deprecations = ws.deprecations()
    if as_json:
        for r in records:
            dep = deprecations.get(r.id)
            end = {"sunset": dep.sunset, "successor": dep.successor} if dep else {}
            print(json.dumps({"id": r.id, "kind": r.kind, "stage": r.stage, "state": r.state,
                              "name": r.name, "created": r.created, **end}))
        return
    console.print(render.artifacts_table(records, ws.aliases(), deprecations=deprecations))


@registry_app.command(help="Everything about one artifact: parents, settings, metrics, files "
                           "with checksums (verified), lifecycle events.")
def show(
    ref: str = typer.Argument(..., help="Id, id prefix, alias, kind:latest or folder."),
) -> None:
    from lmforge.lifecycle.retirement import report_of
    from lmforge.registry.archive import archived_view

    ws = workspace()
    rec = ws.record(ref)
    extra: dict[str, str] = {}
    if rec.state == "archived" and not rec.path.is_dir():
        art = archived_view(ws, rec.id)  # its files are in the bundle: shown from the record
        extra["archived in"] = str(art.path)
    else:
        art = ws.resolve(ref)
    report = report_of(ws, art.id) if rec.state is not None else None
    if report is not None:
        extra["retirement report"] = f"{report.id} ({report.path / 'report.md'})"
    console.print(render.show(art, rec.state, ws.history(art.id), ws.aliases_of(art.id),
                              extra, ws.alias_moves_of(art.id)), soft_wrap=False)


@registry_app.command(help="The tree of what made an artifact, back to its sources.")
def lineage(ref: str = typer.Argument(..., help="Id, id prefix, alias or kind:latest.")) -> None:
    console.print(render.lineage_tree(workspace().lineage(ref)))


@registry_app.command(help="Point a name (e.g. production, staging) at an artifact, move it, "
                           "or remove it; every change is kept (who, when, why, the command). "
                           "With only NAME (or --history), print the alias's history. `registry "
                           "show MODEL` lists the aliases that pointed at a model and when.")
def alias(
    name: str = typer.Argument(..., help="The alias."),
    ref: str = typer.Argument(None, help="The artifact it names (leave out to see its "
                                         "history)."),
    reason: str = typer.Option("", "--reason", help="Why it moves (kept in its history)."),
    remove: bool = typer.Option(False, "--remove", help="Remove the alias (kept in its "
                                                        "history)."),
    history: bool = typer.Option(False, "--history", help="Print every move of the alias."),
) -> None:
    ws = workspace()
    if remove and ref:
        raise LmforgeError(f"--remove takes only the alias, not {ref!r}",
                           f"lmforge registry alias {name} --remove")
    if history and (ref or remove):
        raise LmforgeError("--history only prints; it does not move the alias",
                           f"print it with `lmforge registry alias {name} --history`, move it "
                           f"with `lmforge registry alias {name} MODEL`")
    if remove:
        was = ws.remove_alias(name, reason)
        console.print(f"{name} removed (was {was})", highlight=False)
        return
    if ref is None:
        moves = ws.alias_history(name)
        if not moves:
            raise LmforgeError(f"there is no alias {name!r}, and never was",
                               f"set one with `lmforge registry alias {name} MODEL`")
        console.print(render.alias_history(name, moves), soft_wrap=False)
        return
    before = ws.aliases().get(name)
    art_id = ws.set_alias(name, ref, reason)
    moved = "" if before is None else " (unchanged)" if before == art_id else f" (was {before})"
    console.print(f"{name} -> {art_id}{moved}", highlight=False)


@registry_app.command(help="Move a model to a lifecycle state (e.g. approved). Approval needs "
                           "an eval report and a red-team report of this exact model that "
                           "passed their gates (`lmforge eval MODEL --gate ...`, `lmforge "
                           "redteam MODEL`), and, where given, the thresholds below: a report "
                           "measured on too few items is refused even if its metric passed. The "
                           "decision (every gate, its threshold, value, interval and n, and "
                           "the report) is kept on the event; `registry show` prints it. "
                           "Every move is kept as an event: who (user@host), "
                           "when, why and the command line. A move the rules forbid is "
                           "refused naming the rule; --force overrides, and the record (`lmforge "
                           "registry show`) says so. For the end of life use deprecate, retire "
                           "and archive, which record what they need.")
def promote(
    ref: str = typer.Argument(..., help="The model (id, prefix or alias)."),
    state: str = typer.Argument(None, help="pretrained, tuned, approved, deployed, deprecated, "
                                           "retired, archived (or give --to)."),
    to: str = typer.Option(None, "--to", help="The state to move to (same as STATE)."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the record)."),
    force: bool = typer.Option(False, help="Move even if a check fails (recorded as forced)."),
    min_items: int = typer.Option(None, "--min-items", help="Approval: each gated eval task "
                                  "measured on at least this many items."),
    min_harmful: int = typer.Option(None, "--min-harmful", help="Approval: the red-team report "
                                    "attacked with at least this many harmful prompts."),
    min_benign: int = typer.Option(None, "--min-benign", help="Approval: ... and measured "
                                   "over-refusal on at least this many benign asks."),
    eval_gate: list[str] = typer.Option([], "--eval-gate", help="Approval, repeatable: a gate "
                                        "'TASK/METRIC OP NUMBER' the eval report must meet."),
    max_attack_success: float = typer.Option(None, "--max-attack-success",
                                             help="Approval: red-team attack success at most."),
    max_over_refusal: float = typer.Option(None, "--max-over-refusal",
                                           help="Approval: red-team over-refusal at most."),
) -> None:
    from lmforge.registry.approval import ApprovalPolicy

    if state and to and state != to:
        raise LmforgeError(f"two states given: {state} and --to {to}",
                           "give the state once: as STATE or as --to")
    target = state or to
    if not target:
        raise LmforgeError("promote needs the state to move to",
                           "e.g. `lmforge registry promote MODEL --to approved --reason ...`")
    policy = ApprovalPolicy(min_items, min_harmful, min_benign, tuple(eval_gate),
                            max_attack_success, max_over_refusal)
    if policy.to_json() and target != "approved":
        raise LmforgeError("--min-*, --eval-gate and --max-* are approval's thresholds",
                           f"use them with --to approved, not --to {target}")
    event = workspace().set_state(ref, target, reason, force=force, policy=policy)
    forced = " [yellow](forced)[/]" if event.forced else ""
    console.print(f"{event.artifact_id}: {event.from_state} -> {event.to_state}{forced}")
    if event.note:  # what the move rests on (or overrode), as kept in the record
        console.print(f"  on the record: {event.note}", highlight=False)
    if event.decision is not None:
        console.print(render.approval_decision(event), soft_wrap=False)


@registry_app.command(help="Announce a model's end: a sunset date, a reason and the model that "
                           "replaces it. A server serving it then sends `Deprecation`, `Sunset` "
                           "and `Link: <successor>; rel=successor-version` headers; `registry "
                           "ls` shows the sunset and successor. Moves an approved or deployed "
                           "model to deprecated.")
def deprecate(
    ref: str = typer.Argument(..., help="The model to deprecate (id, prefix or alias)."),
    sunset: str = typer.Option(..., help="When it stops being served: an ISO date after "
                                         "today, e.g. 2027-03-01."),
    successor: str = typer.Option(..., help="The model clients should move to (must be in "
                                            "the registry, and in service)."),
    reason: str = typer.Option(..., help="Why (shown to whoever reads the record)."),
    force: bool = typer.Option(False, help="Deprecate even from a state the rules do not allow "
                                           "(recorded as forced)."),
) -> None:
    from lmforge.registry.retire import deprecate as deprecate_model

    event = deprecate_model(workspace(), ref, sunset=sunset, successor=successor,
                            reason=reason, force=force)
    forced = " [yellow](forced)[/]" if event.forced else ""
    console.print(f"{event.artifact_id}: {event.from_state} -> deprecated{forced}; sunset "
                  f"{event.sunset}, successor {event.successor}", highlight=False)


@registry_app.command(help="Take a deprecated model out of service: a server answers 410 naming "
                           "its successor. Its files stay, read-only, for research. Writes a "
                           "retirement report (requests and tokens served, feedback, "
                           "evaluations over time, state history, why and what replaced it) as "
                           "a retirement-report artifact; `registry show` points at it. Run "
                           "again after a crash between the two, it writes the missing report.")
def retire(
    ref: str = typer.Argument(..., help="The model to retire (id, prefix or alias)."),
    reason: str = typer.Option(None, help="Why (default: the deprecation's reason)."),
    force: bool = typer.Option(False, help="Retire even if not deprecated first (recorded as "
                                           "forced)."),
) -> None:
    from lmforge.lifecycle.retirement import report_of
    from lmforge.lifecycle.retirement import retire as retire_model

    ws = workspace()
    event, report = retire_model(ws, ref, reason, force)
    model_id = ws.record(ref).id
    if event is not None:
        forced = " [yellow](forced)[/]" if event.forced else ""
        console.print(f"{model_id}: {event.from_state} -> retired{forced}", highlight=False)
        if event.note:
            console.print(f"  on the record: {event.note}", highlight=False)
    else:
        console.print(f"{model_id} is retired already", highlight=False)
    shown = report or report_of(ws, model_id)
    if shown is not None:
        console.print(f"retirement report: {shown.id} ({shown.path / 'report.md'})",
                      highlight=False)


@registry_app.command(help="Move a retired model's files into one compressed, checksummed bundle "
                           "in DIR (DIR/ID.tar.zst, or .tar.gz without zstandard, and "
                           "DIR/ID.archive.json listing the sha256 of every file and of the "
                           "bundle) with its record and retirement report. The bundle is "
                           "written, synced and read back before the model becomes archived and "
                           "its folder is removed. Run again after a crash to finish.")
def archive(
    ref: str = typer.Argument(..., help="The retired model (id, prefix or alias)."),
    to: Path = typer.Option(..., "--to", help="The folder to write the bundle to (cold "
                                              "storage), outside the workspace."),
) -> None:
    from lmforge.registry.archive import archive as archive_model
    from lmforge.registry.render import human_bytes

    done = archive_model(workspace(), ref, to)
    verb = "archived" if done.event is not None else "finished archiving"
    console.print(f"{verb} {done.files} files into {done.bundle} ({human_bytes(done.bundle_bytes)}"
                  f"); index {done.index}", highlight=False)
    console.print(f"  bring them back with: lmforge registry restore {done.bundle}",
                  highlight=False)


@registry_app.command(help="Bring an archived model's files back from its bundle, bit-identical: "
                           "the bundle's sha256, every file's and the manifest's are checked "
                           "before anything is placed (a corrupted bundle is refused and the "
                           "workspace left unchanged). The model becomes retired again.")
def restore(
    bundle: Path = typer.Argument(..., help="The bundle (ID.tar.zst / ID.tar.gz) or its "
                                            "ID.archive.json."),
) -> None:
    from lmforge.registry.archive import restore as restore_model

    done = restore_model(workspace(), bundle)
    console.print(f"{done.artifact_id}: archived -> retired; {done.files} files restored to "
                  f"{done.folder}", highlight=False)


@registry_app.command(help="Re-check every artifact's files (or the given ones) against the "
                           "sha256s they were registered with, and archived models' bundles. "
                           "Lists every drift: missing folder or file, changed bytes, extra "
                           "file, edited manifest. Exit code 1 if any.")
def verify(
    refs: list[str] = typer.Argument(None, help="Artifacts to check (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per drift."),
) -> None:
    from lmforge.registry.render import human_bytes
    from lmforge.registry.verify import verify as verify_artifacts

    audit = verify_artifacts(workspace(), refs or [])
    for d in audit.drift:
        if as_json:
            print(json.dumps(d.__dict__))
        else:
            console.print(f"[red]{d.problem}[/] {d.artifact_id}: {d.detail}", highlight=False)
    if as_json:
        print(json.dumps({"checked": audit.checked, "files": audit.files, "bytes": audit.bytes,
                          "drift": len(audit.drift)}))
    else:
        console.print(f"checked {audit.checked} artifacts, {audit.files} files "
                      f"({human_bytes(audit.bytes)}): "
                      + ("no drift" if audit.ok else f"{len(audit.drift)} problems"),
                      highlight=False)
    if not audit.ok:
        raise typer.Exit(1)
