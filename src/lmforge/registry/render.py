"""Rich renderings of registry data for the CLI: `ls` table, `lineage` tree, `show` page.

Only presentation lives here; everything shown comes from Workspace methods.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from lmforge.registry.artifact import AliasMove, Artifact, ArtifactRecord, Event

_STATE_STYLE = {"approved": "green", "deployed": "bold green", "deprecated": "yellow",
                "retired": "dim", "archived": "dim"}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")  # seconds are enough on screen


def _state(state: str | None) -> Text:
    return Text(state or "-", style=_STATE_STYLE.get(state or "", ""))


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def end_of_life(event: Event | None) -> str:
    """`sunset 2027-03-01 -> model-...`: what a deprecation announced, in one cell."""
    if event is None:
        return ""
    parts = [f"sunset {event.sunset}" if event.sunset else "no sunset date"]
    if event.successor:
        parts.append(f"-> {event.successor}")
    return " ".join(parts)


def artifacts_table(records: Iterable[ArtifactRecord], aliases: dict[str, str] | None = None,
                    title: str | None = "artifacts",
                    deprecations: dict[str, Event] | None = None) -> Table:
    """One row per artifact: id (which starts with the kind), stage, state, name, aliases
    (when any), sunset and successor of deprecated models (when any), created."""
    by_id: dict[str, list[str]] = {}
    for alias, art_id in (aliases or {}).items():
        by_id.setdefault(art_id, []).append(alias)
    records = list(records)
    deprecations = {k: v for k, v in (deprecations or {}).items()
                    if k in {r.id for r in records}}
    columns = ["id", "stage", "state", "name"] + (["aliases"] if by_id else []) \
        + (["end of life"] if deprecations else []) + ["created"]
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in columns:
        # Ids must stay whole to be copied; on a narrow terminal the name column gives way.
        name = column == "name"
        table.add_column(column, no_wrap=not name, min_width=8 if name else None)
    for r in records:
        row = [r.id, r.stage, _state(r.state), r.name or ""]
        row += [", ".join(sorted(by_id.get(r.id, [])))] if by_id else []
        row += [end_of_life(deprecations.get(r.id))] if deprecations else []
        table.add_row(*row, _short_time(r.created)[5:16])  # MM-DD HH:MM
    return table


def lineage_tree(node: dict[str, Any], tree: Tree | None = None) -> Tree:
    """A rich Tree of `Workspace.lineage(...)`: each line `role: id (stage, state)`."""
    label = Text()
    if node.get("role"):
        label.append(f"{node['role']}: ", style="cyan")
    label.append(node["id"], style="bold")
    details = [node["stage"]] + ([node["state"]] if node.get("state") else [])
    label.append(f" ({', '.join(details)})", style="dim")
    if node.get("name"):
        label.append(f" {node['name']}")
    branch = Tree(label) if tree is None else tree.add(label)
    for child in node["children"]:
        lineage_tree(child, branch)
    return branch


def _pairs(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None)
    table.add_column(style="cyan")
    table.add_column()
    for key in sorted(items):
        table.add_row(key, _value(items[key]))
    if not items:
        table.add_row("(none)", "")
    return table


def show(artifact: Artifact, state: str | None, events: list[Event],
         aliases: list[str] | None = None, extra: dict[str, str] | None = None,
         alias_moves: list[AliasMove] | None = None) -> Group:
    """Everything about one artifact: summary, parents, settings, metrics, files, events,
    approval decisions, and the aliases that pointed at it (`alias_moves`, from
    Workspace.alias_moves_of). `extra` adds summary lines (where a retirement report or an
    archive bundle is)."""
    summary = {"id": artifact.id, "kind": artifact.kind, "stage": artifact.stage,
               "state": state or "-", "created": artifact.created, "path": str(artifact.path),
               "lmforge": artifact.manifest.get("lmforge_version", "?")}
    if artifact.name:
        summary["name"] = artifact.name
    if aliases:
        summary["aliases"] = ", ".join(aliases)
    summary.update(extra or {})
    files = Table(title="files", title_justify="left")
    files.add_column("path")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for rel, info in sorted(artifact.files.items()):
        files.add_row(rel, human_bytes(info["bytes"]), info["sha256"][:16])
    parts: list[Any] = [_pairs(artifact.id, summary), _pairs("parents", artifact.parents),
                        _pairs("settings", artifact.settings),
                        _pairs("metrics", artifact.metrics), files]
    if events:
        history = Table(title="lifecycle", title_justify="left")
        for column in ("time", "from", "to", "reason", "forced", "by", "on the record"):
            history.add_column(column)
        commands = Table(title="lifecycle commands", title_justify="left", box=None,
                         show_header=False)
        commands.add_column(style="dim", no_wrap=True)
        commands.add_column(overflow="fold")
        for e in events:
            announced = end_of_life(e) if e.to_state == "deprecated" else ""
            history.add_row(_short_time(e.time), e.from_state or "-", _state(e.to_state),
                            e.reason, Text("FORCED", style="bold red") if e.forced else "",
                            e.actor, "; ".join(p for p in (announced, e.note) if p))
            if e.command:  # whole, so it can be read back and run again
                commands.add_row(f"{_short_time(e.time)} -> {e.to_state}", e.command)
        parts.append(history)
        if commands.row_count:
            parts.append(commands)
    parts.extend(approval_decision(e) for e in events if e.decision is not None)
    if alias_moves:
        parts.append(alias_periods(artifact.id, alias_moves))
    return Group(*parts)


def approval_decision(event: Event) -> Table:
    """The gates an approval weighed: threshold, measured value (± stderr or [interval]),
    n, verdict, and the report each came from."""
    decision = event.decision or {}
    verdict = "passed" if decision.get("passed") else "refused; forced" if event.forced \
        else "refused"
    table = Table(title=f"approval decision ({_short_time(event.time)}, {verdict})",
                  title_justify="left")
    for column in ("report", "gate", "measured", "n", "verdict", "from"):
        table.add_column(column, overflow="fold")
    for report in decision.get("reports", []):
        if not report["gates"]:
            table.add_row(report["report"], report.get("note") or "no gate numbers", "", "",
                          _passed(report["passed"]), report["kind"])
        for g in report["gates"]:
            table.add_row(report["report"], g["gate"], measured(g),
                          "" if g.get("n") is None else str(g["n"]), _passed(g["passed"]),
                          g["source"] + (f": {g['rule']}" if g.get("rule") else ""))
    policy = decision.get("policy")
    if policy:
        table.caption = "policy: " + ", ".join(f"{k} {v}" for k, v in policy.items())
    return table


def measured(g: dict[str, Any]) -> str:
    """A gate's measured value with its uncertainty, as kept in an approval decision."""
    if g["value"] is None:
        return "not measured"
    if g.get("stderr") is not None:
        return f"{g['value']:.4g} ± {g['stderr']:.2g}"
    if g.get("ci_low") is not None and g.get("ci_high") is not None:
        return f"{g['value']:.4g} [{g['ci_low']:.3g}, {g['ci_high']:.3g}]"
    return f"{g['value']:.4g}"


def _passed(ok: bool) -> Text:
    return Text("passed", style="green") if ok else Text("FAILED", style="bold red")


def alias_periods(art_id: str, moves: list[AliasMove]) -> Table:
    """When each alias pointed at `art_id`: from the move that pointed it here to the move
    that took it away (or now)."""
    table = Table(title="aliases that pointed here", title_justify="left")
    for column in ("alias", "from", "until", "then"):
        table.add_column(column)
    since: dict[str, AliasMove] = {}
    rows: list[tuple[str, str, str, str]] = []
    for m in moves:
        if m.previous_id == art_id and m.alias in since:
            then = f"moved to {m.artifact_id}" if m.artifact_id else "removed"
            rows.append((m.alias, _short_time(since.pop(m.alias).time), _short_time(m.time),
                         then + (f" ({m.reason})" if m.reason else "")))
        if m.artifact_id == art_id:
            since[m.alias] = m
    rows += [(a, _short_time(m.time), "now", "") for a, m in since.items()]
    for row in sorted(rows, key=lambda r: (r[1], r[0])):
        table.add_row(*row)
    return table


def alias_history(alias: str, moves: list[AliasMove]) -> Table:
    """Every move of one alias, oldest first: what it pointed at before and after."""
    table = Table(title=f"alias {alias}", title_justify="left")
    for column in ("time", "from", "to", "reason", "by", "command"):
        table.add_column(column, overflow="fold")
    for m in moves:
        table.add_row(_short_time(m.time), m.previous_id or "-",
                      m.artifact_id or Text("removed", style="yellow"), m.reason, m.actor,
                      m.command)
    return table
