"""The engine's side doors: a request's event stream (read from a thread or an asyncio loop)
and the text filter that hides stop strings.

The scheduler (engine/scheduler.py) runs on its own thread and only ever calls `_put`; the
consumer iterates the stream, blocking or async, and may cancel it at any time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass


@dataclass
class TokenEvent:
    request_id: str
    token: int | None  # None on a final event that brings no new token
    text: str  # newly released text, whole characters only; may be ""
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort" at the end
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestStream:
    """The events of one request, in order, ending with one that has a finish_reason.

    `for event in stream` blocks the calling thread; `async for event in stream` awaits
    without blocking the event loop. An error inside the engine is raised from either. Leaving
    the loop early, cancel(), or dropping the stream frees the request's batch row.
    """

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.cancelled = threading.Event()
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._done = False

    def cancel(self) -> None:
        """Stop generating; the stream ends with finish_reason "abort" (unless already done)."""
        self.cancelled.set()

    def __del__(self) -> None:
        self.cancelled.set()  # an abandoned stream must not hold a row

    def _put(self, item: TokenEvent | BaseException, wakes: Wakes | None = None) -> None:
        """Engine thread: hand over an event, or the exception that ended the request. With
        `wakes`, an async reader is only noted there, for one wake-up per loop (`wake`)."""
        self._items.put(item)
        with self._lock:
            waker = self._waker
        if waker is not None:
            if wakes is None:
                wake({waker[0]: [self]})
            else:
                wakes.setdefault(waker[0], []).append(self)

    def _unpack(self, item: TokenEvent | BaseException) -> TokenEvent:
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.finish_reason is not None
        return item

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            while not self._done:
                yield self._unpack(self._items.get())
        finally:
            if not self._done:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        ready = asyncio.Event()
        with self._lock:
            self._waker = (asyncio.get_running_loop(), ready)
        try:
            while not self._done:
                ready.clear()  # before looking: a put after this look sets it again
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    await ready.wait()
                    continue
                yield self._unpack(item)
        finally:
            if not self._done:  # the client went away (or the task was cancelled)
                self.cancel()

    async def merged(self) -> AsyncIterator[TokenEvent]:
        """`async for`, with the events already waiting merged into one (texts joined; the
        last one's token, counts and finish reason): a reader that fell behind the engine
        catches up in one step instead of one per token, as vLLM's server does. A reader
        that keeps up still gets one event per token."""
        async for event in self:
            while event.finish_reason is None:
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    break
                nxt = self._unpack(item)  # an engine error ends the request: raised here
                event = TokenEvent(event.request_id, nxt.token, event.text + nxt.text,
                                   nxt.finish_reason, nxt.prompt_tokens, nxt.completion_tokens)
            yield event


Wakes = dict[asyncio.AbstractEventLoop, list[RequestStream]]


def wake(wakes: Wakes) -> None:
    """Wake the async readers of these streams: one call into each event loop, so a decode
    step costs every loop one wake-up, not one per stream."""
    for loop, streams in wakes.items():
        try:
            loop.call_soon_threadsafe(_set_ready, streams)
        except RuntimeError:  # the loop is closed: nobody is listening
            for stream in streams:
                stream.cancel()


def _set_ready(streams: list[RequestStream]) -> None:
    for stream in streams:
        if stream._waker is not None:
            stream._waker[1].set()


class StopText:
    """Releases text up to (not including) the first stop string, holding back any tail that
    could be the start of one, so a stream never shows part of a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""

    def add(self, piece: str) -> tuple[str, bool]:
        """New text -> (text to release now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        # A stop string cannot begin in released text (its start would have been held), so
        # searching the held tail plus the new piece finds every occurrence.
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def finish(self, piece: str) -> tuple[str, bool]:
        """End of generation: release everything left (a partial stop string is just text)."""
        text, hit = self.add(piece)
        if not hit:
            text, self.held = text + self.held, ""
        return text, hit
