"""Recipes: a TOML file naming the lifecycle's steps in order.

    name = "quickstart"
    [steps.corpus]
    stage = "corpus"
    [steps.tokenizer]
    stage = "tokenizer"
    data = "@corpus"          # "@step" is the artifact that step produced
    vocab_size = 4096

A step's other keys are its stage's settings. `--set step.key=value` overrides any of them
(`--set step.table.key=value` one inside a table, e.g. a curation source's paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge._toml import tomllib
from lmforge.errors import LmforgeError

BUILTIN = Path(__file__).parent / "recipes"


@dataclass
class Step:
    name: str
    stage: str
    params: dict[str, Any] = field(default_factory=dict)

    def references(self) -> list[str]:
        refs = []
        for value in self.params.values():
            values = value if isinstance(value, list) else [value]
            refs += [v[1:] for v in values if isinstance(v, str) and v.startswith("@")]
        return refs


@dataclass
class Recipe:
    name: str
    path: Path
    steps: list[Step]
    description: str = ""


def find_recipe(ref: str) -> Path:
    """A path to a TOML file, or the name of a built-in recipe."""
    path = Path(ref)
    if path.is_file():
        return path
    builtin = BUILTIN / f"{ref}.toml"
    if builtin.is_file():
        return builtin
    names = sorted(p.stem for p in BUILTIN.glob("*.toml"))
    raise LmforgeError(f"recipe not found: {ref}",
                       hint=f"give a path to a recipe TOML, or a built-in name: {', '.join(names)}")


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, lists, quoted strings), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_nested(table: dict, step: str, dotted: str, value: Any) -> None:
    """Set `a.b.c` inside a step's table (`sources.web.paths`), making missing tables."""
    *outer, last = dotted.split(".")
    if not last or not all(outer):
        raise LmforgeError(f"--set {step}.{dotted}: empty key", hint="STEP.KEY[.SUBKEY]=VALUE")
    for depth, key in enumerate(outer):
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            where = ".".join([step, *outer[:depth + 1]])
            raise LmforgeError(f"--set {step}.{dotted}: {where} is a value, not a table",
                               hint=f"set {where} itself")
    table[last] = value


def load_recipe(ref: str, overrides: list[str] | None = None, known_stages=()) -> Recipe:
    path = find_recipe(ref)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: malformed TOML: {e}", hint="fix the syntax") from None
    steps_table = data.get("steps")
    if not isinstance(steps_table, dict) or not steps_table:
        raise LmforgeError(f"{path}: no [steps.NAME] tables", hint="see recipes/README.md")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        step_name, dot, setting = key.strip().partition(".")
        if not sep or not dot or step_name not in steps_table:
            raise LmforgeError(f"--set {item!r}: expected STEP.KEY=VALUE with STEP one of "
                               f"{', '.join(steps_table)}")
        _set_nested(steps_table[step_name], step_name, setting.strip(), parse_value(value.strip()))
    steps: list[Step] = []
    for name, table in steps_table.items():
        if not isinstance(table, dict):
            raise LmforgeError(f"{path}: steps.{name} must be a table")
        params = dict(table)
        stage = params.pop("stage", name)
        if known_stages and stage not in known_stages:
            raise LmforgeError(f"{path}: step '{name}' has unknown stage '{stage}'",
                               hint=f"stages: {', '.join(known_stages)}")
        step = Step(name, stage, params)
        earlier = {s.name for s in steps}
        for ref in step.references():
            if ref not in earlier:
                raise LmforgeError(f"{path}: step '{name}' refers to '@{ref}', which is not an "
                                   "earlier step", hint="steps run in file order")
        steps.append(step)
    return Recipe(str(data.get("name", path.stem)), path, steps, str(data.get("description", "")))
