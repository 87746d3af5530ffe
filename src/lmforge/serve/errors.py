"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status
codes OpenAI uses. Everything a client can get wrong is an `APIError` or is turned into one
here; only a true bug becomes a 500, and that is logged with its traceback."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge.serve")

# OpenAI's error `type` by status.
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          403: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error",
          410: "invalid_request_error", 413: "invalid_request_error",
          429: "requests", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error the client gets as an OpenAI-shaped JSON body with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error answer's body, for the OpenAPI schema."""

    error: ErrorDetail


# Declared on the routers in place of FastAPI's 422 (which this server never sends: its
# validation errors are 400s in OpenAI's shape), so that the schema says what clients get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "A client error in OpenAI's shape: 400 bad "
            "request, 401 key, 404 unknown model or id, 409, 410 retired, 413, 429."},
    "5XX": {"model": ErrorResponse, "description": "503 overloaded, not ready or timed out; "
            "500 a server bug."},
}


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> Response:
    # ASCII-escaped: a message may quote client input, lone surrogates included.
    return Response(json.dumps(err.body()), status_code=err.status, headers=err.headers,
                    media_type="application/json")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Union members appear in the location ("str", "list[...]"); they mean nothing to a client.
    parts = [p for p in parts if not (p[:1].isalpha() and ("[" in p or p in
                                                          ("str", "int", "float", "bool")))]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return bad_request("We could not parse the JSON body of your request. Send a JSON "
                           "object with Content-Type: application/json.", code="invalid_json")
    param = _loc(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param,
                           "missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param,
                           "unknown_parameter")
    if first.get("type") == "model_attributes_type":
        return bad_request("The request body must be a JSON object.", param)
    return bad_request(f"Invalid value for '{param}': {msg}" if param else msg, param,
                       "invalid_value")


def _logged(request: Request, err: APIError) -> Response:
    """The response, with the error's code noted for the access log."""
    access = request.scope.get("state", {}).get("access")
    if isinstance(access, dict):
        access["error"] = err.code or err.type
    return error_response(err)


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped answers for our errors, FastAPI's validation and Starlette's 404/405."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _logged(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _logged(request, validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "Not found: no such endpoint; see /openapi.json for the endpoints."
        return _logged(request, APIError(exc.status_code, message,
                                         headers=dict(exc.headers or {})))

    async def on_lmforge(request: Request, exc: Exception) -> Response:
        # A user error raised below the API (a prompt the engine refuses): the client's fault.
        assert isinstance(exc, LmforgeError)
        return _logged(request, bad_request(exc.message))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(LmforgeError, on_lmforge)


class CatchAllMiddleware:
    """The last net: a bug becomes a logged, OpenAI-shaped 500 instead of a dropped
    connection. After the response has started there is nothing to send; it is logged."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the point of this class
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                return
            body = json.dumps(error_body("The server had an error while processing your "
                                         "request; it has been logged.", "server_error",
                                         None, "internal_error")).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
