"""One HTTP request's generations on the engine: `n` choices for each prompt submitted as
separate engine requests (seeds seed, seed+1, ...), their events merged in arrival order,
bounded by the request's deadline, cancelled together, and timed for /metrics. Output
guardrails watch each choice's text here; a request an input rule refused gets its refusal
here too, without the engine."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.engine.sampling import SamplingParams
from lmforge.engine.scheduler import (
    EngineOverloaded,
    EngineUnavailable,
    GenerationRequest,
    RequestTooLarge,
    TokenEvent,
)
from lmforge.errors import LmforgeError
from lmforge.guardrails import Guardrails, Match, OutputWatch
from lmforge.serve.errors import APIError, bad_request
from lmforge.serve.metrics import Metrics


@dataclass
class Choice:
    """One engine request: choice `index` of the HTTP response."""

    index: int
    stream: Any  # RequestStream; held here, since the engine holds it only weakly
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_at: float | None = None
    gauge: str | None = None  # which of /metrics' gauges counts it: waiting, running, none
    watch: OutputWatch | None = None  # output guardrails over its text

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def timeout_error(seconds: float) -> APIError:
    return APIError(503, f"The request did not finish within this server's limit of "
                         f"{seconds:g} s; retry, or ask for fewer tokens.", code="timeout",
                    headers={"Retry-After": "1"})


class Generation:
    """The choices of one request. Use `submit`, then `events()` (or `collect()`), and
    always `close()` (a finally) so nothing keeps generating for a client that left."""

    def __init__(self, engine: Any, metrics: Metrics, *, arrived: float, timeout_s: float,
                 guardrails: Guardrails | None = None,
                 on_hit: Callable[[Match], None] | None = None):
        self.engine, self.metrics = engine, metrics
        self.guardrails, self.on_hit = guardrails, on_hit  # on_hit: counts and logs a hit
        self.arrived, self.timeout_s = arrived, timeout_s
        self.deadline = arrived + timeout_s
        self.choices: list[Choice] = []
        self._tasks: list[asyncio.Task] = []
        self._label = metrics.model_name

    def submit(self, prompts: list[list[int]], params: SamplingParams, n: int,
               stop_ids: tuple[int, ...], stop_strings: tuple[str, ...]) -> None:
        """Queue every choice; all or none (a full queue cancels those already queued)."""
        try:
            for prompt in prompts:
                for j in range(n):
                    seed = None if params.seed is None else params.seed + j
                    req = GenerationRequest(list(prompt), dataclasses.replace(params, seed=seed),
                                            stop_ids, stop_strings)
                    stream = self.engine.submit(req)
                    watch = self.guardrails.watch() if self.guardrails is not None and \
                        self.guardrails.output else None
                    choice = Choice(len(self.choices), stream, watch=watch)
                    self.choices.append(choice)
                    self._move(choice, "waiting")
        except EngineOverloaded:
            self.close()
            raise APIError(503, "The server is overloaded: too many requests are waiting. "
                                "Retry in a moment.", code="overloaded",
                           headers={"Retry-After": "1"}) from None
        except EngineUnavailable as e:
            self.close()
            raise APIError(503, f"The server cannot generate: {e.message}.",
                           code="engine_unavailable") from None
        except RequestTooLarge as e:
            self.close()
            raise APIError(413, e.message, param="max_tokens", code="request_too_large"
                           ) from None
        except LmforgeError as e:
            self.close()
            raise bad_request(e.message) from None

    def refuse(self, count: int, match: Match) -> None:
        """Answer `count` choices with an input rule's refusal instead of generating: each
        ends with finish_reason "content_filter" and no completion tokens."""
        for _ in range(count):
            self.choices.append(Choice(len(self.choices), None, [match.refusal],
                                       "content_filter"))

    def _screen(self, choice: Choice, event: TokenEvent) -> TokenEvent:
        """The event as passed on, after the choice's output rules saw its text. A match
        ends the choice: its engine request is cancelled, the text that completed the match
        is not passed on, and it finishes with "content_filter" (the whole answer's text
        becomes the rule's refusal; a stream's earlier text was sent already)."""
        assert choice.watch is not None
        hit = choice.watch.feed(event.text, final=event.finish_reason is not None)
        if hit is None:
            return event
        choice.stream.cancel()  # a no-op when the engine had finished it
        choice.pieces = [hit.refusal]
        if self.on_hit is not None:
            self.on_hit(hit)
        return dataclasses.replace(event, token=None, text="", finish_reason="content_filter")

    def _move(self, choice: Choice, gauge: str | None) -> None:
        """Count `choice` under another gauge (idempotent: a second move to None is a no-op)."""
        gauges = {"waiting": self.metrics.waiting, "running": self.metrics.running}
        if choice.gauge is not None:
            gauges[choice.gauge].labels(self._label).dec()
        if gauge is not None:
            gauges[gauge].labels(self._label).inc()
        choice.gauge = gauge

    async def _pump(self, choice: Choice, out: asyncio.Queue) -> None:
        """Forward one choice's events to the merged queue, timing it."""
        try:
            # Behind the engine, the tokens that wait go out as one chunk; not under output
            # guardrails, which hold back exactly the piece that completes a match.
            events = choice.stream if choice.watch is not None else choice.stream.merged()
            async for event in events:
                if choice.first_at is None:
                    choice.first_at = time.monotonic()
                    self._move(choice, "running")
                    self.metrics.ttft.labels(self._label).observe(choice.first_at
                                                                  - self.arrived)
                await out.put((choice, event))
                if event.finish_reason is not None:
                    break
        except Exception as e:  # noqa: BLE001 - an engine error reaches the request
            await out.put((choice, e))
        finally:
            self._move(choice, None)

    def _observe_end(self, choice: Choice) -> None:
        now, label, m = time.monotonic(), self._label, self.metrics
        m.e2e.labels(label).observe(now - self.arrived)
        m.prompt_tokens.labels(label).inc(choice.prompt_tokens)
        m.generation_tokens.labels(label).inc(choice.completion_tokens)
        m.success.labels(label, choice.finish_reason or "abort").inc()
        if choice.first_at is not None and choice.completion_tokens > 1:
            m.tpot.labels(label).observe((now - choice.first_at)
                                         / (choice.completion_tokens - 1))

    async def events(self) -> AsyncIterator[tuple[Choice, TokenEvent]]:
        """(choice, event) as they come, each choice's ending one last; raises the 503 of a
        timeout, or an engine error."""
        for c in self.choices:
            if c.stream is None:  # refused before generating: the refusal is all of it
                yield c, TokenEvent(f"refused-{c.index}", None, c.text, c.finish_reason)
        live = [c for c in self.choices if c.stream is not None]
        # Bounded: a choice whose events the client has not taken yet waits in its pump,
        # where the events that arrive meanwhile merge into one chunk.
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, len(live)))
        self._tasks = [asyncio.create_task(self._pump(c, queue)) for c in live]
        open_choices = len(live)
        while open_choices:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise timeout_error(self.timeout_s)
            try:
                choice, item = await asyncio.wait_for(queue.get(), remaining)
            except asyncio.TimeoutError:
                raise timeout_error(self.timeout_s) from None
            if choice.finish_reason is not None:
                continue  # a choice a guardrail ended: the last events of its engine request
            if isinstance(item, BaseException):
                raise item
            if choice.watch is not None:
                item = self._screen(choice, item)
            choice.pieces.append(item.text)
            choice.prompt_tokens = item.prompt_tokens or choice.prompt_tokens
            choice.completion_tokens = item.completion_tokens or choice.completion_tokens
            if item.finish_reason is not None:
                choice.finish_reason = item.finish_reason
                open_choices -= 1
                self._observe_end(choice)
            yield choice, item

    async def collect(self) -> list[Choice]:
        async for _ in self.events():
            pass
        return self.choices

    def close(self) -> None:
        """Cancel whatever is still generating (a no-op for finished choices)."""
        for c in self.choices:
            if c.finish_reason is None:
                c.stream.cancel()
                c.finish_reason = "abort"
                self.metrics.success.labels(self._label, "abort").inc()
            self._move(c, None)
        for t in self._tasks:
            t.cancel()

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}
