"""The TinyStories recipe's data: its local files where ../shared/data is present, its hf:
fallbacks where it is absent (a clone of the repository alone). Never the network: the hub
loader is replaced by a local dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lmforge.curate.config import parse_config, resolve_path
from lmforge.curate.sources import resolve_sources
from lmforge.curate.stage import curate_stage
from lmforge.data.parts import dataset_documents
from lmforge.lifecycle.recipe import load_recipe
from lmforge.registry import Workspace

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tinystories.toml"
FALLBACKS = {"stories": ["hf:roneneldan/TinyStories:train[:1096]"],
             "more": ["hf:roneneldan/TinyStories:validation[:464]"],
             "valid": ["hf:roneneldan/TinyStories:validation[464:696]"]}


def _curate_steps(recipe_path: Path) -> dict[str, dict]:
    """The recipe's curate steps with source paths made relative to the recipe file, as
    `lmforge run` makes them (lifecycle/stages.py)."""
    recipe = load_recipe(str(recipe_path))
    steps = {}
    for step in recipe.steps:
        if step.stage != "curate":
            continue
        raw = {k: v for k, v in step.params.items()}
        raw["sources"] = {
            name: {**src, "paths": [resolve_path(p, recipe_path.parent) for p in
                                    (src["paths"] if isinstance(src["paths"], list)
                                     else [src["paths"]])]}
            for name, src in step.params["sources"].items()}
        steps[step.name] = raw
    return steps


def _sources(raw: dict) -> tuple[dict[str, list[str]], list[str]]:
    cfg, notes = resolve_sources(parse_config(raw, "test"))
    return {s.name: s.paths for s in cfg.sources}, notes


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The recipe in a folder with no ../shared beside it."""
    recipe = tmp_path / "clone" / "recipes" / RECIPE.name
    recipe.parent.mkdir(parents=True)
    shutil.copy(RECIPE, recipe)
    assert not (tmp_path / "shared").exists()
    return recipe


def test_recipe_reads_the_shared_files_where_they_are(shared_data):
    for raw in _curate_steps(RECIPE).values():
        paths, notes = _sources(raw)
        assert notes == []
        for name, resolved in paths.items():
            assert resolved != FALLBACKS[name]
            # realpath on both sides: shared/ may be a link to the data elsewhere.
            inside = os.path.realpath(shared_data / "tinystories")
            assert all(os.path.realpath(p).startswith(inside) for p in resolved), resolved


def test_recipe_falls_back_to_the_hub_without_shared_data(clone):
    seen = {}
    for step, raw in _curate_steps(clone).items():
        paths, notes = _sources(raw)
        seen.update(paths)
        assert len(notes) == len(paths), step
        assert all("absent; read its fallback hf:roneneldan/TinyStories" in n for n in notes)
    assert seen == FALLBACKS
    # Training and validation rows never overlap, and the train head is the train split's
    # first 1,096 stories (the shared files' count).
    assert FALLBACKS["more"][0].endswith("[:464]") and FALLBACKS["valid"][0].endswith("[464:696]")


def test_recipe_fallback_reads_rows_through_the_hub_reader(clone, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import lmforge.data.hub as hub

    stories = [f"Once upon a time there was a {'small' if i % 2 else 'big'} dog number {i}. "
               f"It liked to run in the park with its friend the cat number {i}, every day. "
               f"They played ball and then they went home to sleep. The end of story {i}."
               for i in range(800)]
    calls = []

    def fake_load(name, split, config, streaming):
        calls.append((name, split, config, streaming))
        return datasets.Dataset.from_dict({"text": stories})  # stands in for the hub

    monkeypatch.setattr(hub, "_load", fake_load)
    ws = Workspace.open(tmp_path / "ws")
    art = curate_stage(ws, _curate_steps(clone)["valid"], show_progress=False)
    assert calls == [("roneneldan/TinyStories", "validation", None, True)]  # streamed
    docs = list(dataset_documents(art.path))
    rows = sorted(int(d.id.rsplit(":", 1)[1]) for d in docs)
    # Rows 464-695 only; near-duplicate removal may drop some of these templated stories.
    assert rows and rows[0] >= 464 and rows[-1] <= 695
    assert all(d.source == "valid" for d in docs)
    assert "fallback hf:roneneldan/TinyStories:validation[464:696]" in art.metrics["warnings"][0]
