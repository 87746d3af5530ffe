"""The browser pages: a chat at `/` and a review page at `/review`, plain HTML and vanilla JS
from the package's serve/static/ folder (no build step, nothing fetched from elsewhere).
The pages need no key to load; they call the /v1 API with the key the person types."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from lmforge.engine.tools import builtin_tools, tool_specs
from lmforge.serve.errors import APIError

router = APIRouter(include_in_schema=False)

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# Only files of these names are served: a path never reaches the file system.
STATIC = ("chat.html", "review.html", "chat.js", "review.js", "common.js", "pages.css")
# Scripts and styles from this server only: model output that slipped into markup could
# not run, and the pages call nothing but this server's API.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    if name not in STATIC:
        raise APIError(404, f"No page file `{name}`.", code="not_found")
    data = resources.files("lmforge.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=_TYPES[name[name.rindex("."):]], headers=_HEADERS)


@router.get("/")
async def chat_page() -> Response:
    return _file("chat.html")


@router.get("/review")
async def review_page() -> Response:
    return _file("review.html")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    return _file(name)


@router.get("/pages/tools")
async def page_tools() -> list[dict[str, Any]]:
    """The built-in tools' specs, which the chat page offers when asked (it runs none)."""
    return tool_specs(builtin_tools(["docstring"])) or []
