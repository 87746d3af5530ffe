"""Win rates judged by a reward model: `lmforge eval compare SFT DPO RLHF --judge RM`.

Every model answers the same held-out prompts (the pydocs-chat held-out questions unless
given), greedily by default, so each answer is that model's one best guess. The reward model
scores each answer as text (so models with other tokenizers can be judged too), and each model
after the first is compared prompt by prompt with the first: a win counts 1, a tie (the same
answer, or the same score) 1/2, a loss 0. The win rate's 95% interval is a percentile bootstrap
over prompts (Efron & Tibshirani 1993; ties make the per-prompt outcome three-valued, which a
binomial interval does not cover). A model beats the first when the whole interval is above 1/2.

Where a model shares the first model's tokenizer, the report also gives the mean over prompts
of log p_model(answer) - log p_first(answer), summed over the answer's tokens: with sampled
answers (temperature > 0) that is an unbiased estimate of KL(model || first) per answer; with
greedy answers it is the log-ratio on the answers actually given, and is labelled so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmforge.engine.generate import generate_batch
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.runtime import resolve_device
from lmforge.tokenizer import Tokenizer

DEFAULT_PROMPTS = ("pydocs-chat:heldout",)


def _load(ws: Workspace, ref: str, device: torch.device) -> tuple[Transformer, Tokenizer, str]:
    """A model artifact, a LoRA adapter on its base, or a plain model folder."""
    from pathlib import Path

    from lmforge.model.io import load_model

    if not Path(ref).is_dir() and ws.record(ref).kind == "lora-adapter":
        from lmforge.model.lora import load_adapter

        model, tok, art = load_adapter(ws, ref, device=device)
        return model.eval(), tok, art.id
    model, tok, art = load_model(ws, ref, device)
    return model.eval(), tok, art.id if art is not None else str(ref)


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (built-in sets are sorted by name)."""
    if len(items) <= n:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def answer(model: Transformer, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int,
           temperature: float, seed: int, batch_size: int = 16) -> list[list[int]]:
    """Each prompt's answer ids (its <|end|> kept where the model ended), row i seeded
    seed + i when sampling."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        params = [SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens,
                                 seed=seed + i + k)
                  for k in range(len(prompts[i:i + batch_size]))]
        out += generate_batch(model, prompts[i:i + batch_size], params,
                              stop_ids=(tok.end_id, tok.eos_id))
    return out


@torch.no_grad()
def answer_logprobs(model: Transformer, prompts: list[list[int]], answers: list[list[int]],
                    temperature: float, batch_size: int = 16) -> list[float]:
    """log p(answer | prompt) under `model`, summed over the answer's tokens."""
    from lmforge.train.policy_gradient import response_stats
    from lmforge.train.rlhf import pack

    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        ids, starts, mask = pack(prompts[i:i + batch_size], answers[i:i + batch_size], device)
        logp, _, _ = response_stats(model, ids, starts, mask.shape[1], temperature or 1.0)
        out += (logp * mask).sum(1).tolist()
    return out


def win_rate(mine: Sequence[float], theirs: Sequence[float], same: Sequence[bool],
             iters: int, rng: np.random.Generator) -> dict[str, Any]:
    """Wins, ties and losses of `mine` against `theirs` prompt by prompt, the win rate (ties
    count half) and its 95% percentile-bootstrap interval over prompts."""
    a, b = np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float)
    tie = np.asarray(same, dtype=bool) | (a == b)
    outcome = np.where(tie, 0.5, (a > b).astype(float))
    boots = outcome[rng.integers(0, len(outcome), size=(iters, len(outcome)))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    rate = float(outcome.mean())
    return {"wins": int(((a > b) & ~tie).sum()), "ties": int(tie.sum()),
            "losses": int(((a < b) & ~tie).sum()), "win_rate": rate, "ci_low": float(lo),
            "ci_high": float(hi), "beats": bool(lo > 0.5), "loses_to": bool(hi < 0.5)}


def judge_models(ws: Workspace, refs: Sequence[str], judge: str,
                 prompts: Sequence[str] = (), limit: int = 500, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, device: str = "auto",
                 iters: int = 2000) -> dict[str, Any]:
    """Answers of each model to the same prompts, judged by the reward model `judge`; win
    rates of each model after the first against the first."""
    from lmforge.data.prompts import load_prompts
    from lmforge.train.compat import tokenizer_difference
    from lmforge.train.reward import load_reward_model

    if len(refs) < 2:
        raise LmforgeError("a judged comparison needs two models or more",
                           hint="lmforge eval compare SFT TUNED --judge RM")
    if iters < 100:
        raise LmforgeError(f"iters={iters} is too few for a bootstrap", hint="use 1000 or more")
    dev = resolve_device(device)
    rm = load_reward_model(ws, judge, dev)
    sources = list(prompts) or list(DEFAULT_PROMPTS)
    chats = load_prompts(sources)
    too_long = 0
    models: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for ref in refs:
        model, tok, model_id = _load(ws, ref, dev)
        room = model.design.context_length - max_new_tokens
        ids = [tok.render_chat(c, add_generation_prompt=True)[0] for c in chats]
        if first is None:
            # Prompts that leave the first model no room for an answer are left out (and
            # counted) before the spread, so every model answers the same `limit` prompts.
            fits = [(c, i) for c, i in zip(chats, ids) if len(i) <= room]
            too_long = len(chats) - len(fits)
            if not fits:
                raise LmforgeError(f"{model_id}: none of the {len(chats)} prompts leaves room "
                                   f"for a {max_new_tokens}-token answer in its context of "
                                   f"{model.design.context_length}",
                                   hint="lower --max-new-tokens, or give shorter prompts")
            chats, ids = (list(x) for x in zip(*_spread(fits, limit)))
        if any(len(i) > room for i in ids):
            raise LmforgeError(f"{model_id}: a prompt leaves no room for a {max_new_tokens}-"
                               f"token answer in its context of {model.design.context_length}",
                               hint="lower --max-new-tokens, or give shorter prompts")
        answers = answer(model, tok, ids, max_new_tokens, temperature, seed)
        texts = [tok.decode(a, skip_special=True).strip() for a in answers]
        entry: dict[str, Any] = {
            "model": model_id, "texts": texts,
            "scores": rm.score_batch([(c, t) for c, t in zip(chats, texts)]),
            "ended": float(np.mean([bool(a) and a[-1] in (tok.end_id, tok.eos_id)
                                    for a in answers])),
            "length": float(np.mean([len(a) for a in answers]))}
        if first is None:
            first = {"model": model, "tok": tok}
        elif tokenizer_difference(tok, first["tok"]) is None:
            mine = answer_logprobs(model, ids, answers, temperature)
            theirs = answer_logprobs(first["model"], ids, answers, temperature)
            entry["kl"] = float(np.mean(np.subtract(mine, theirs)))
        models.append(entry)
        if len(models) > 1:
            del model  # the first stays for the log-ratios; the others go once measured
    rng = np.random.default_rng(seed)
    base = models[0]
    rows = []
    for m in models[1:]:
        same = [x == y for x, y in zip(m["texts"], base["texts"])]
        row = {"model": m["model"], "against": base["model"],
               **win_rate(m["scores"], base["scores"], same, iters, rng),
               "mean_reward_delta": float(np.mean(m["scores"]) - np.mean(base["scores"]))}
        if "kl" in m:
            row["kl"] = m["kl"]
        rows.append(row)
    examples = [{"prompt": chats[i][-1]["content"],
                 "answers": {m["model"]: {"text": m["texts"][i], "score": m["scores"][i]}
                             for m in models}}
                for i in range(min(3, len(chats)))]
    return {"judge": rm.ref, "prompts": len(chats), "prompt_source": sources,
            "left_out_too_long": too_long,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "confidence": 0.95, "iters": iters,
            "kl_kind": "KL estimate" if temperature > 0 else "log-ratio on greedy answers",
            "models": [{"model": m["model"], "mean_reward": float(np.mean(m["scores"])),
                        "ended": m["ended"], "mean_length": m["length"]} for m in models],
            "rows": rows, "examples": examples}
