"""`simulate-feedback`: users, simulated, so that a recipe can run stage 10 without people.

SIMULATED: the questions are held-out ones (default `pydocs-chat:heldout`, never in the SFT
data), the "users" are a reward model. Nothing here is what people said; a real deployment
collects the same records from its clients.

What it does, through the served model's own in-process server (lifecycle/serve_stage.py):
1. Each question is sent to /v1/chat/completions with `n` answers (default 2) at a
   temperature, so the answers land in the feedback store exactly as a client's would.
2. The reward model scores every answer.
3. Ratings are posted to /v1/feedback, the endpoint users call: thumbs up for the top third
   of all scores, thumbs down for the bottom third, nothing for the middle (most users rate
   little). Of each question's answers, the better scored is posted as the `preferred`
   answer on each worse one (a user picking one of two answers), when their texts differ.
The store then holds what real users would have produced, and `feedback-finetune` reads it
with its usual filters (spam, duplicates, refusals, ...).

The step registers a `feedback-simulation` artifact (report.json: the settings, counts and
every answer with its score and rating), whose parents are the model and the judge; being an
artifact, the step is skipped when run again, so the store does not get the same feedback
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.config import resolve_path
from lmforge.errors import LmforgeError
from lmforge.lifecycle.serve_stage import chat, check_answer, in_process_server
from lmforge.registry import Workspace, atomic_write_json
from lmforge.stage import Outcome, check_keys

KIND = "feedback-simulation"


@dataclass(frozen=True)
class SimulateFeedbackSettings:
    model: str  # the served model (id, alias, "@step")
    judge: str  # a reward-model artifact: the simulated users' taste
    prompts: tuple[str, ...] = ("pydocs-chat:heldout",)
    limit: int = 48  # questions asked
    n: int = 2  # answers per question (a pair to prefer between)
    temperature: float = 0.8
    max_tokens: int = 48
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> SimulateFeedbackSettings:
        check_keys(values, where, required=("model", "judge"),
                   optional=("prompts", "limit", "n", "temperature", "max_tokens", "seed"))
        values = dict(values)
        if "prompts" in values:
            listed = values["prompts"]
            values["prompts"] = tuple(resolve_path(str(p), base_dir) for p in (
                [listed] if isinstance(listed, str) else listed))
        s = cls(**values)
        if s.limit < 3:
            raise LmforgeError(f"{where}: limit must be at least 3 (thirds of the scores)",
                               hint="e.g. limit = 48")
        if not 1 <= s.n <= 16 or s.max_tokens < 1 or s.temperature < 0:
            raise LmforgeError(f"{where}: n must be 1..16, max_tokens at least 1, temperature "
                               "not negative")
        return s


def ratings(scores: list[float]) -> list[int | None]:
    """+1 for the top third of `scores`, -1 for the bottom third, None between (ties at a
    boundary fall in the middle, so equal answers are never rated both ways)."""
    low, high = np.quantile(scores, [1 / 3, 2 / 3])
    return [1 if x > high else -1 if x < low else None for x in scores]


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def run(ws: Workspace, s: SimulateFeedbackSettings, show_progress: bool = True) -> Outcome:
    from lmforge.data.prompts import load_prompts
    from lmforge.train.reward import load_reward_model

    rm = load_reward_model(ws, s.judge)
    chats = _spread(load_prompts(list(s.prompts)), s.limit)
    asked: list[dict[str, Any]] = []
    with in_process_server(ws, s.model, store_responses=True,
                           max_tokens=s.max_tokens) as (client, state):
        served_id = state.served.id
        for i, messages in enumerate(chats):
            answer = chat(client, state.served.name, messages, n=s.n,
                          max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed + i)
            asked.append({"id": answer["id"], "messages": messages,
                          "texts": check_answer(answer, s.n)})
        scores = rm.score_batch([(a["messages"], t) for a in asked for t in a["texts"]])
        rated = iter(ratings(scores))
        score_of = iter(scores)
        posted = {"up": 0, "down": 0, "preferred": 0}
        for a in asked:
            a["scores"] = [next(score_of) for _ in a["texts"]]
            a["ratings"] = [next(rated) for _ in a["texts"]]
            best = int(np.argmax(a["scores"]))
            for choice, (text, rating) in enumerate(zip(a["texts"], a["ratings"])):
                body: dict[str, Any] = {"response_id": a["id"], "choice": choice}
                if rating is not None:
                    body["rating"] = rating
                if choice != best and text != a["texts"][best]:
                    body["preferred"] = a["texts"][best]
                if len(body) == 2:
                    continue
                r = client.post("/v1/feedback", json=body)
                if r.status_code != 200:
                    raise LmforgeError(f"the server refused simulated feedback: "
                                       f"{r.status_code} {r.text[:200]}",
                                       hint="the feedback store may be read-only; see "
                                            "docs/feedback.md")
                posted["up"] += rating == 1
                posted["down"] += rating == -1
                posted["preferred"] += "preferred" in body
    report = {"simulated": True, "model": served_id, "judge": rm.ref,
              "settings": {"prompts": list(s.prompts), "limit": s.limit, "n": s.n,
                           "temperature": s.temperature, "max_tokens": s.max_tokens,
                           "seed": s.seed},
              "questions": len(asked), "answers": len(scores), "posted": posted,
              "mean_score": float(np.mean(scores)), "asked": asked}
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        art = ws.register(d, kind=KIND, stage="simulate-feedback",
                          parents={"model": served_id, "judge": rm.ref},
                          settings=report["settings"],
                          metrics={"questions": len(asked), **posted, "simulated": True},
                          name="simulated-feedback")
    line = (f"SIMULATED: {len(asked)} questions x {s.n} answers to {served_id}; "
            f"{posted['up']} up, {posted['down']} down, {posted['preferred']} preferred "
            f"(reward model {rm.ref})")
    return Outcome(art, line, report)
