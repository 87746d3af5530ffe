"""Continuous (iteration-level) batching: many requests share one decode loop.

A background thread owns a KV cache of `max_batch` rows. Running requests sit in rows
0..n-1, packed, so every decode step is one forward over exactly the running rows. Between
steps, waiting requests join (FIFO, while rows and the token budget allow): their prompts are
prefilled together straight into the free rows that follow, and they decode with the others
from the next step on. A request that ends (stop id, stop string, max tokens, cancel) leaves at
once: the last row's cache is moved into its slot, so the batch stays packed.

Greedy output equals `generate_tokens` for the same prompt; a seeded request samples from its
own generator, so its text does not depend on its neighbours. An exception in a step (the
model's, say) is raised from the streams of every request in that step; the loop goes on.
Prefill is not chunked: a long prompt that joins delays everyone's next token by its forward.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import deque
from dataclasses import dataclass

import torch

from lmforge.engine.sampling import SamplingParams, sample_next
from lmforge.engine.streams import RequestStream, StopText, TokenEvent, Wakes, wake
from lmforge.errors import LmforgeError
from lmforge.model.decode_step import decode_step, decode_weights
from lmforge.model.kv_cache import KVCache
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import StreamDecoder, Tokenizer

__all__ = ["Engine", "EngineOverloaded", "EngineUnavailable", "GenerationRequest",
           "RequestStream", "RequestTooLarge", "TokenEvent", "check_limits", "check_request"]


class EngineOverloaded(LmforgeError):
    """The waiting queue is full (HTTP 503): retry later."""


class EngineUnavailable(LmforgeError):
    """The engine cannot take requests: its process ended (HTTP 503)."""


class RequestTooLarge(LmforgeError):
    """The request can never fit: prompt beyond the context, or over the token budget (413)."""


@dataclass
class GenerationRequest:
    prompt: list[int]  # token ids, chat template already applied
    params: SamplingParams
    stop_ids: tuple[int, ...] = ()  # ends after emitting one (reported, its text not shown)
    stop_strings: tuple[str, ...] = ()  # text ends before the first one, finish_reason "stop"
    request_id: str = ""  # filled by the engine when empty


@dataclass(eq=False)
class _Active:
    """A request the engine holds: its stream (weakly, so an abandoned one can go), and its
    decoding state once it has a row."""
    req: GenerationRequest
    stream: weakref.ref
    cancelled: threading.Event
    budget: int  # new tokens at most: max_new_tokens, cut at the context's end
    decoder: StreamDecoder
    stop_text: StopText
    generator: torch.Generator | None = None
    produced: int = 0
    pending: int = 0  # the last sampled token, fed to the next decode step
    finished: bool = False

    @property
    def tokens(self) -> int:  # what it costs the budget: its prompt and every token it may add
        return len(self.req.prompt) + self.budget


def check_limits(max_batch: int, max_queue: int, max_tokens_in_flight: int | None,
                 context: int) -> int:
    """Refuse limits an engine cannot run with; return its token budget in flight (prompts
    and new tokens of the running requests: a full batch of full contexts unless given)."""
    if max_batch < 1 or max_queue < 0:
        raise LmforgeError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} "
                           f"and {max_queue}", hint="e.g. max_batch=16, max_queue=256")
    return max_tokens_in_flight or max_batch * context


def check_request(req: GenerationRequest, vocab_size: int, context: int,
                  max_tokens_in_flight: int) -> int:
    """Refuse a request that can never run (LmforgeError, or RequestTooLarge for 413); give it
    an id if it has none; return its budget of new tokens (max_new_tokens, cut at the
    context's end)."""
    n = len(req.prompt)
    if n == 0:
        raise LmforgeError("the prompt is empty", hint="send at least one token")
    if n >= context:
        raise RequestTooLarge(f"the prompt has {n} tokens; the model's context is {context}",
                              hint="shorten the prompt")
    if min(req.prompt) < 0 or max(req.prompt) >= vocab_size:
        raise LmforgeError(f"prompt token ids must be in 0..{vocab_size - 1}",
                           hint="encode the text with the model's tokenizer")
    if any(not s for s in req.stop_strings):
        raise LmforgeError("an empty stop string", hint="leave it out")
    budget = min(req.params.max_new_tokens, context - n)
    if n + budget > max_tokens_in_flight:
        raise RequestTooLarge(f"prompt and max tokens need {n + budget} tokens; the engine "
                              f"holds {max_tokens_in_flight} in flight",
                              hint="lower max_tokens or shorten the prompt")
    req.request_id = req.request_id or f"req-{uuid.uuid4().hex[:16]}"
    return budget


def _rows(cache: KVCache, start: int, stop: int) -> KVCache:
    """A KVCache over rows start..stop of `cache` that writes into it (views, not copies):
    a forward over just these rows reads and extends their history in place."""
    view = KVCache.__new__(KVCache)
    view.keys, view.values = cache.keys[:, start:stop], cache.values[:, start:stop]
    view.lengths, view.max_length = cache.lengths[start:stop], cache.max_length
    return view


class Engine:
    def __init__(self, model: Transformer, tok: Tokenizer, *, max_batch: int = 16,
                 max_queue: int = 256, max_tokens_in_flight: int | None = None):
        self.model, self.tok = model, tok
        self.context = model.design.context_length
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_tokens = check_limits(max_batch, max_queue, max_tokens_in_flight, self.context)
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch, self.context)
        self._waiting: deque[_Active] = deque()
        self._running: list[_Active] = []  # index = cache row
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wakes: Wakes = {}  # async readers to wake once the step's events are out
        # Every key exists from the start, so stats() can copy it while the loop counts.
        self._counts = dict.fromkeys(["steps", "prompt_tokens", "generation_tokens", "end:stop",
                                      "end:length", "end:abort", "end:error"], 0)

    # ---- the caller's side ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Abort every request (finish_reason "abort") and end the loop thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._abort_all()  # also covers requests submitted to an engine never started

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def submit(self, req: GenerationRequest) -> RequestStream:
        budget = check_request(req, self.model.design.vocab_size, self.context, self.max_tokens)
        stream = RequestStream(req.request_id)
        active = _Active(req, weakref.ref(stream), stream.cancelled, budget,
                         StreamDecoder(self.tok, skip_special=True), StopText(req.stop_strings))
        with self._cond:
            if self._stopping:
                raise LmforgeError("the engine is stopped", hint="start a new Engine")
            waiting = sum(not a.cancelled.is_set() for a in self._waiting)
            if waiting >= self.max_queue:
                raise EngineOverloaded(f"{waiting} requests already wait",
                                       hint="retry in a moment")
            self._waiting.append(active)
            self._cond.notify()
        return stream

    def stats(self) -> dict:
        running = [a for a in self._running if not a.finished]  # ended ones may not have left
        waiting = sum(not a.cancelled.is_set() for a in list(self._waiting))
        return {"running": len(running), "waiting": waiting,
                "max_batch": self.max_batch, "tokens_in_flight": sum(a.tokens for a in running),
                "max_tokens_in_flight": self.max_tokens, "steps": self._counts["steps"],
                "prompt_tokens": self._counts["prompt_tokens"],
                "generation_tokens": self._counts["generation_tokens"],
                "finished": {k[4:]: v for k, v in self._counts.items() if k.startswith("end:")}}

    # ---- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                self._loop()
        except BaseException as e:  # a bug in the loop itself: nobody may wait forever
            with self._cond:
                self._stopping = True
                pending = self._running + list(self._waiting)
                self._running, self._waiting = [], deque()
            self._fail(pending, e)
            self._wake()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._running or self._waiting):
                    self._cond.wait()
                if self._stopping:
                    return
                joining = self._admit()
            try:
                self._step(joining)
            except Exception as e:  # every request of the failed step hears of it
                self._fail(self._running + joining, e)
                self._running = []
                self.cache.reset()
            self._wake()

    def _fail(self, requests: list[_Active], error: BaseException) -> None:
        for a in requests:
            if not a.finished:  # joiners may be listed twice
                a.finished = True
                self._counts["end:error"] += 1
                self._send(a, error)

    def _admit(self) -> list[_Active]:
        """Pop the requests that join now: FIFO, while a row is free and the budget allows."""
        joining: list[_Active] = []
        in_flight = sum(a.tokens for a in self._running)
        if any(a.cancelled.is_set() for a in self._waiting):  # a queue place is not kept
            for a in [a for a in self._waiting if a.cancelled.is_set()]:
                self._finish(a, None, "", "abort")
            self._waiting = deque(a for a in self._waiting if not a.finished)
        while self._waiting and len(self._running) + len(joining) < self.max_batch:
            head = self._waiting[0]
            if in_flight + head.tokens > self.max_tokens:
                break  # the head waits for room; nobody overtakes it
            joining.append(self._waiting.popleft())
            in_flight += head.tokens
        return joining

    def _step(self, joining: list[_Active]) -> None:
        for a in self._running:
            if a.cancelled.is_set():
                self._finish(a, None, "", "abort")
        self._leave()
        if joining:
            self._prefill(joining)
        if self._running:
            rows = _rows(self.cache, 0, len(self._running))
            fast = decode_weights(self.model)  # fused weights of a small model, else None
            if fast is not None:
                # Each row holds its prompt and every token it produced but the pending one.
                ends = [len(a.req.prompt) + a.produced for a in self._running]
                token = torch.tensor([a.pending for a in self._running], device=self.device)
                logits = decode_step(self.model, fast, token, rows, ends)
            else:
                ids = torch.tensor([[a.pending] for a in self._running], device=self.device)
                logits = self.model.lm_head(self.model.hidden(ids, rows)[:, -1])
            self._take(self._running, logits)
            self._counts["steps"] += 1

    def _prefill(self, joining: list[_Active]) -> None:
        """Prompts right-padded into one forward, written straight into rows n..n+k-1."""
        n, lengths = len(self._running), [len(a.req.prompt) for a in joining]
        ids = torch.zeros(len(joining), max(lengths), dtype=torch.long, device=self.device)
        for r, a in enumerate(joining):
            ids[r, :lengths[r]] = torch.tensor(a.req.prompt, device=self.device)
            seed = a.req.params.seed
            if seed is not None:
                a.generator = torch.Generator(device=self.device).manual_seed(seed)
        real = torch.tensor(lengths, device=self.device)
        hidden = self.model.hidden(ids, _rows(self.cache, n, n + len(joining)), lengths=real)
        last = hidden[torch.arange(len(joining), device=self.device), real - 1]
        self._running.extend(joining)
        self._counts["prompt_tokens"] += sum(lengths)
        self._take(joining, self.model.lm_head(last))

    def _take(self, rows: list[_Active], logits: torch.Tensor) -> None:
        """Sample one token per row (greedy rows in one argmax), hand it out, let ended rows
        leave."""
        tokens = logits.argmax(dim=-1).tolist()
        for i, a in enumerate(rows):
            if a.req.params.temperature > 0:
                tokens[i] = int(sample_next(logits[i:i + 1], a.req.params, a.generator)[0])
        for a, token in zip(rows, tokens):
            self._emit(a, token)
        self._wake()
        self._leave()

    def _emit(self, a: _Active, token: int) -> None:
        a.produced += 1
        a.pending = token
        self._counts["generation_tokens"] += 1
        if token in a.req.stop_ids:  # reported, but its text is not shown
            text, _ = a.stop_text.finish(a.decoder.flush())
            return self._finish(a, token, text, "stop")
        text, hit = a.stop_text.add(a.decoder.add(token))
        if hit:
            return self._finish(a, token, text, "stop")
        if a.produced >= a.budget:
            rest, hit = a.stop_text.finish(a.decoder.flush())
            return self._finish(a, token, text + rest, "stop" if hit else "length")
        self._send(a, TokenEvent(a.req.request_id, token, text, None, len(a.req.prompt),
                                 a.produced))

    def _finish(self, a: _Active, token: int | None, text: str, reason: str) -> None:
        a.finished = True
        self._counts[f"end:{reason}"] += 1
        self._send(a, TokenEvent(a.req.request_id, token, text, reason, len(a.req.prompt),
                                 a.produced))

    def _send(self, a: _Active, item: TokenEvent | BaseException) -> None:
        stream = a.stream()
        if stream is not None:
            stream._put(item, self._wakes)

    def _wake(self) -> None:
        wakes, self._wakes = self._wakes, {}
        wake(wakes)

    def _leave(self) -> None:
        """Drop finished rows; the last running row moves into each freed slot."""
        rows, cache = self._running, self.cache
        for i in reversed([i for i, a in enumerate(rows) if a.finished]):
            last = len(rows) - 1
            if i != last:
                end = int(cache.lengths[last])
                cache.keys[:, i, :, :end] = cache.keys[:, last, :, :end]
                cache.values[:, i, :, :end] = cache.values[:, last, :, :end]
                cache.lengths[i] = end
                rows[i] = rows[last]
            cache.reset(last)
            rows.pop()

    def _abort_all(self) -> None:
        with self._cond:
            pending = self._running + list(self._waiting)
            self._running, self._waiting = [], deque()
        for a in pending:
            if not a.finished:
                self._finish(a, None, "", "abort")
        self._wake()

