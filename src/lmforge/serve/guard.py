"""What wraps every /v1 request before FastAPI reads its body: the API key (401), the rate
limit (429), a retired model's 410 on generation endpoints, and the model's Deprecation,
Sunset and Link headers on every answer. It runs first so an unauthenticated client costs
no parsing, and gets 401 even for a malformed body, as OpenAI answers."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.auth import KeyStore, presented_key
from lmforge.serve.errors import APIError
from lmforge.serve.limits import RateLimiter
from lmforge.serve.model_state import LifecycleTracker

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


async def send_error(send: Send, err: APIError, extra: dict[str, str] | None = None) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**(extra or {}),
                                                              **err.headers}.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyStore | None, limiter: RateLimiter | None,
                 lifecycle: LifecycleTracker, model_name: str):
        self.app, self.keys, self.limiter = app, keys, limiter
        self.lifecycle, self.model_name = lifecycle, model_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        info = scope.setdefault("state", {}).setdefault("access", {})
        lifecycle = self.lifecycle.current()
        extra = lifecycle.headers()
        try:
            key_id = None
            if self.keys is not None:
                key_id = self.keys.check(presented_key(headers.get("authorization"),
                                                       headers.get("api-key")))
            info["key_id"] = key_id
            scope["state"]["key_id"] = key_id
            if self.limiter is not None:
                client = scope.get("client") or ("unknown", 0)
                self.limiter.take(key_id or f"addr-{client[0]}")
            refusal = lifecycle.refusal(self.model_name)
            if refusal is not None and path in GENERATION_PATHS:
                raise refusal
        except APIError as e:
            info["error"] = e.code
            await send_error(send, e, extra)
            return
        if scope.get("method") == "POST":
            # The API speaks only JSON: a body sent as form data (curl -d's default) is
            # read as the JSON it is.
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", [])
                                if k.lower() != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode())
                                        for k, v in extra.items())]
            await send(message)

        await self.app(scope, receive, send_with_headers)
