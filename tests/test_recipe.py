"""`lmforge run`: recipes run in order, skip what is unchanged, and refuse bad recipes."""

from pathlib import Path

import pytest
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.lifecycle.recipe import load_recipe
from lmforge.lifecycle.runner import run_recipe
from lmforge.lifecycle.stages import STAGES
from lmforge.registry import Workspace

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

RECIPE = """
name = "mini"

[steps.data]
stage = "files"
paths = ["docs"]

[steps.clean]
stage = "curate"
sources.docs = { paths = "@data", preset = "prose" }
filters = { length = { min_chars = 20 }, language = false, gopher_repetition = false }
dedup = { near = false }
pii = { enabled = false }

[steps.tokenizer]
stage = "tokenizer"
data = "@clean"
vocab_size = 300

[steps.design]
stage = "design"
file = "mini.toml"

[steps.init]
stage = "init"
design = "@design"
tokenizer = "@tokenizer"

[steps.tokenize]
stage = "tokenize"
data = "@clean"
tokenizer = "@tokenizer"
val_fraction = 0.2

[steps.pretrain]
stage = "pretrain"
model = "@init"
data = "@tokenize"
steps = 4
batch_tokens = 256
micro_batch = 4
seq_len = 32
eval_every = 2
eval_batches = 2
device = "cpu"

[steps.samples]
stage = "compare"
models = ["@init", "@pretrain"]
prompt = "the cat"
max_tokens = 5
"""


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    words = "the cat sat on a mat and the dog ran to the park while birds sang".split()
    for i in range(10):
        text = "\n".join(" ".join(words[(i + j) % len(words):] + words[:(i + j) % len(words)])
                         for j in range(30))
        (docs / f"doc{i}.txt").write_text(text)
    (tmp_path / "mini.toml").write_text("[model]\nn_layers = 1\nd_model = 32\nn_heads = 2\n"
                                        "vocab_size = 300\ncontext_length = 64\n")
    (tmp_path / "mini_recipe.toml").write_text(RECIPE)
    return tmp_path


def run(ws: Workspace, recipe_dir: Path, *overrides: str):
    recipe = load_recipe(str(recipe_dir / "mini_recipe.toml"), list(overrides), tuple(STAGES))
    return {r.name: r for r in run_recipe(ws, recipe, Console(quiet=True), show_progress=False)}


def test_second_run_skips_every_unchanged_step(tmp_path, recipe_dir):
    ws = Workspace.open(tmp_path / "ws")
    first = run(ws, recipe_dir)
    assert not any(r.skipped for r in first.values())
    assert ws.state_of(first["pretrain"].artifact) == "pretrained"
    second = run(ws, recipe_dir)
    assert all(r.skipped for name, r in second.items() if name != "samples")
    assert {n: r.artifact for n, r in second.items()} == {n: r.artifact for n, r in first.items()}


def test_a_changed_setting_reruns_that_step_and_what_follows(tmp_path, recipe_dir):
    ws = Workspace.open(tmp_path / "ws")
    first = run(ws, recipe_dir)
    changed = run(ws, recipe_dir, "pretrain.steps=6")
    assert all(changed[n].skipped for n in ("data", "clean", "tokenizer", "design", "init",
                                            "tokenize"))
    assert not changed["pretrain"].skipped
    assert changed["pretrain"].artifact != first["pretrain"].artifact


def test_pretrained_model_has_lineage_back_to_the_files(tmp_path, recipe_dir):
    ws = Workspace.open(tmp_path / "ws")
    out = run(ws, recipe_dir)
    tree = ws.lineage(out["pretrain"].artifact)

    def ids(node):
        yield node["id"]
        for child in node["children"]:
            yield from ids(child)

    found = set(ids(tree))
    for step in ("data", "clean", "tokenizer", "design", "init", "tokenize"):
        assert out[step].artifact in found, step


@pytest.mark.parametrize("text, words", [
    ("[steps.a]\nstage = 'bake'\n", "unknown stage 'bake'"),
    ("[steps.a]\nstage = 'tokenize'\ndata = '@b'\ntokenizer = 'x'\n", "not an earlier step"),
    ("[steps.a\n", "malformed TOML"),
    ("name = 'x'\n", "no [steps.NAME] tables"),
])
def test_bad_recipes_are_refused_before_anything_runs(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LmforgeError, match=words.replace("[", r"\[")):
        load_recipe(str(path), [], tuple(STAGES))


def test_set_must_name_an_existing_step(recipe_dir):
    with pytest.raises(LmforgeError, match="STEP.KEY=VALUE"):
        load_recipe(str(recipe_dir / "mini_recipe.toml"), ["nostep.x=1"], tuple(STAGES))


def test_builtin_quickstart_recipe_loads():
    recipe = load_recipe("quickstart", [], tuple(STAGES))
    assert [s.stage for s in recipe.steps][:3] == ["corpus", "curate", "tokenizer"]
    methods = {s.name: s.params.get("method") for s in recipe.steps if s.stage == "finetune"}
    assert methods == {"sft": "sft", "reward": "reward", "dpo": "dpo", "rlhf": "rlhf",
                       "safety": "sft"}
    steps = {s.name: s for s in recipe.steps}
    judge = steps["judge"]  # it prints the win rates against the SFT model
    assert judge.stage == "judge" and judge.params["models"][0] == "@sft"
    # The red-team loop on the SFT model, printing the figures before and after ...
    loop = [s.name for s in recipe.steps].index("redteam")
    assert [s.stage for s in recipe.steps[loop:loop + 5]] == [
        "redteam", "safety-data", "finetune", "redteam", "redteam-compare"]
    assert steps["redteam"].params["target"] == "@sft" == steps["safety"].params["model"]
    assert steps["safety"].params["data"] == ["@safety-data"]
    assert steps["safety-check"].params == {"before": "@redteam", "after": "@redteam-after"}
    assert recipe.description.split(" -> ") == [s.name for s in recipe.steps]
    # ... then stages 9 to 11: the safety-tuned model evaluated, deployed, served, rated by
    # simulated users, succeeded by a model tuned on that feedback, deprecated and retired.
    assert [s.stage for s in recipe.steps[loop + 5:]] == [
        "eval", "promote", "serve-smoke", "simulate-feedback", "feedback-finetune", "redteam",
        "promote", "deprecate", "retire", "card", "summary"]
    assert steps["deploy"].params["model"] == "@safety" == steps["eval-chat"].params["model"]
    assert steps["successor"].params["model"] == "@deploy" == steps["deprecate"].params["model"]
    assert steps["deprecate"].params["successor"] == "@promote-successor"


def test_full_recipe_is_the_quickstart_with_full_budgets():
    """recipes/full.toml: the same steps; where a setting differs, it is a budget."""
    quick = {s.name: s for s in load_recipe("quickstart", [], tuple(STAGES)).steps}
    full = {s.name: s for s in load_recipe(str(RECIPES / "full.toml"), [],
                                           tuple(STAGES)).steps}
    assert list(full) == list(quick)
    budgets = {"tokens", "epochs", "steps", "limit", "benign_limit"}
    for name, step in full.items():
        assert step.stage == quick[name].stage
        differ = {k for k in step.params.keys() | quick[name].params.keys()
                  if step.params.get(k) != quick[name].params.get(k)}
        assert differ <= budgets, (name, differ)
    assert full["pretrain"].params["tokens"] == 1_600_000 and full["sft"].params["epochs"] == 2


def test_a_stopped_training_step_is_one_line_and_exit_130(cli, recipe_dir, monkeypatch):
    import lmforge.lifecycle.runner as runner
    from lmforge.errors import Interrupted

    def stopped(ctx, name, params):
        raise Interrupted("run pretrain-abc: stopped at step 2; checkpoint saved")

    monkeypatch.setitem(runner.STAGES, "pretrain", stopped)
    code, _, err = cli("run", recipe_dir / "mini_recipe.toml", "--no-progress")
    assert code == 130 and "Traceback" not in err
    assert err.strip() == ("run pretrain-abc: stopped at step 2; checkpoint saved; run the same "
                           "command again to resume")


def test_a_separate_validation_step_feeds_tokenize(tmp_path, recipe_dir):
    # Training stories joined by single newlines (split = "line"); validation from its own files.
    story = "the cat sat on a mat.\n\nthe dog ran to the park.\n"
    (recipe_dir / "stories.txt").write_text(story * 12)
    (recipe_dir / "held_out.txt").write_text("birds sang while the dog ran to the park.\n" * 20)
    text = RECIPE.replace('paths = ["docs"]', 'paths = ["stories.txt"]\nsplit = "line"')
    text = text.replace('[steps.clean]', '[steps.valid]\nstage = "files"\n'
                        'paths = ["held_out.txt"]\nsplit = "file"\n\n[steps.clean]')
    text = text.replace('val_fraction = 0.2', 'val_data = "@valid"')
    (recipe_dir / "mini_recipe.toml").write_text(text)
    ws = Workspace.open(tmp_path / "ws")
    out = run(ws, recipe_dir)
    data, valid, tokens = (ws.resolve(out[s].artifact) for s in ("data", "valid", "tokenize"))
    assert data.metrics["documents"] == 12 and valid.metrics["documents"] == 1
    assert tokens.parents["val_data"] == valid.id
    assert tokens.metrics["val_documents"] == 1
    assert tokens.metrics["train_documents"] == 1  # clean dropped the 11 exact duplicates


def test_builtin_tinystories_recipe_loads():
    path = Path(__file__).parents[1] / "recipes" / "tinystories.toml"
    recipe = load_recipe(str(path), [], tuple(STAGES))
    steps = {s.name: s for s in recipe.steps}
    assert steps["tokenize"].params["val_data"] == "@valid"
    assert steps["train"].params["sources"]["stories"]["split"] == "line"


def test_set_reaches_inside_tables(recipe_dir):
    path = Path(__file__).parents[1] / "recipes" / "tinystories.toml"
    recipe = load_recipe(str(path), ['train.sources.stories.paths=["mine/*.txt"]',
                                     "train.sources.stories.split=auto",
                                     "train.dedup.near=false"], tuple(STAGES))
    train = {s.name: s for s in recipe.steps}["train"].params
    assert train["sources"]["stories"] == {"paths": ["mine/*.txt"], "split": "auto",
                                           "preset": "prose",
                                           "fallback": "hf:roneneldan/TinyStories:train[:1096]"}
    assert train["dedup"] == {"near": False}
    with pytest.raises(LmforgeError, match="train.sources.stories.split is a value"):
        load_recipe(str(path), ["train.sources.stories.split.x=1"], tuple(STAGES))


def test_compare_steps_offer_only_known_tools(tmp_path):
    from lmforge.lifecycle.compare import CompareSettings

    ok = CompareSettings.from_dict({"models": ["@sft"], "tools": "docstring",
                                    "temperature": 0.0}, "steps.tools", tmp_path)
    assert ok.tools == ("docstring",) and ok.temperature == 0.0
    with pytest.raises(LmforgeError, match="unknown tool 'weather'"):
        CompareSettings.from_dict({"models": ["@sft"], "tools": ["weather"]}, "steps.tools",
                                  tmp_path)
