"""RLHF (stage 6, `--method rlhf`): tune a policy to answers a reward model prefers, with a KL
penalty that keeps it near a frozen reference (the model it started from).

    lmforge finetune SFT --method rlhf --reward RM --prompts p.jsonl --algo ppo|grpo|rloo

Each step: sample answers to a few prompts with the KV-cached engine (`generate_batch`,
seeded by (seed, step, row)); score them with the reward model; measure log-probs under the
policy and the reference; turn scores and KL into advantages; update the policy
(policy_gradient.py: PPO with a value head, or the critic-free GRPO / RLOO).

Guards against reward hacking: a KL target with Ziegler et al.'s adaptive coefficient,
a per-token length penalty (and an optional penalty for answers that never end), and reward
normalization by the running mean and standard deviation of every score seen. Logged per step:
mean reward, KL, entropy, answer length, clip fraction (and losses, the KL coefficient,
how many answers ended).

Why this is not `train.loop.train`: that loop reads a step's data as a pure function of
(seed, step), independent of the weights, and takes one optimizer step per batch. Here the
data is sampled by the very policy being trained, PPO takes several optimizer steps
(epochs x minibatches) per batch of rollouts against the log-probs they were sampled with, and
the run carries state beyond the weights (the KL coefficient, the reward statistics). So the
outer loop is here, built from the loop's parts: `build_optimizers`, the learning-rate
schedule, `save_checkpoint` / `load_checkpoint` (the value head saved as the objective's own
parameters), the metrics log and the progress display. Rollouts are seeded by (seed, step)
and minibatches shuffled by (seed, step), so a run resumed from a checkpoint takes the steps
an uninterrupted one would have taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.design.estimate import training_flops_per_token
from lmforge.engine.generate import generate_batch
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace, atomic_write_json
from lmforge.rerun import check_read, input_record, records_digest, rerun_metrics, training_record
from lmforge.runtime import measure_matmul_peak, resolve_device
from lmforge.stage import Outcome, check_keys
from lmforge.tokenizer import Tokenizer
from lmforge.train import policy_gradient as pg
from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmforge.train.compat import check_reference, check_same_tokenizer
from lmforge.train.loop import Interrupted, _stop_requests, autocast_dtype
from lmforge.train.optim import build_optimizers
from lmforge.train.progress import MetricsLog, TrainProgress
from lmforge.train.reward import MAKE_ONE, RewardModel, load_reward_model
from lmforge.train.schedule import lr_multiplier

ALGOS = ("ppo", "grpo", "rloo")
DEFAULT_PROMPTS = ("pydocs-chat",)


@dataclass(frozen=True)
class RLSettings:
    """What RLHF adds to the training settings (`--rl key=value,...`, or a recipe's `rl`
    table; --algo, --kl-coef, --kl-target and --length-penalty have flags of their own)."""
    algo: str = "ppo"
    prompts_per_step: int = 0  # 0 = 16 answers a step: 16 prompts (ppo), 4 x 4 (grpo, rloo)
    group: int = 0  # answers per prompt; 0 = 1 for ppo, 4 for grpo and rloo
    max_new_tokens: int = 48
    temperature: float = 0.7  # of the rollouts (1.0 drew the tiny SFT model's worst answers)
    top_k: int = 0
    kl_coef: float = 0.1  # the starting beta, in units of the normalized reward
    kl_target: float = 4.0  # nats per answer the adaptive beta aims at; 0 = a fixed beta
    kl_horizon: int = 400  # answers over which beta may move by 20%
    length_penalty: float = 0.0  # subtracted from the (normalized) reward per answer token
    missing_end_penalty: float = 0.0  # subtracted when an answer hits max_new_tokens
    normalize_rewards: bool = True  # by the running mean and std of every score so far
    epochs: int = 2  # passes over each batch of rollouts
    minibatches: int = 2  # optimizer steps per pass
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    eval_prompts: int = 16  # held-out prompts scored before, during and after

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise LmforgeError(f"unknown RL algorithm {self.algo!r}",
                               hint=f"choose one of: {', '.join(ALGOS)}")
        if self.prompts_per_step < 0:
            raise LmforgeError(f"rl setting prompts_per_step must not be negative, got "
                               f"{self.prompts_per_step}")
        for key in ("max_new_tokens", "kl_horizon", "epochs", "minibatches", "eval_prompts"):
            if getattr(self, key) < 1:
                raise LmforgeError(f"rl setting {key} must be at least 1, got "
                                   f"{getattr(self, key)}")
        if self.group < 0 or (self.algo != "ppo" and self.group == 1):
            raise LmforgeError(f"group must be 0 (the default) or more than 1 for "
                               f"{self.algo}, got {self.group}",
                               hint="a group baseline compares several answers per prompt, "
                                    "e.g. --rl group=4")
        if self.temperature <= 0:
            raise LmforgeError(f"rollouts must sample: temperature {self.temperature}",
                               hint="use --rl temperature=1.0")
        for key in ("kl_coef", "kl_target", "length_penalty", "missing_end_penalty"):
            if getattr(self, key) < 0:
                raise LmforgeError(f"rl setting {key} must not be negative")
        if self.minibatches > self.rollouts:
            raise LmforgeError(f"{self.minibatches} minibatches of {self.rollouts} rollouts",
                               hint="use fewer minibatches, or more prompts_per_step")

    @property
    def answers_per_prompt(self) -> int:
        return self.group or (1 if self.algo == "ppo" else 4)

    @property
    def rollouts(self) -> int:
        return self.prompts * self.answers_per_prompt

    @property
    def prompts(self) -> int:
        """Prompts per step."""
        return self.prompts_per_step or max(1, 16 // self.answers_per_prompt)

    @classmethod
    def from_options(cls, algo: str, options: tuple[tuple[str, Any], ...] | dict[str, Any],
                     where: str = "rl settings") -> RLSettings:
        values = dict(options)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        check_keys(values, where, optional=[f for f in fields if f != "algo"])
        typed: dict[str, Any] = {"algo": algo}
        for key, value in values.items():
            kind = type(fields[key].default)
            try:
                if kind is bool and isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    typed[key] = value.lower() in ("true", "1", "yes")
                else:
                    typed[key] = kind(value)
            except (TypeError, ValueError):
                raise LmforgeError(f"{where}: {key}={value!r} is not a {kind.__name__}",
                                   hint="e.g. --rl prompts_per_step=8,max_new_tokens=48") \
                    from None
        return cls(**typed)


def rl_options(spec: str | dict[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    """`key=value,...` (the CLI) or a table (a recipe) as a sorted tuple of pairs."""
    if isinstance(spec, dict):
        table = dict(spec)
    else:
        table = {}
        for part in (p for p in str(spec).split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep:
                raise LmforgeError(f"{where}: cannot read RL setting {part!r}",
                                   hint="write --rl prompts_per_step=8,max_new_tokens=48")
            table[key.strip()] = value.strip()
    RLSettings.from_options("ppo", table, where)  # refuse unknown keys and bad values now
    return tuple(sorted(table.items()))


# ---- rollouts ------------------------------------------------------------------------------


def _row_seed(seed: int, step: int, row: int) -> int:
    digest = hashlib.sha256(f"rollout|{seed}|{step}|{row}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


@torch.no_grad()
def sample_answers(policy: Transformer, prompts: list[list[int]], rl: RLSettings, seed: int,
                   step: int, tok: Tokenizer) -> list[list[int]]:
    """One sampled answer per prompt (ending at <|end|> where the policy ended it), each row
    seeded by (seed, step, row) so a resumed run samples what it would have."""
    policy.eval()
    params = [SamplingParams(temperature=rl.temperature, top_k=rl.top_k,
                             max_new_tokens=rl.max_new_tokens, seed=_row_seed(seed, step, i))
              for i in range(len(prompts))]
    return generate_batch(policy, prompts, params, stop_ids=(tok.end_id, tok.eos_id))


def pack(prompts: list[list[int]], answers: list[list[int]], device: torch.device
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, L) of prompt + answer right-padded, answer starts (B,), answer mask (B, R)."""
    rows = [p + a for p, a in zip(prompts, answers)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    width = max(map(len, answers))
    mask = torch.zeros(len(rows), width)
    for i, (row, answer) in enumerate(zip(rows, answers)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(answer)] = 1
    starts = torch.tensor([len(p) for p in prompts])
    return ids.to(device), starts.to(device), mask.to(device)


def as_turn(answer: list[int], tok: Tokenizer) -> list[int]:
    """An answer as a finished assistant turn, ending at <|end|> as the reward model's training
    answers did. An answer cut off by the token budget is judged as the cut-off text a user
    would see (the judge of `eval compare` does the same): scored without its end, a reward
    model that never saw such a sequence gives it any score, and RLHF learns never to end."""
    if answer and answer[-1] == tok.eos_id:
        answer = answer[:-1]
    return answer if answer and answer[-1] == tok.end_id else [*answer, tok.end_id]


@torch.no_grad()
def measure(policy: Transformer, reference: Transformer, rm: RewardModel, prompts: list[list[int]],
            answers: list[list[int]], temperature: float, device: torch.device, tok: Tokenizer,
            value_head: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """What is measured on sampled answers before any update: reward model scores, log-probs
    under the policy and the reference, per-token KL (log pi - log pi_ref), and values."""
    ids, starts, mask = pack(prompts, answers, device)
    logp, _, values = pg.response_stats(policy, ids, starts, mask.shape[1], temperature,
                                        value_head)
    ref_logp, _, _ = pg.response_stats(reference, ids, starts, mask.shape[1], temperature)
    scores = torch.tensor(rm.score_ids([p + as_turn(a, tok) for p, a in zip(prompts, answers)]),
                          device=device)
    return {"ids": ids, "starts": starts, "mask": mask, "logp": logp * mask,
            "ref_logp": ref_logp * mask, "values": None if values is None else values * mask,
            "kl": (logp - ref_logp) * mask, "scores": scores}


def evaluate_policy(policy: Transformer, reference: Transformer, rm: RewardModel,
                    prompts: list[list[int]], rl: RLSettings, seed: int, tok: Tokenizer,
                    device: torch.device) -> dict[str, float]:
    """Mean reward, KL to the reference and answer length on held-out prompts, from answers
    sampled as rollouts are (same temperature, fixed seeds), so the KL estimate is unbiased."""
    answers = sample_answers(policy, prompts, rl, seed, -1, tok)
    m = measure(policy, reference, rm, prompts, answers, rl.temperature, device, tok)
    return {"reward": float(m["scores"].mean()), "kl": float(m["kl"].sum(1).mean()),
            "length": float(m["mask"].sum(1).mean())}


# ---- the stage -----------------------------------------------------------------------------


def _encoded_prompts(tok: Tokenizer, prompts: list[list[dict]], room: int
                     ) -> tuple[list[list[int]], int]:
    """Generation-prompt ids of each prompt that leaves `room` tokens for its answer."""
    out, dropped = [], 0
    for p in prompts:
        ids, _ = tok.render_chat(p, add_generation_prompt=True)
        if len(ids) <= room:
            out.append(ids)
        else:
            dropped += 1
    return out, dropped


def _prompt_sets(s: Any, rl: RLSettings) -> tuple[list[list[dict]], list[list[dict]], list[str]]:
    """(training prompts, held-out prompts, their refs)."""
    from lmforge.data.prompts import load_prompts
    from lmforge.train.finetune import _split

    refs = list(s.data) or list(DEFAULT_PROMPTS)
    prompts = load_prompts(refs)
    if s.val_data:
        held = load_prompts(list(s.val_data))
    elif refs == ["pydocs-chat"]:
        held = load_prompts(["pydocs-chat:heldout"])
    else:
        key = [json.dumps(p, sort_keys=True) for p in prompts]
        out = [_split(k, s.val_fraction, s.train.seed) for k in key]
        held = [p for p, o in zip(prompts, out) if o] or prompts[-1:]
        prompts = [p for p, o in zip(prompts, out) if not o] or prompts
    # Spread the held-out prompts over the set (built-in sets are ordered by name).
    pick = np.linspace(0, len(held) - 1, min(rl.eval_prompts, len(held))).round().astype(int)
    return prompts, [held[i] for i in sorted(set(pick.tolist()))], refs


def _prompt_digest(prompts: list[list[int]]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(np.asarray(p, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def run_rlhf(ws: Workspace, s: Any, show_progress: bool = True, on_step=None) -> Outcome:
    """Tune `s.model` (FinetuneSettings, method rlhf) against the reward model `s.reward` and
    register the policy as a tuned model; details are the metrics history."""
    rl = RLSettings.from_options(s.algo, s.rl)
    t = s.train
    if not s.reward:
        raise LmforgeError("--method rlhf needs a reward model (--reward RM)",
                           hint=f"make one with `{MAKE_ONE}`")
    if s.lora:
        raise LmforgeError("--lora is not supported with --method rlhf",
                           hint="tune the whole policy: drop --lora")
    base = ws.resolve(s.model, kind="model")
    policy, tok = load_model_dir(base.path)
    rm = load_reward_model(ws, s.reward)
    check_same_tokenizer(tok, rm.tokenizer, f"the policy {base.id}",
                         f"the reward model {rm.ref}",
                         hint=f"train a reward model from this policy's SFT model: lmforge "
                              f"finetune {base.id} --method reward --data pydocs-prefs")
    ref_art = ws.resolve(s.reference, kind="model") if s.reference else base
    if ref_art.id == base.id:
        reference, ref_tok = load_model_dir(base.path)
    else:
        reference, ref_tok = load_model_dir(ref_art.path)
        check_reference((policy.design, tok), (reference.design, ref_tok), base.id, ref_art.id)
    # Prompt and answer must fit the policy's context and the reward model's.
    context = min(policy.design.context_length, rm.context_length)
    train_prompts, held_prompts, refs = _prompt_sets(s, rl)
    read = records_digest(train_prompts, held_prompts)
    check_read(read, "prompts")
    train_ids, dropped = _encoded_prompts(tok, train_prompts, context - rl.max_new_tokens)
    held_ids, _ = _encoded_prompts(tok, held_prompts, context - rl.max_new_tokens)
    if not train_ids or not held_ids:
        raise LmforgeError(f"no prompt leaves room for a {rl.max_new_tokens}-token answer in "
                           f"the context of {context}",
                           hint="lower --rl max_new_tokens, or give shorter prompts")
    notes = ([f"{dropped} prompts left out: too long for a {rl.max_new_tokens}-token answer"]
             if dropped else [])
    total = t.steps or max(1, math.ceil(t.epochs * len(train_ids) / rl.prompts))
    key = hashlib.sha256(f"rlhf|{base.id}|{rm.ref}|{ref_art.id}|{s!r}|"
                         f"{_prompt_digest(train_ids)}".encode()).hexdigest()[:12]
    run_dir = ws.runs_dir / f"rlhf-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"stage": "finetune", "model": base.id,
                                             "method": "rlhf", "reward": rm.ref,
                                             "prompts": refs, "settings": t.to_dict(),
                                             "rl": dataclasses.asdict(rl)})
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    value_head = nn.Linear(policy.design.d_model, 1) if rl.algo == "ppo" else None
    if value_head is not None:
        nn.init.zeros_(value_head.weight)
        nn.init.zeros_(value_head.bias)
    loop = RLLoop(policy, reference.requires_grad_(False).eval(), rm.requires_grad_(False),
                  value_head, tok, rl, t, device)
    try:
        history, before, after = loop.run(train_ids, held_ids, total, run_dir, on_step,
                                          show_progress)
    except Interrupted as e:
        raise Interrupted(f"run {run_dir.name}: {e}") from None
    policy.to("cpu").float()
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {
        "method": "rlhf", "algo": rl.algo, "steps": len(history) and history[-1]["step"],
        "train_prompts": len(train_ids), "eval_prompts": len(held_ids),
        "reward_before": before["reward"], "reward_after": after["reward"],
        "kl_before": before["kl"], "kl_after": after["kl"],
        "length_before": before["length"], "length_after": after["length"],
        "kl_coef": last.get("kl_coef", rl.kl_coef),
        "train_seconds": round(last.get("elapsed_s", 0.0), 1),
        # The held-out prompts' settings are not in `settings` (that would change the ids of
        # earlier runs' records): reproduce needs them to pick the same held-out prompts.
        **rerun_metrics(input_record([*refs, *s.val_data]), training_record(device.type),
                        {"read_sha256": read, "val_data": list(s.val_data),
                         "val_fraction": s.val_fraction})}
    if notes:
        metrics["warnings"] = notes
    settings = {"method": "rlhf", "data": refs, "reward": rm.ref, "reference": ref_art.id,
                "rl": dataclasses.asdict(rl), **t.to_dict()}
    parents: dict[str, Any] = {"base": base.id, "reward": rm.ref}
    if ref_art.id != base.id:
        parents["reference"] = ref_art.id
    if "tokenizer" in base.parents:
        parents["tokenizer"] = base.parents["tokenizer"]
    body = (f"Tuned with RLHF ({rl.algo}) from {base.id} against the reward model {rm.ref} on "
            f"{', '.join(refs)} for {metrics['steps']} steps; held-out reward "
            f"{before['reward']:.3f} → {after['reward']:.3f}, KL to the reference "
            f"{after['kl']:.2f} nats per answer.")
    with ws.staging() as d:
        save_model_dir(policy, d, tok, model_card(policy.design,
                                                  f"{policy.design.name} (rlhf)", body))
        (d / "training_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        art = ws.register(d, kind="model", stage="finetune", parents=parents, settings=settings,
                          metrics=metrics, state="tuned", name=f"{policy.design.name}-rlhf")
    return Outcome(art, summary(metrics), history)


def summary(m: dict[str, Any]) -> str:
    line = (f"rlhf ({m['algo']}): {m['steps']} steps in {m['train_seconds']:.0f} s; held-out "
            f"reward {m['reward_before']:.3f} → {m['reward_after']:.3f}, KL to the reference "
            f"{m['kl_after']:.2f} nats per answer, answer length {m['length_before']:.1f} → "
            f"{m['length_after']:.1f} tokens")
    return line + "".join(f"; warning: {w}" for w in m.get("warnings", []))


class RLLoop:
    """The outer loop: rollouts, then a policy update, step after step; checkpointed.
    `rm` is anything with `score_ids(rows) -> list[float]` (a RewardModel)."""

    def __init__(self, policy: Transformer, reference: Transformer, rm: RewardModel,
                 value_head: nn.Module | None, tok: Tokenizer, rl: RLSettings, t: Any,
                 device: torch.device):
        self.policy, self.reference, self.rm = policy.to(device), reference.to(device), rm
        if isinstance(rm, nn.Module):  # a test's stand-in scorer need not be one
            rm.to(device)
        self.value_head = value_head.to(device) if value_head is not None else None
        self.tok, self.rl, self.t, self.device = tok, rl, t, device
        self.amp = autocast_dtype(t, device)
        self.owned = ({f"value_head.{n}": p for n, p in self.value_head.named_parameters()}
                      if self.value_head is not None else {})
        self.optimizers = build_optimizers(policy, t.optimizer, t.lr, t.weight_decay,
                                           (t.beta1, t.beta2), t.muon_lr, device,
                                           extra=list(self.owned.values()))
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        self.parameters = [*policy.parameters(), *self.owned.values()]

    def step_optimizers(self, loss: torch.Tensor) -> float:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.parameters if p.requires_grad], self.t.grad_clip).item()
        if not math.isfinite(norm):
            raise LmforgeError("RLHF diverged (gradient norm is not finite)",
                               hint="lower the learning rate (--lr) or raise --kl-coef")
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return norm

    def _autocast(self):
        return (torch.autocast(self.device.type, dtype=self.amp) if self.amp
                else contextlib.nullcontext())

    def prompts_for(self, prompts: list[list[int]], step: int) -> list[list[int]]:
        """This step's prompts (an epoch's permutation, seeded), each repeated per group."""
        rl, n = self.rl, len(prompts)
        out = []
        for k in range(step * rl.prompts, (step + 1) * rl.prompts):
            epoch, offset = divmod(k, n)
            order = np.random.default_rng([self.t.seed, epoch, 5]).permutation(n)
            out += [prompts[order[offset]]] * rl.answers_per_prompt
        return out

    def rollouts(self, prompts: list[list[int]], step: int, state: dict[str, Any]
                 ) -> tuple[pg.Rollouts, dict[str, float]]:
        """Sample, score, and turn scores and KL into advantages (and PPO's returns)."""
        rl, tok = self.rl, self.tok
        answers = sample_answers(self.policy, prompts, rl, self.t.seed, step, tok)
        with self._autocast():
            m = measure(self.policy, self.reference, self.rm, prompts, answers, rl.temperature,
                        self.device, tok, self.value_head)
        scores, mask, kl = m["scores"].float(), m["mask"], m["kl"].float()
        moments = pg.RunningMoments(**state["reward_moments"])
        moments.update(scores)
        state["reward_moments"] = dataclasses.asdict(moments)
        final = (scores - moments.mean) / max(moments.std, 1e-6) if rl.normalize_rewards \
            else scores.clone()
        lengths = mask.sum(1)
        ended = torch.tensor([a[-1] in (tok.end_id, tok.eos_id) for a in answers],
                             device=self.device)
        final = final - rl.length_penalty * lengths - rl.missing_end_penalty * (~ended).float()
        beta = state["kl_coef"]
        values, returns = m["values"], None
        if rl.algo == "ppo":
            rewards = pg.token_rewards(final, kl, mask, beta)
            advantages, returns = pg.gae(rewards, values.float(), mask, rl.gamma, rl.lam)
            advantages = pg.whiten(advantages, mask)
        else:
            sequence = final - beta * kl.sum(1) if rl.algo == "rloo" else final
            advantages = pg.group_advantages(sequence, rl.answers_per_prompt,
                                             rl.algo)[:, None] * mask
        ro = pg.Rollouts(m["ids"], m["starts"], mask, m["logp"].float(),
                         m["ref_logp"].float(), values, advantages, returns)
        seen = {"reward": float(scores.mean()), "reward_std": float(scores.std()),
                "kl": float(kl.sum(1).mean()), "response_length": float(lengths.mean()),
                "ended": float(ended.float().mean())}
        return ro, seen

    def run(self, train_ids: list[list[int]], held_ids: list[list[int]], total: int,
            run_dir, on_step, show_progress: bool
            ) -> tuple[list[dict], dict[str, float], dict[str, float]]:
        rl, t = self.rl, self.t
        log = MetricsLog(run_dir / "metrics.jsonl")
        state: dict[str, Any] = {"kl_coef": rl.kl_coef, "elapsed": 0.0, "tokens": 0,
                                 "reward_moments": dataclasses.asdict(pg.RunningMoments()),
                                 "before": None}
        start = 0
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            saved = load_checkpoint(ckpt, self.policy, self.optimizers, self.owned)
            start, state = saved["step"], {**state, **saved["loop"]}
            if show_progress:
                print(f"resuming {run_dir.name} from its checkpoint at step {start}", flush=True)
        log.truncate_after(start)

        def held_out() -> dict[str, float]:
            with self._autocast():
                return evaluate_policy(self.policy, self.reference, self.rm, held_ids, rl,
                                       t.seed, self.tok, self.device)

        if state["before"] is None:
            state["before"] = held_out()
        flops = training_flops_per_token(self.policy.design,
                                         min(self.policy.design.context_length, 256))
        peak = measure_matmul_peak(self.device, self.amp or torch.float32,
                                   seconds=0.3).flops_per_second
        progress = TrainProgress(total, start, enabled=show_progress)
        with _stop_requests() as stop, progress:
            for step in range(start, total):
                t0 = time.perf_counter()
                mult = lr_multiplier(step, total, t.warmup_steps, t.schedule, t.min_lr_ratio)
                for opt in self.optimizers:
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * mult
                ro, seen = self.rollouts(self.prompts_for(train_ids, step), step, state)
                self.policy.train()
                with self._autocast():
                    stats = pg.update(
                        self.policy, self.value_head, ro, self.step_optimizers,
                        epochs=rl.epochs, minibatches=rl.minibatches, clip=rl.clip,
                        value_clip=rl.value_clip, vf_coef=rl.vf_coef,
                        kl_loss_coef=state["kl_coef"] if rl.algo == "grpo" else 0.0,
                        temperature=rl.temperature,
                        rng=np.random.default_rng([t.seed, step, 9]))
                if rl.kl_target:
                    state["kl_coef"] = pg.adapt_kl_coef(state["kl_coef"], seen["kl"],
                                                        rl.kl_target, len(ro.ids),
                                                        rl.kl_horizon)
                seconds = time.perf_counter() - t0
                state["elapsed"] += seconds
                answer_tokens = int(ro.mask.sum())
                state["tokens"] += answer_tokens
                # MFU counts the updates' forward and backward passes over every position.
                trained = ro.ids.numel() * rl.epochs
                record = {"step": step + 1, **seen, **stats,
                          "kl_coef": state["kl_coef"], "lr_mult": mult,
                          "tokens": state["tokens"], "tokens_per_s": answer_tokens / seconds,
                          "mfu": trained * flops / seconds / peak,
                          "elapsed_s": state["elapsed"]}
                last = step + 1 == total
                if (step + 1) % t.eval_every == 0 or last:
                    measured = held_out()
                    record.update({f"val_{k}": v for k, v in measured.items()})
                    progress.message(f"step {step + 1}: reward {seen['reward']:.3f}, KL "
                                     f"{seen['kl']:.2f}, held-out reward "
                                     f"{measured['reward']:.3f} (KL {measured['kl']:.2f})")
                log.write(record)
                progress.update(record)
                if on_step is not None:
                    on_step(step + 1)
                if (step + 1) % t.checkpoint_every == 0 or last or stop["stop"]:
                    save_checkpoint(run_dir, step + 1, self.policy, self.optimizers,
                                    {"loop": state}, self.owned)
                if stop["stop"] and not last:
                    raise Interrupted(f"stopped at step {step + 1}; checkpoint saved")
        history = log.read()
        final = history[-1] if history else {}
        after = ({k[4:]: v for k, v in final.items() if k.startswith("val_")}
                 if "val_reward" in final else held_out())
        return history, state["before"], after
