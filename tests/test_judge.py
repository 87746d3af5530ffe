"""`lmforge eval compare A B --judge RM`: win rates by hand, a model that never answers loses
every prompt, a model against itself ties, and the refusals."""

import json

import numpy as np
import pytest
import torch

from lmforge.eval.judge import win_rate
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer
from test_cli import one_clean_error
from test_reward import TEXT, register_model, tiny
from test_rlhf import register_reward_model


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 300, show_progress=False)


def test_win_rate_counts_ties_as_half_with_a_bootstrap_interval():
    rng = np.random.default_rng(0)
    r = win_rate([3, 1, 2, 2], [1, 2, 2, 0], [False] * 4, 2000, rng)
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert r["win_rate"] == 0.625 and r["ci_low"] <= 0.625 <= r["ci_high"]
    assert not r["beats"] and not r["loses_to"]  # four prompts prove nothing
    sweep = win_rate([2.0] * 30, [1.0] * 30, [False] * 30, 2000, rng)
    assert sweep["win_rate"] == 1.0 and sweep["ci_low"] == 1.0 and sweep["beats"]
    same = win_rate([5.0, 1.0], [4.0, 2.0], [True, True], 2000, rng)  # identical answers
    assert same["ties"] == 2 and same["win_rate"] == 0.5


class LengthJudge:
    """Stands in for a reward model (registered as `ref`): longer answers score higher."""

    def __init__(self, ref: str):
        self.ref = ref

    def score_batch(self, items, batch_size=16):
        return [float(len(answer)) for _, answer in items]


def silent(tok, seed=0):
    """A model that ends every answer at once: the residual stream is the embedding, whose
    feature 0 is a large constant, and only <|end|> reads feature 0."""
    model = tiny(tok, seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tok.end_id, 0] = 10.0
    return model


def test_a_model_that_never_answers_loses_to_one_that_does(cli, tok, tmp_path, monkeypatch):
    import lmforge.train.reward as reward

    talker = register_model(cli.workspace, tiny(tok), tok, name="talker")
    quiet = register_model(cli.workspace, silent(tok), tok, name="quiet")
    judge = register_reward_model(cli.workspace, tiny(tok, seed=2), tok)
    monkeypatch.setattr(reward, "load_reward_model", lambda ws, ref, device: LengthJudge(judge))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"What is a {n}?"}) + "\n"
                               for n in ("cat", "dog", "sun", "moon", "cup", "tree", "star",
                                         "rain", "snow", "wind", "lamp", "road")))
    code, out, err = cli("eval", "compare", talker, quiet, talker, "--judge", "x", "--prompts",
                         prompts, "--max-new-tokens", "6", "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["prompts"] == 12 and report["judge"] == judge
    lose, tie = report["rows"]
    assert lose["model"] == quiet and lose["against"] == talker
    # Never a win: a loss wherever the talker said anything (a tie where it said nothing).
    assert lose["wins"] == 0 and lose["losses"] >= 10 and lose["loses_to"]
    assert tie["ties"] == 12 and tie["win_rate"] == 0.5
    assert tie["kl"] == pytest.approx(0.0, abs=1e-4)  # the same model: log-ratio 0
    # Its answer (<|end|> at once) is near certain to it and unlikely to the talker.
    assert lose["kl"] > 3
    models = {m["model"]: m for m in report["models"]}
    assert models[quiet]["ended"] == 1.0 and models[quiet]["mean_length"] == 1.0
    # The comparison is in the record, tied to the models compared and to its judge.
    ws = Workspace.open(cli.workspace)
    try:
        rec = ws.record(report["report"], kind="judge-report")
        assert ws.resolve(rec.id).manifest["parents"] == {"judge": judge, "baseline": talker,
                                                 "models": [quiet]}
        stored = json.loads((rec.path / "report.json").read_text())
        assert stored["rows"] == report["rows"]
        assert rec.metrics == {f"{quiet}/win_rate": lose["win_rate"], f"{talker}/win_rate": 0.5}
    finally:
        ws.close()


def test_a_real_reward_model_judges_and_bad_requests_are_refused(cli, tok, tmp_path):
    a = register_model(cli.workspace, tiny(tok), tok, name="a")
    b = register_model(cli.workspace, tiny(tok, seed=1), tok, name="b")
    rm = register_reward_model(cli.workspace, tiny(tok, seed=2), tok)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                               for q in ("Hi?", "What is a cat?", "And a dog?") * 3))
    code, out, err = cli("eval", "compare", a, b, "--judge", rm, "--prompts", prompts,
                         "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0, err
    assert "win rate" in out and "95% CI" in out and "mean reward" in out
    assert "on 3 prompts" in out  # duplicates asked once
    code, _, err = cli("eval", "compare", a, b, "--judge", a, "--device", "cpu")
    one_clean_error(code, err, "is a model, not a reward model", "--method reward")
    code, _, err = cli("eval", "compare", a, "--judge", rm)
    one_clean_error(code, err, "needs two models or more")
    code, _, err = cli("eval", a, "--judge", rm)
    one_clean_error(code, err, "are for `eval compare`")


def test_prompts_too_long_for_the_context_are_left_out_and_counted(cli, tok, tmp_path):
    a = register_model(cli.workspace, tiny(tok), tok, name="a")
    b = register_model(cli.workspace, tiny(tok, seed=1), tok, name="b")
    rm = register_reward_model(cli.workspace, tiny(tok, seed=2), tok)
    long = "What is a cat? " * 40  # far beyond the 64-token context
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in
                               ("What is a cat?", long, "What is a dog?", long + "x", "Hi?")))
    code, out, err = cli("eval", "compare", a, b, "--judge", rm, "--prompts", prompts,
                         "--max-new-tokens", "4", "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    # Both models answered the same three prompts; the two long ones are counted, not asked.
    assert report["prompts"] == 3 and report["left_out_too_long"] == 2
    assert report["examples"][0]["prompt"] == "What is a cat?"
    only_long = tmp_path / "long.jsonl"
    only_long.write_text(json.dumps({"text": long}) + "\n")
    code, _, err = cli("eval", "compare", a, b, "--judge", rm, "--prompts", only_long,
                       "--device", "cpu")
    one_clean_error(code, err, "none of the 1 prompts leaves room")


def test_a_recipe_judge_step_reads_its_fallback_when_its_files_are_absent(tmp_path):
    from lmforge.eval.judge_stage import JudgeSettings

    s = JudgeSettings.from_dict({"models": ["a", "b"], "judge": "rm",
                                 "prompts": ["data/p.jsonl"], "fallback": "hf:org/set:test"},
                                "step 'judge'", tmp_path)
    assert s.prompts == (str(tmp_path / "data/p.jsonl"),) and s.fallback == ("hf:org/set:test",)
    with pytest.raises(Exception, match="unknown setting"):
        JudgeSettings.from_dict({"models": ["a"], "judge": "rm", "prompt": "x"}, "step 'j'",
                                tmp_path)
