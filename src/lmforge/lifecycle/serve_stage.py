"""`serve-smoke`: start the server in-process on a registered model and send it one chat
completion, as a deployment's first check. The very app `lmforge serve` runs (routes,
middleware, engine, lifecycle headers), driven by Starlette's TestClient: no port is opened,
so a recipe can run it anywhere.

`in_process_server` is shared with the feedback simulation (lifecycle/feedback_sim.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.degenerate import repeated_character
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace, atomic_write_json
from lmforge.stage import Outcome, check_keys

FINISHED = ("stop", "length")
REPORT_KIND = "smoke-report"


@contextmanager
def in_process_server(ws: Workspace, model: str, *, store_responses: bool,
                      max_tokens: int = 512) -> Iterator[tuple[Any, Any]]:
    """(a TestClient on the app serving `model`, the server's state). A model that cannot
    answer chat completions (no chat template) is refused before the server starts."""
    from fastapi.testclient import TestClient

    from lmforge.serve.app import build_state, create_app
    from lmforge.serve.config import ServeConfig

    cfg = ServeConfig(model=model, workspace=str(ws.root), store_responses=store_responses,
                      max_tokens=max(max_tokens, 1))
    state = build_state(cfg, ws)
    if state.served.chat_problem:
        raise LmforgeError(f"cannot serve chat completions: {state.served.chat_problem}",
                           hint="serve a tuned chat model (an `sft` step's output, or a "
                                "model after it); a base model only continues text")
    with TestClient(create_app(state)) as client:
        yield client, state


def chat(client: Any, model: str, messages: list[dict], **body: Any) -> dict[str, Any]:
    """One /v1/chat/completions request; its JSON, or LmforgeError with the server's error."""
    r = client.post("/v1/chat/completions", json={"model": model, "messages": messages,
                                                  **body})
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        raise LmforgeError(f"the server answered {r.status_code}: {message}",
                           hint="`lmforge serve MODEL` and the same request show it live")
    return r.json()


def check_answer(answer: dict[str, Any], n: int = 1) -> list[str]:
    """The choices' texts, or LmforgeError naming what is malformed."""
    problems = []
    if answer.get("object") != "chat.completion" or not str(answer.get("id", "")):
        problems.append("no chat.completion object with an id")
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        problems.append(f"expected {n} choice(s), got {choices!r:.80}")
        choices = []
    texts = []
    for c in choices:
        message = c.get("message") or {}
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            problems.append(f"choice {c.get('index')} has no assistant text")
        if c.get("finish_reason") not in FINISHED:
            problems.append(f"choice {c.get('index')} finished with {c.get('finish_reason')!r}")
        texts.append(str(message.get("content", "")))
    usage = answer.get("usage") or {}
    if not usage.get("completion_tokens"):
        problems.append("usage counts no completion tokens")
    if problems:
        raise LmforgeError("the server's answer is malformed: " + "; ".join(problems),
                           hint="the engine or the chat template is broken; "
                                "`lmforge chat MODEL` shows what the model writes")
    return texts


@dataclass(frozen=True)
class ServeSmokeSettings:
    model: str
    prompt: str = "What does os.path.join do?"
    max_tokens: int = 48
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> ServeSmokeSettings:
        check_keys(values, where, required=("model",), optional=("prompt", "max_tokens",
                                                                 "seed"))
        s = cls(**values)
        if s.max_tokens < 1:
            raise LmforgeError(f"{where}: max_tokens must be at least 1")
        return s


def run(ws: Workspace, s: ServeSmokeSettings, show_progress: bool = True) -> Outcome:
    """One request, answered well-formed and not stuck on one character; its latency,
    registered as a `smoke-report` on the model (so a recipe run again skips it, as it would
    skip a model retired since). The answer is not put in the feedback store: the smoke test
    is not a user."""
    with in_process_server(ws, s.model, store_responses=False,
                           max_tokens=s.max_tokens) as (client, state):
        ready = client.get("/ready")
        if ready.status_code != 200:
            raise LmforgeError(f"the server is not ready: {ready.status_code} {ready.text}",
                               hint="`lmforge serve MODEL` shows why")
        start = time.perf_counter()
        answer = chat(client, state.served.name, [{"role": "user", "content": s.prompt}],
                      max_tokens=s.max_tokens, temperature=0.0, seed=s.seed)
        latency = time.perf_counter() - start
        text = check_answer(answer)[0]
    stuck = repeated_character(text)
    if stuck is not None:
        raise LmforgeError(f"the deployed model answered {s.prompt!r} with {stuck!r} repeated "
                           f"({' '.join(text.split())[:40]!r}…): it serves well-formed but "
                           "broken replies",
                           hint=f"`lmforge chat {state.served.id} --temperature 0` shows it; "
                                "compare the models of its lineage (`lmforge registry "
                                "lineage`) to find the tuning step that broke it")
    tokens = answer["usage"]["completion_tokens"]
    finish = answer["choices"][0]["finish_reason"]
    report = {"model": state.served.id, "prompt": s.prompt, "status": 200,
              "latency_s": latency, "completion_tokens": tokens, "finish_reason": finish,
              "answer": text, "settings": {"max_tokens": s.max_tokens, "seed": s.seed}}
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        art = ws.register(d, kind=REPORT_KIND, stage="serve-smoke",
                          parents={"model": state.served.id}, settings=report["settings"],
                          metrics={"latency_s": round(latency, 4), "completion_tokens": tokens})
    shown = " ".join(text.split())
    return Outcome(art, f"200 in {latency * 1000:.0f} ms, {tokens} tokens ({finish}): "
                        f"{shown[:60]!r}", details=report)
