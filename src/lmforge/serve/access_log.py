"""Structured access logs: one JSON object per request on the `lmforge.serve.access` logger
(method, path, status, latency, key id, token counts, response id). Prompt and answer text
are left out unless the server runs with --log-prompts. Each response carries an
X-Request-Id (the client's, when it sent a sane one) that its log line repeats."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lmforge.serve.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TEXT_FIELDS = ("prompt", "messages", "output")  # logged only with --log-prompts


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, log_prompts: bool = False,
                 on_finish: Callable[[dict], None] | None = None):
        self.app, self.log_prompts, self.on_finish = app, log_prompts, on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        given = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k == b"x-request-id"), "")
        request_id = given if _SANE_ID.match(given) else f"req-{uuid.uuid4().hex[:16]}"
        info: dict = scope.setdefault("state", {}).setdefault("access", {})
        status = 0

        async def logging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            client = scope.get("client")
            entry = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": request_id, "method": scope.get("method"),
                "path": scope.get("path"), "status": status or 499,  # 499: client left
                "duration_ms": round((time.monotonic() - start) * 1000, 1),
                "client": client[0] if client else None, "pid": os.getpid(),
            }
            for k, v in info.items():
                if v is not None and (self.log_prompts or k not in TEXT_FIELDS):
                    entry[k] = v
            log.info(json.dumps(entry, ensure_ascii=False, default=str))
            if self.on_finish is not None:
                self.on_finish(entry)


def configure_logging() -> None:
    """Server logs (access lines and errors) to stderr as bare lines: JSON is the format."""
    logger = logging.getLogger("lmforge.serve")
    if not any(getattr(h, "_lmforge", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._lmforge = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
