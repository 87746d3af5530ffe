"""Safeguards that bound what one client can cost: a token bucket per key (429 with
Retry-After), and a cap on the request body's size (413) read before any JSON is parsed."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.errors import APIError, error_body


class RateLimiter:
    """`per_min` requests a minute per key, with bursts up to one minute's worth.

    Each key has a bucket of `per_min` tokens refilled at `per_min / 60` a second; a request
    takes one. Buckets of idle keys are forgotten beyond `max_keys` (least recent first),
    which a forgotten key only gains from (its bucket starts full again).
    """

    def __init__(self, per_min: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.per_min = per_min
        self.capacity = max(1.0, per_min)
        self.rate = per_min / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request of `key`'s budget, or raise a 429 saying when to retry."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                while len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
                return
            self._buckets[key] = (tokens, now)
        wait = math.ceil((1 - tokens) / self.rate)
        raise APIError(429, f"Rate limit reached: {self.per_min:g} requests per "
                            f"minute. Retry in {wait} s.", code="rate_limit_exceeded",
                       headers={"Retry-After": str(wait)})


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming in, so a
    huge upload never sits in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(f"The request body is larger than this server accepts "
                                     f"({self.max_bytes} bytes).", "invalid_request_error",
                                     None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False  # the server rejects a malformed length itself
                if too_big:
                    await self._refuse(send)
                    return
        seen, exceeded, replaced = 0, False, False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Stop reading: the app sees a client that went away, and whatever it
                    # answers is replaced by the 413 below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await self._refuse(send)

        await self.app(scope, counting_receive, replacing_send)
