"""What red teaming attacks: a local model artifact (or model folder), or any OpenAI-compatible
`/v1/chat/completions` endpoint (`lmforge serve`, vLLM, a hosted API).

A target answers a batch of conversations with one `Reply` each: the text, or why there is
none (a timeout, a refused connection, an HTTP error, a body that is not JSON or not UTF-8, a
prompt too long for the model's context). One failed attempt never stops the run: it is
reported with its reason and counted as unjudged.

An endpoint is called from a thread pool (`concurrency` requests in flight). A busy answer
(HTTP 429 or 503) is retried up to RETRIES times, after its Retry-After or a backoff. After
`GIVE_UP_AFTER` connection failures in a row (nothing listening, a wrong host) the remaining
attempts are not sent: each is reported as unjudged with that reason, so an unreachable URL
ends the run in seconds rather than after a timeout per attempt.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError

GIVE_UP_AFTER = 8
RETRIES = 3  # a busy endpoint (429, 503) is asked again, after Retry-After or a backoff
MAX_WAIT = 10.0


def _wait(retry_after: str | None, retry: int) -> float:
    """Seconds to wait before asking a busy endpoint again: its Retry-After (seconds), else
    0.5, 1, 2 ...; at most MAX_WAIT."""
    try:
        wait = float(retry_after) if retry_after is not None else 0.5 * 2 ** retry
    except ValueError:
        wait = 0.5 * 2 ** retry
    return max(0.0, min(wait, MAX_WAIT))


@dataclass
class Reply:
    text: str | None
    error: str | None = None


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


class LocalTarget:
    """A model artifact (or model folder, or LoRA adapter) answering with the engine:
    batched, KV-cached, greedy unless a temperature is given (attempt i sampled with seed
    seed + i)."""

    def __init__(self, ws: Any, ref: str, device: str = "auto", max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, batch_size: int = 16):
        from lmforge.eval.judge import _load
        from lmforge.runtime import resolve_device

        self.model, self.tok, self.model_id = _load(ws, ref, resolve_device(device))
        self.name = self.model_id
        self.weights_sha256 = _weights_sha256(ws, ref, self.model_id)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.seed, self.batch_size = seed, batch_size

    def answer(self, conversations: Sequence[list[dict[str, str]]], first_index: int = 0,
               done: Callable[[int], None] | None = None) -> list[Reply]:
        from lmforge.engine.generate import generate_batch
        from lmforge.engine.sampling import SamplingParams

        tok, context = self.tok, self.model.design.context_length
        room = context - self.max_new_tokens
        replies: list[Reply | None] = [None] * len(conversations)
        todo: list[tuple[int, list[int]]] = []
        for i, conv in enumerate(conversations):
            ids = tok.render_chat(conv, add_generation_prompt=True)[0]
            if len(ids) > room:
                replies[i] = Reply(None, f"prompt of {len(ids)} tokens leaves no room for a "
                                         f"{self.max_new_tokens}-token answer in the model's "
                                         f"context of {context}")
            else:
                todo.append((i, ids))
        if done and len(todo) < len(conversations):
            done(len(conversations) - len(todo))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            params = [SamplingParams(temperature=self.temperature,
                                     max_new_tokens=self.max_new_tokens,
                                     seed=self.seed + first_index + i) for i, _ in chunk]
            try:
                outs = generate_batch(self.model, [ids for _, ids in chunk], params,
                                      stop_ids=(tok.end_id, tok.eos_id))
            except (RuntimeError, ValueError, LmforgeError) as e:  # out of memory, a bad id
                for i, _ in chunk:
                    replies[i] = Reply(None, f"generation failed ({e.__class__.__name__}: "
                                             f"{str(e)[:120]})")
            else:
                for (i, _), out in zip(chunk, outs):
                    replies[i] = Reply(tok.decode(out, skip_special=True).strip())
            if done:
                done(len(chunk))
        return [r if r is not None else Reply(None, "no answer") for r in replies]


def _weights_sha256(ws: Any, ref: str, model_id: str) -> str | None:
    """The sha256 of the weights attacked (an artifact's recorded hash, or the folder's file
    hashed), so the report names the exact weights even outside the registry."""
    import hashlib
    from pathlib import Path

    if not Path(ref).is_dir():
        files = ws.resolve(model_id, verify=False).files
        for name in ("model.safetensors", "adapter_model.safetensors"):
            if name in files:
                return files[name]["sha256"]
        return None
    path = Path(ref) / "model.safetensors"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EndpointTarget:
    """An OpenAI-compatible server. `model` defaults to the first id of its /v1/models."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 timeout: float = 60.0, concurrency: int = 4):
        import httpx

        if concurrency < 1 or timeout <= 0:
            raise LmforgeError("concurrency must be at least 1 and timeout positive")
        base = url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            if base.endswith(suffix):
                base = base[:-len(suffix)]
        self.base, self.url = base, url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.concurrency = concurrency
        self.model_id = None  # no artifact: an endpoint's report has no model parent
        self.weights_sha256 = None
        self.name = model or self._first_model() or "default"
        self._failures = 0
        self._lock = threading.Lock()

    def _first_model(self) -> str | None:
        try:
            r = self.client.get(f"{self.base}/v1/models")
            data = r.json()["data"]
            return str(data[0]["id"]) if data else None
        except Exception:  # noqa: BLE001 - any failure: fall back to "default"
            return None

    def _one(self, i: int, conv: list[dict[str, str]]) -> Reply:
        import httpx

        with self._lock:
            if self._failures >= GIVE_UP_AFTER:
                return Reply(None, f"not sent: endpoint unreachable ({GIVE_UP_AFTER} "
                                   "connection failures in a row)")
        body = {"model": self.name, "messages": conv, "max_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed + i}
        for retry in range(RETRIES + 1):
            try:
                r = self.client.post(f"{self.base}/v1/chat/completions", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                with self._lock:
                    self._failures += 1
                return Reply(None, f"cannot connect to {self.base} ({e.__class__.__name__})")
            except httpx.TimeoutException:
                return Reply(None, "timed out")
            except httpx.HTTPError as e:
                return Reply(None, f"request failed ({e.__class__.__name__}: {e})")
            with self._lock:
                self._failures = 0
            if r.status_code not in (429, 503) or retry == RETRIES:
                return parse_reply(r.status_code, r.content)
            time.sleep(_wait(r.headers.get("retry-after"), retry))
        raise AssertionError("unreachable")

    def answer(self, conversations: Sequence[list[dict[str, str]]], first_index: int = 0,
               done: Callable[[int], None] | None = None) -> list[Reply]:
        def one(args: tuple[int, list[dict[str, str]]]) -> Reply:
            reply = self._one(first_index + args[0], args[1])
            if done:
                done(1)
            return reply

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, enumerate(conversations)))

    def close(self) -> None:
        self.client.close()


def parse_reply(status: int, raw: bytes) -> Reply:
    """A chat completion's text from a response body, or why there is none."""
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reply(None, "answer is not valid UTF-8")
    if status != 200:
        return Reply(None, f"HTTP {status}: {body[:120]}")
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Reply(None, "malformed response (no choices[0].message)")
    if content is not None and not isinstance(content, str):
        return Reply(None, "malformed response (content is not text)")
    return Reply(content)


def open_target(ws: Any, ref: str, *, device: str = "auto", max_new_tokens: int = 64,
                temperature: float = 0.0, seed: int = 0, endpoint_model: str | None = None,
                api_key: str | None = None, timeout: float = 60.0, concurrency: int = 4
                ) -> LocalTarget | EndpointTarget:
    if is_url(ref):
        return EndpointTarget(ref, endpoint_model, api_key, max_new_tokens, temperature, seed,
                              timeout, concurrency)
    return LocalTarget(ws, ref, device, max_new_tokens, temperature, seed)
