"""The engine in a process of its own: the HTTP side and the decode loop on separate cores.

In one process, the server's event loop (SSE events, JSON, sockets) and the engine's thread
share one interpreter lock, so every decode step waits for the events of the step before;
measured at 16 streams on the tiny model, that made a token 8.5 ms instead of the step's
5 ms (bench/README.md, `vllm_compare.py`). vLLM splits its server the same way: an API
process and an engine-core process that talk through a pipe.

`ProcessEngine` has the Engine's caller side (`start`, `stop`, `submit`, `stats`), so the
server cannot tell them apart. The child runs the ordinary `Engine` on the same model: its
tensors are moved to shared memory and handed over, not copied. Per decode step the child
sends one message with every event of the step; the parent's reader thread hands them to the
streams, as the engine's own thread would. Requests are checked in the parent
(`check_request`), so a bad or oversized one is refused at once; a full queue too, counted
from the requests that have not produced their first event.

If the child dies (killed, out of memory), every open stream ends with an error and
`alive` turns false, so /ready answers 503 and a load balancer stops sending; new requests
are refused with EngineUnavailable.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
import weakref
from typing import Any

import torch
import torch.multiprocessing as mp

from lmforge.engine.scheduler import (
    Engine,
    EngineOverloaded,
    EngineUnavailable,
    GenerationRequest,
    check_limits,
    check_request,
)
from lmforge.engine.streams import RequestStream, TokenEvent, Wakes, wake
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer

START_TIMEOUT_S = 300.0  # spawning imports torch and lmforge again: seconds, not minutes


class _ProxyStream(RequestStream):
    """A request's stream in the parent: cancelling it (or dropping it) tells the child."""

    def __init__(self, request_id: str, outbox: queue.SimpleQueue):
        super().__init__(request_id)
        self._outbox = outbox

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self._outbox.put(("cancel", self.request_id))
        super().cancel()

    def __del__(self) -> None:
        # SimpleQueue.put is safe here: it is reentrant, and __del__ may run in any thread.
        if not self.cancelled.is_set() and not self._done:
            self._outbox.put(("cancel", self.request_id))
        self.cancelled.set()


class ProcessEngine:
    def __init__(self, model: Transformer, tok: Tokenizer, *, max_batch: int = 16,
                 max_queue: int = 256, max_tokens_in_flight: int | None = None,
                 threads: int | None = None):
        self.model, self.tok = model, tok
        self.vocab_size = model.design.vocab_size
        self.context = model.design.context_length
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_tokens = check_limits(max_batch, max_queue, max_tokens_in_flight, self.context)
        self.threads = threads or torch.get_num_threads()
        self.alive = False
        self._process: Any = None
        self._conn: Any = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # to the child, in order
        self._streams: weakref.WeakValueDictionary[str, RequestStream] = \
            weakref.WeakValueDictionary()
        self._unstarted: dict[str, threading.Event] = {}  # no event yet: the queue's count
        self._lock = threading.Lock()
        self._stats: dict = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ---- life -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._process is not None:
            return
        ctx = mp.get_context("spawn")  # never fork a process that runs torch's thread pools
        self._conn, child_conn = ctx.Pipe()
        self.model.__dict__.pop("_decode_weights", None)  # the child makes its own
        self.model.share_memory()  # handed over as shared memory, not pickled by value
        settings = {"max_batch": self.max_batch, "max_queue": self.max_queue,
                    "max_tokens_in_flight": self.max_tokens, "threads": self.threads}
        self._process = ctx.Process(target=_child_main, name="lmforge-engine", daemon=True,
                                    args=(child_conn, self.model, self.tok, settings))
        self._process.start()
        child_conn.close()  # so the parent sees EOF when the child dies
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise EngineUnavailable(f"the engine process did not start within "
                                    f"{START_TIMEOUT_S:g} s", hint="see the log above")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EngineUnavailable(f"the engine process exited while starting (exit code "
                                    f"{self._process.exitcode})",
                                    hint="its error is in the log above") from None
        if kind != "ready":  # ("failed", message): the child could not build its engine
            self._process.join(5)
            raise EngineUnavailable(f"the engine process could not start: {payload}")
        self._stats = payload
        self.alive = True
        for target, name in ((self._send_loop, "lmforge-engine-send"),
                             (self._read_loop, "lmforge-engine-read")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Abort every request (finish_reason "abort") and end the child."""
        if self._process is None:
            return
        self._stopping = True
        self._outbox.put(("stop", None))
        for t in self._threads:
            t.join(30)
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self.alive = False
        self._fail_open(None)  # anything the child could not answer any more

    def __enter__(self) -> ProcessEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the caller's side ----------------------------------------------------------------
    def submit(self, req: GenerationRequest) -> RequestStream:
        check_request(req, self.vocab_size, self.context, self.max_tokens)
        if not self.alive:
            raise EngineUnavailable("the engine process is not running",
                                    hint="restart the server")
        stream = _ProxyStream(req.request_id, self._outbox)
        with self._lock:
            waiting = sum(not ev.is_set() for ev in self._unstarted.values())
            if waiting >= self.max_queue:
                raise EngineOverloaded(f"{waiting} requests already wait",
                                       hint="retry in a moment")
            self._unstarted[req.request_id] = stream.cancelled
            self._streams[req.request_id] = stream
        self._outbox.put(("submit", req))
        return stream

    def stats(self) -> dict:
        return dict(self._stats)

    # ---- the parent's threads -------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            kind, payload = self._outbox.get()
            try:
                self._conn.send((kind, payload))
            except (OSError, ValueError):  # the child is gone; the reader reports it
                return
            if kind == "stop":
                return

    def _read_loop(self) -> None:
        try:
            while True:
                kind, payload = self._conn.recv()
                if kind == "stopped":
                    return
                events, stats = payload
                if stats is not None:
                    self._stats = stats
                self._deliver(events)
        except (EOFError, OSError):
            pass
        finally:
            self.alive = False
            if not self._stopping:
                self._fail_open(EngineUnavailable(
                    "the engine process ended unexpectedly", hint="restart the server"))
                self._outbox.put(("stop", None))  # ends the sender too

    def _deliver(self, events: list[tuple[str, TokenEvent | str]]) -> None:
        with self._lock:  # once per step's message, not per event
            targets = []
            for request_id, item in events:
                self._unstarted.pop(request_id, None)
                targets.append(self._streams.get(request_id))
                if isinstance(item, str) or item.finish_reason is not None:  # it ended
                    self._streams.pop(request_id, None)
        wakes: Wakes = {}
        for stream, (_, item) in zip(targets, events):
            if stream is not None:  # None: the client left and its stream is gone
                stream._put(LmforgeError(item) if isinstance(item, str) else item, wakes)
        wake(wakes)

    def _fail_open(self, error: BaseException | None) -> None:
        """End every stream still open: with `error`, or with an abort when stopping."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams = weakref.WeakValueDictionary()
            self._unstarted.clear()
        wakes: Wakes = {}
        for s in streams:
            s._put(error if error is not None else
                   TokenEvent(s.request_id, None, "", "abort"), wakes)
        wake(wakes)


class _ForwardingEngine(Engine):
    """The child's Engine: it holds the streams itself and sends each step's events to the
    parent in one message."""

    STATS_EVERY_S = 0.05

    def __init__(self, conn: Any, model: Transformer, tok: Tokenizer, **settings: Any):
        super().__init__(model, tok, **settings)
        self.conn = conn
        self.held: dict[str, RequestStream] = {}
        self.outbox: list[tuple[str, TokenEvent | str]] = []
        self.send_lock = threading.Lock()
        self._stats_at = 0.0

    def accept(self, req: GenerationRequest) -> None:
        try:
            self.held[req.request_id] = self.submit(req)
        except LmforgeError as e:  # checked in the parent; a full queue can still happen
            with self.send_lock:
                self.outbox.append((req.request_id, e.message))
            self._wake()

    def cancel(self, request_id: str) -> None:
        stream = self.held.get(request_id)
        if stream is not None:
            stream.cancel()

    def _send(self, a: Any, item: TokenEvent | BaseException) -> None:
        rid = a.req.request_id
        if isinstance(item, BaseException) or item.finish_reason is not None:
            self.held.pop(rid, None)
        payload = f"the engine failed: {item}" if isinstance(item, BaseException) else item
        with self.send_lock:
            self.outbox.append((rid, payload))

    def _wake(self) -> None:
        with self.send_lock:
            if not self.outbox:
                return
            events, self.outbox = self.outbox, []
            now = time.monotonic()
            stats = None
            if now - self._stats_at >= self.STATS_EVERY_S or not self._running:
                stats, self._stats_at = self.stats(), now
            try:
                self.conn.send(("events", (events, stats)))
            except (OSError, ValueError):  # the parent is gone: the main loop ends us
                pass


def _child_main(conn: Any, model: Transformer, tok: Tokenizer, settings: dict) -> None:
    # ^C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(settings.pop("threads"))
    try:
        engine = _ForwardingEngine(conn, model, tok, **settings)
        engine.start()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("failed", str(e)))
        return
    conn.send(("ready", engine.stats()))
    try:
        while True:
            kind, payload = conn.recv()
            if kind == "submit":
                engine.accept(payload)
            elif kind == "cancel":
                engine.cancel(payload)
            elif kind == "stop":
                break
    except (EOFError, OSError):  # the parent is gone
        pass
    engine.stop()  # every open request ends with "abort", sent before "stopped"
    engine._wake()
    try:
        with engine.send_lock:
            conn.send(("stopped", None))
    except (OSError, ValueError):
        pass
