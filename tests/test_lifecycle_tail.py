"""The end of the quickstart's lifecycle as recipe steps, on tiny random models: evaluate and
red-team a chat model, promote it to deployed (alias production), serve it a smoke request in
process, simulate users' feedback through the server's own endpoints, promote a successor
(the alias moves), deprecate the first model (sunset today + 90 days, successor named) and
retire it (with its report), write the successor's card, and print the one-screen summary.
And what it refuses: serving a model without a chat template, a deprecation without a
successor, promoting a successor whose feedback tuning said HOLD."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import date, datetime, timedelta, timezone

import pytest
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.lifecycle.feedback_sim import ratings
from lmforge.lifecycle.recipe import load_recipe
from lmforge.lifecycle.runner import run_recipe
from lmforge.lifecycle.stages import STAGES
from lmforge.model.io import save_model_dir
from lmforge.registry import Workspace
from lmforge.serve.feedback import store_path
from lmforge.tokenizer import train_tokenizer
from test_reward import TEXT, tiny
from test_rlhf import register_reward_model

QUESTIONS = ["What is a cat?", "What is a dog?", "Tell me of a sun.", "What is a moon?",
             "Tell me of a road.", "What is a lamp?"]


def _register(ws: Workspace, tok, seed: int, name: str, template: bool = True,
              metrics: dict | None = None) -> str:
    with ws.staging() as d:
        save_model_dir(tiny(tok, seed=seed), d, tok, f"# {name}\n")
        if not template:  # a base model's folder: no chat template for the server
            config = json.loads((d / "tokenizer_config.json").read_text())
            del config["chat_template"]
            (d / "tokenizer_config.json").write_text(json.dumps(config))
        return ws.register(d, kind="model", stage="finetune", state="tuned",
                           settings={"name": name}, metrics=metrics).id


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    tok = train_tokenizer(TEXT, 300, show_progress=False)
    ws = Workspace.open(tmp_path / "ws")
    old, new = _register(ws, tok, 0, "old"), _register(ws, tok, 1, "new")
    rm = register_reward_model(tmp_path / "ws", tiny(tok, seed=2), tok)
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]})
                               + "\n" for q in QUESTIONS))
    yield ws, tok, old, new, rm
    ws.close()


def _recipe(tmp_path, text: str):
    path = tmp_path / "tail.toml"
    path.write_text(text)
    return load_recipe(str(path), [], tuple(STAGES))


def _run(ws, tmp_path, text: str, width: int = 160):
    out = io.StringIO()
    results = run_recipe(ws, _recipe(tmp_path, text), Console(file=out, width=width),
                         show_progress=False)
    return {r.name: r for r in results}, out.getvalue()


def _checked(model: str, step: str) -> str:
    # Gates every model passes: the moves are under test here, not the tiny models.
    return f"""
[steps.eval-{step}]
stage = "eval"
model = "{model}"
suite = "pydocs"
limit = 4
gates = ["docstrings_bpb/bpb <= 1000"]

[steps.redteam-{step}]
stage = "redteam"
target = "{model}"
categories = ["direct", "over_refusal"]
limit = 2
benign_limit = 2
max_new_tokens = 4
gates = ["asr <= 1.0", "over_refusal <= 1.0"]
"""


def tail(old: str, new: str, rm: str) -> str:
    return _checked(old, "old") + f"""
[steps.deploy]
stage = "promote"
model = "{old}"
to = "deployed"
alias = "production"

[steps.smoke]
stage = "serve-smoke"
model = "@deploy"
max_tokens = 4

[steps.feedback]
stage = "simulate-feedback"
model = "production"
judge = "{rm}"
prompts = ["questions.jsonl"]
max_tokens = 6
""" + _checked(new, "new") + f"""
[steps.successor]
stage = "promote"
model = "{new}"
alias = "production"

[steps.deprecate]
stage = "deprecate"
model = "@deploy"
successor = "@successor"

[steps.retire]
stage = "retire"
model = "@deprecate"

[steps.card]
stage = "card"
model = "@successor"

[steps.summary]
stage = "summary"
models = ["@deploy", "@successor"]
"""


def test_the_lifecycle_tail_runs_as_recipe_steps_and_prints_one_screen(world, tmp_path):
    ws, _, old, new, rm = world
    steps, out = _run(ws, tmp_path, tail(old, new, rm))
    # Promotion climbs through approved; the alias follows the successor.
    assert steps["deploy"].summary.startswith("tuned -> approved, approved -> deployed")
    assert ws.aliases()["production"] == new and ws.state_of(new) == "deployed"
    moves = [(e.from_state, e.to_state) for e in ws.history(old)]
    assert moves[-4:] == [("tuned", "approved"), ("approved", "deployed"),
                          ("deployed", "deprecated"), ("deprecated", "retired")]
    deprecation = [e for e in ws.history(old) if e.to_state == "deprecated"][-1]
    assert deprecation.successor == new
    assert deprecation.sunset == (datetime.now(timezone.utc).date()
                                  + timedelta(days=90)).isoformat()
    assert steps["retire"].artifact.startswith("retirement-report-")
    # The smoke request was answered and not stored; the simulated users' feedback was, all
    # through the endpoints: one response per question, two answers each.
    assert "200 in" in steps["smoke"].summary
    assert ws.record(steps["smoke"].artifact).metrics["latency_s"] > 0
    sim = ws.resolve(steps["feedback"].artifact)
    report = json.loads(sim.file("report.json").read_text())
    assert report["simulated"] is True and report["questions"] == len(QUESTIONS)
    with sqlite3.connect(store_path(ws.root, old)) as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == len(QUESTIONS)
        rated = db.execute("SELECT count(*) FROM feedback WHERE rating IS NOT NULL"
                           ).fetchone()[0]
        preferred = db.execute("SELECT count(*) FROM feedback WHERE preferred IS NOT NULL"
                               ).fetchone()[0]
    assert rated == report["posted"]["up"] + report["posted"]["down"] > 0
    assert preferred == report["posted"]["preferred"]
    # The retirement report counts what the server stored for the old model.
    assert ws.record(steps["retire"].artifact).metrics["requests"] == len(QUESTIONS)
    card = ws.root / "cards" / new / "card.md"
    assert card.is_file() and new in card.read_text()
    # One screen: every step with its seconds, and the models' paths through their states.
    screen = out[out.index("─ lifecycle ─"):]
    for name in ("eval-old", "deploy", "smoke", "feedback", "retire", "card"):
        assert name in screen
    assert "tuned -> approved -> deployed -> deprecated -> retired" in screen
    assert "tuned -> approved -> deployed" in screen and "production" in screen
    assert len(screen.splitlines()) < 50
    # Run again: nothing moves twice, the store gets no second round of feedback.
    # Printed at 80 columns (a pipe, CI), every step's row still ends with its seconds.
    again, out = _run(ws, tmp_path, tail(old, new, rm), width=80)
    assert all(again[s].skipped for s in ("deploy", "smoke", "feedback", "retire"))
    screen = out[out.index("─ lifecycle ─"):]
    rows = [line for line in screen.splitlines()
            if line.strip("│ ").split(" ")[0] in ("deploy", "smoke", "feedback", "retire")]
    assert len(rows) == 4 and all(r.rstrip("│ ").endswith("cached") for r in rows), rows
    assert len(ws.history(old)) == len(moves)


def test_thirds_of_the_scores_are_rated_up_and_down_and_ties_stay_unrated():
    assert ratings([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == [-1, -1, None, None, 1, 1]
    assert ratings([2.0, 2.0, 2.0]) == [None, None, None]


def test_a_model_without_a_chat_template_is_refused_before_serving(world, tmp_path):
    ws, tok, *_ = world
    base = _register(ws, tok, 3, "base", template=False)
    with pytest.raises(LmforgeError) as e:
        _run(ws, tmp_path, f'[steps.smoke]\nstage = "serve-smoke"\nmodel = "{base}"\n')
    assert "no chat template" in e.value.message and "tuned chat model" in e.value.hint


def test_a_deprecation_names_its_successor_and_a_held_back_successor_stays(world, tmp_path):
    ws, tok, old, *_ = world
    with pytest.raises(LmforgeError) as e:
        _run(ws, tmp_path, f'[steps.d]\nstage = "deprecate"\nmodel = "{old}"\n')
    assert "needs the model that replaces it" in e.value.message and "successor" in e.value.hint
    with pytest.raises(LmforgeError) as e:
        _run(ws, tmp_path, f'[steps.d]\nstage = "deprecate"\nmodel = "{old}"\n'
                           f'successor = "{old}"\n')
    assert "only an approved or deployed model" in e.value.message
    assert ws.state_of(old) == "tuned"
    held = _register(ws, tok, 4, "held", metrics={"no_regression": {
        "passed": False, "reason": "regressed beyond 0.02: docstrings_mc/acc_norm"}})
    with pytest.raises(LmforgeError) as e:
        _run(ws, tmp_path, f'[steps.p]\nstage = "promote"\nmodel = "{held}"\n')
    assert "held back: regressed beyond 0.02" in e.value.message
    assert ws.state_of(held) == "tuned"


def test_a_sunset_in_the_past_is_refused():
    from lmforge.lifecycle.registry_stage import DeprecateSettings

    s = DeprecateSettings.from_dict({"model": "m", "successor": "n", "sunset": "2001-01-01"},
                                    "step 'd'", None)
    with pytest.raises(LmforgeError, match="not in the future"):
        s.sunset_date()
    assert date.fromisoformat(DeprecateSettings("m", "n", 30).sunset_date()) > date.today()


def test_a_reply_stuck_on_one_character_fails_the_smoke_test(world, tmp_path, monkeypatch):
    # The quickstart's safety-tuned model answered the smoke prompt with 48 'c's, well-formed.
    import lmforge.lifecycle.serve_stage as serve_stage

    ws, _, old, *_ = world
    real_chat = serve_stage.chat

    def stuck(*args, **kwargs):
        answer = real_chat(*args, **kwargs)
        answer["choices"][0]["message"]["content"] = "c" * 48
        return answer

    monkeypatch.setattr(serve_stage, "chat", stuck)
    with pytest.raises(LmforgeError) as e:
        _run(ws, tmp_path, f'[steps.smoke]\nstage = "serve-smoke"\nmodel = "{old}"\n'
                           "max_tokens = 4\n")
    assert "with 'c' repeated" in e.value.message and "registry lineage" in e.value.hint
    assert not ws.list(kind="smoke-report")


def test_repeated_character_finds_a_stuck_reply_and_spares_prose():
    from lmforge.degenerate import repeated_character

    assert repeated_character("c" * 48) == "c"
    assert repeated_character("cg" + "c" * 46) == "c"  # cut at the limit while looping
    assert repeated_character("x x x x") == "x"
    assert repeated_character("os.path.join: Join one or more path segments.") is None
    assert repeated_character("Hello!!!") is None and repeated_character("") is None


def test_the_summary_duration_never_rounds_minutes_up():
    from lmforge.lifecycle.summary import duration_text

    # 512 s printed as "9 min 32 s" in CI's log (minutes were rounded, not floored).
    assert duration_text(512.4) == "8 min 32 s"
    assert duration_text(59.6) == "1 min 0 s"
    assert duration_text(3.2) == "0 min 3 s"
