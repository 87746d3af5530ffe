"""RLHF: PPO's pieces against hand computations, GRPO/RLOO baselines, short runs on a toy reward
that raise it while the KL penalty holds the policy near its reference, exact resumption after
a stop, and the models RLHF refuses to combine."""

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lmforge.model.io import save_model_dir
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer
from lmforge.train import policy_gradient as pg
from lmforge.train.loop import Interrupted
from lmforge.train.rlhf import RLLoop, RLSettings
from lmforge.train.settings import TrainSettings
from test_cli import artifact_id, one_clean_error
from test_reward import NAMES, TEXT, register_model, tiny


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 300, show_progress=False)


@pytest.fixture
def one_thread():
    """Toy runs are thousands of tiny ops: a second thread only waits on the first (on a
    shared 2-core machine the PPO run took 44 s with two threads, 3 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the arithmetic, by hand ---------------------------------------------------------------


def test_gae_and_returns_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 9.0, 9.0]])  # row 1 ends after one token
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    adv, ret = pg.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # Row 0 backwards: d2 = 1 - 0.3 = 0.7; d1 = 0.9*0.3 - 0.2 = 0.07, A1 = 0.07 + 0.45*0.7;
    # d0 = 0.9*0.2 - 0.1 = 0.08, A0 = 0.08 + 0.45*A1. Row 1: A0 = 0.5 - 0.4; padding is 0.
    a1 = 0.07 + 0.45 * 0.7
    want = torch.tensor([[0.08 + 0.45 * a1, a1, 0.7], [0.1, 0, 0]])
    assert torch.allclose(adv, want, atol=1e-6)  # float32 sums of a few terms: 1e-6
    assert torch.allclose(ret, (want + values) * mask, atol=1e-6)


def test_clipped_surrogate_and_value_loss_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, clipped = pg.clipped_surrogate(logp, old, adv, torch.ones(1, 3), clip=0.2)
    # max(-1.5, -1.2) = -1.2; max(-0.5, -0.8) = -0.5; max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, abs=1e-6)
    assert clipped.item() == pytest.approx(2 / 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # a padded token counts for nothing
    loss, _ = pg.clipped_surrogate(logp, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)
    vloss, vclip = pg.clipped_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]),
                                         torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    # Row 0: V 1.0 clipped to 0.7: max(1, 1.69); row 1: max(1, 1). Half the mean.
    assert vloss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-6)
    assert vclip.item() == 0.5


def test_token_rewards_group_baselines_and_the_kl_controller():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    r = pg.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    want = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]])
    assert torch.allclose(r, want, atol=1e-6)
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    rloo = pg.group_advantages(scores, 4, "rloo")
    assert rloo[:4].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 2])
    assert rloo[4:].tolist() == [0.0] * 4  # a group that agrees teaches nothing
    grpo = pg.group_advantages(scores, 4, "grpo")
    std = float(np.std([1, 2, 3, 6], ddof=1))
    assert grpo[:4].tolist() == pytest.approx([(x - 3) / (std + 1e-4) for x in (1, 2, 3, 6)],
                                              rel=1e-5)
    assert pg.adapt_kl_coef(0.1, kl=8.0, target=4.0, samples=40, horizon=400) == \
        pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +20%
    assert pg.adapt_kl_coef(0.1, kl=3.0, target=4.0, samples=40, horizon=400) == \
        pytest.approx(0.1 * (1 - 0.25 * 0.1 * 0.8), rel=0.2)  # below target: it shrinks
    moments = pg.RunningMoments()
    parts = [torch.tensor([1.0, 2.0, 4.0]), torch.tensor([8.0]), torch.tensor([0.5, 3.0])]
    for p in parts:
        moments.update(p)
    everything = torch.cat(parts).numpy()
    assert moments.mean == pytest.approx(everything.mean())
    assert moments.std == pytest.approx(everything.std(ddof=1))


def test_response_stats_read_the_answer_tokens_of_rows_of_any_length(tok):
    model = tiny(tok).eval()
    prompts = [[1, 20, 21, 22, 6], [1, 30, 6]]
    answers = [[40, 41], [50, 51, 52, 3]]
    from lmforge.train.rlhf import pack

    ids, starts, mask = pack(prompts, answers, torch.device("cpu"))
    with torch.no_grad():
        logp, entropy, _ = pg.response_stats(model, ids, starts, mask.shape[1], 1.0)
        for row, (p, a) in enumerate(zip(prompts, answers)):
            full = model(torch.tensor([p + a])).log_softmax(-1)[0]  # alone, unpadded
            want = [full[len(p) - 1 + k, t].item() for k, t in enumerate(a)]
            assert logp[row, :len(a)].tolist() == pytest.approx(want, abs=1e-4)  # padded
            # batch vs one row: 1e-4
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert (entropy > 0).all() and (entropy <= math.log(tok.vocab_size) + 1e-4).all()


# ---- short runs on a toy reward --------------------------------------------------------------


class CountWords:
    """A toy judge: the share of answer tokens that are ordinary words of ids 7..99 (special
    tokens excluded, and a short answer scores less), out of `length`."""

    def __init__(self, tok, length):
        self.tok, self.length = tok, length

    def score_ids(self, rows):
        out = []
        for r in rows:
            answer = r[len(r) - r[::-1].index(self.tok.assistant_id):]
            out.append(sum(7 <= t < 100 for t in answer) / self.length)
        return out


def toy_run(tok, tmp_path, algo="grpo", steps=10, kl_coef=0.02, kl_target=3.0, schedule="constant",
            on_step=None, run_name="run", prompts_per_step=4):
    rl = RLSettings(algo=algo, prompts_per_step=prompts_per_step, max_new_tokens=8,
                    kl_coef=kl_coef, kl_target=kl_target, eval_prompts=2)
    t = TrainSettings(steps=steps, lr=1e-2, warmup_steps=0, schedule=schedule, eval_every=100,
                      checkpoint_every=100, device="cpu", batch_tokens=256, micro_batch=8,
                      seq_len=32)
    head = None
    if algo == "ppo":
        head = torch.nn.Linear(32, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    policy = tiny(tok)
    loop = RLLoop(policy, tiny(tok).requires_grad_(False), CountWords(tok, 8), head, tok, rl, t,
                  torch.device("cpu"))
    prompts = [tok.render_chat([{"role": "user", "content": f"What is a {n}?"}],
                               add_generation_prompt=True)[0] for n in NAMES[:6]]
    history, before, after = loop.run(prompts, prompts[:2], steps, tmp_path / run_name, on_step,
                                      False)
    return history, policy


def _mean(history, key, part):
    return float(np.mean([r[key] for r in part(history)]))


def test_grpo_raises_a_toy_reward_and_the_kl_penalty_holds_it_near_the_reference(
        tok, tmp_path, one_thread):
    history, _ = toy_run(tok, tmp_path, "grpo")
    first, last = _mean(history, "reward", lambda h: h[:3]), _mean(history, "reward",
                                                                  lambda h: h[-3:])
    assert last > first + 0.15  # seeded: from ~0.3 to ~0.65 here
    for key in ("kl", "entropy", "response_length", "clip_fraction", "kl_coef", "reward"):
        assert all(math.isfinite(r[key]) for r in history), key
    assert max(r["kl"] for r in history) < 20  # nats per 8-token answer (ln 300 ~ 5.7/token)
    # A strong fixed penalty keeps the policy nearer its reference on the same rollout seeds.
    held, _ = toy_run(tok, tmp_path, "grpo", kl_coef=1.0, kl_target=0.0, run_name="held")
    assert _mean(held, "kl", lambda h: h[-4:]) < _mean(history, "kl", lambda h: h[-4:])


def test_rloo_raises_a_toy_reward_without_a_critic(tok, tmp_path, one_thread):
    # The quickstart's RLHF step runs RLOO: each answer baselined by its group's other answers.
    history, _ = toy_run(tok, tmp_path, "rloo")
    assert _mean(history, "reward", lambda h: h[-3:]) > _mean(history, "reward",
                                                               lambda h: h[:3]) + 0.1
    assert not any("value_loss" in r for r in history)  # no value head to train
    assert max(r["kl"] for r in history) < 20


def test_ppo_raises_a_toy_reward_with_its_value_head(tok, tmp_path, one_thread):
    history, _ = toy_run(tok, tmp_path, "ppo", steps=12, prompts_per_step=16)
    assert _mean(history, "reward", lambda h: h[-3:]) > _mean(history, "reward",
                                                               lambda h: h[:3]) + 0.1
    assert all("value_loss" in r and "clip_fraction" in r for r in history)
    assert max(r["kl"] for r in history) < 20


def test_a_stopped_run_resumes_to_the_same_policy(tok, tmp_path, one_thread):
    _, straight = toy_run(tok, tmp_path, "rloo", steps=4, run_name="straight")

    def stop_at_two(step):
        if step == 2:  # what Ctrl-C does: the loop checkpoints and stops after this step
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="stopped at step 2"):
        toy_run(tok, tmp_path, "rloo", steps=4, run_name="stopped", on_step=stop_at_two)
    history, resumed = toy_run(tok, tmp_path, "rloo", steps=4, run_name="stopped")
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name  # same steps, same seeds: 1e-5


# ---- through the CLI, and what it refuses ----------------------------------------------------


def register_reward_model(root: Path, model, tok) -> str:
    """A reward-model artifact with a random head (enough for plumbing and refusals)."""
    ws = Workspace.open(root)
    try:
        with ws.staging() as d:
            save_model_dir(model, d, tok, "# rm\n")
            save_file({"weight": torch.randn(1, model.design.d_model) * 0.2,
                       "bias": torch.zeros(1)}, str(d / "reward_head.safetensors"))
            (d / "reward_config.json").write_text(json.dumps({"head": "last-token"}))
            return ws.register(d, kind="reward-model", stage="finetune").id
    finally:
        ws.close()


RL_ARGS = ("--steps", "2", "--lr", "1e-3", "--device", "cpu", "--seq-len", "32",
           "--batch-tokens", "256", "--micro-batch", "8", "--rl",
           "prompts_per_step=2,max_new_tokens=6,eval_prompts=2,minibatches=1,epochs=1")


def test_finetune_method_rlhf_registers_a_tuned_policy(cli, tok, tmp_path):
    base = register_model(cli.workspace, tiny(tok), tok)
    rm = register_reward_model(cli.workspace, tiny(tok, seed=3), tok)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"What is a {n}?"}) + "\n" for n in NAMES))
    code, out, err = cli("finetune", base, "--method", "rlhf", "--reward", rm, "--prompts",
                         prompts, "--algo", "grpo", "--kl-target", "2", *RL_ARGS)
    assert code == 0, err
    tuned = artifact_id(out, "model")
    assert "rlhf (grpo)" in out and "KL to the reference" in out
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(tuned)
        assert art.parents["base"] == base and art.parents["reward"] == rm
        assert ws.state_of(tuned) == "tuned"
        assert {"reward_before", "reward_after", "kl_after"} <= set(art.metrics)
        assert art.settings["rl"]["kl_target"] == 2.0 and art.settings["rl"]["algo"] == "grpo"
        log = [json.loads(line) for line in art.file("training_metrics.jsonl").read_text()
               .splitlines()]
        for key in ("reward", "kl", "entropy", "response_length", "clip_fraction"):
            assert all(key in r for r in log), key
    finally:
        ws.close()


def test_models_rlhf_cannot_combine_are_refused_before_training(cli, tok, tmp_path):
    base = register_model(cli.workspace, tiny(tok), tok)
    other_tok = train_tokenizer([t.upper() for t in TEXT], 280, show_progress=False)
    code, _, err = cli("finetune", base, "--method", "rlhf", *RL_ARGS)
    one_clean_error(code, err, "needs a reward model (--reward RM)", "--method reward")
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", base, *RL_ARGS)
    one_clean_error(code, err, "is a model, not a reward model")
    foreign_rm = register_reward_model(cli.workspace, tiny(other_tok), other_tok)
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", foreign_rm, *RL_ARGS)
    one_clean_error(code, err, "the reward model", "uses another tokenizer", "--method reward")
    rm = register_reward_model(cli.workspace, tiny(tok, seed=2), tok)
    foreign_ref = register_model(cli.workspace, tiny(other_tok), other_tok, name="foreign")
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", rm, "--reference",
                       foreign_ref, *RL_ARGS)
    one_clean_error(code, err, "the reference model", "another tokenizer", "300 tokens against 280")
    deeper = register_model(cli.workspace, tiny(tok, n_layers=2), tok, name="deeper")
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", rm, "--reference",
                       deeper, *RL_ARGS)
    one_clean_error(code, err, "another architecture", "n_layers 2 vs 1")
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", rm, "--algo", "a2c",
                       *RL_ARGS)
    one_clean_error(code, err, "unknown RL algorithm 'a2c'", "ppo, grpo, rloo")
    code, _, err = cli("finetune", base, "--method", "rlhf", "--reward", rm, "--rl", "clip",
                       *RL_ARGS[:-2])
    one_clean_error(code, err, "cannot read RL setting 'clip'")
    assert not list((cli.workspace / "runs").glob("rlhf-*"))  # nothing started training


def test_rl_settings_and_defaults():
    from lmforge.errors import LmforgeError
    from lmforge.train.finetune import training_settings
    from lmforge.train.rlhf import rl_options

    assert RLSettings().rollouts == 16 and RLSettings(algo="grpo").prompts == 4
    opts = dict(rl_options("group=8,normalize_rewards=false,clip=0.1", "--rl"))
    rl = RLSettings.from_options("rloo", opts)
    assert (rl.group, rl.normalize_rewards, rl.clip, rl.prompts) == (8, False, 0.1, 2)
    with pytest.raises(LmforgeError, match="unknown setting.*beta"):
        rl_options("beta=0.1", "--rl")
    with pytest.raises(LmforgeError, match="clip='x' is not a float"):
        rl_options("clip=x", "--rl")
    with pytest.raises(LmforgeError, match="more than 1 for grpo"):
        RLSettings(algo="grpo", group=1)
    # RLHF samples its own data: a fixed length and a lower rate, unless told otherwise.
    assert (training_settings({}, "t", "rlhf").steps, training_settings({}, "t", "rlhf").lr) \
        == (200, 1e-4)
    assert training_settings({"epochs": 0.5}, "t", "rlhf").steps == 0
    assert training_settings({}, "t", "sft").steps == 0


def test_a_recipe_step_may_leave_the_prompts_to_the_built_in_set():
    from lmforge.train.finetune import FinetuneSettings

    s = FinetuneSettings.from_dict({"model": "m", "method": "rlhf", "reward": "rm",
                                    "algo": "grpo", "rl": {"max_new_tokens": 32}},
                                   "steps.rlhf", Path("."))
    assert (s.data, s.reward, s.algo, s.rl, s.train.steps) == ((), "rm", "grpo",
                                                               (("max_new_tokens", 32),), 200)
