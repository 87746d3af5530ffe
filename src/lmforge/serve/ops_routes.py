"""For operators and load balancers: /health (the process answers), /ready (the engine runs
and the model may be served), /metrics (Prometheus). None of them needs an API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lmforge.serve.errors import APIError, error_response
from lmforge.serve.state import server_state

router = APIRouter(tags=["Operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(request: Request) -> dict[str, Any] | Response:
    state = server_state(request)
    if not state.ready or not getattr(state.engine, "alive", True):  # alive: its process
        return error_response(APIError(503, "The engine is not running (starting, "
                                            "stopping, or its process ended).",
                                       code="not_ready"))
    lifecycle = state.lifecycle.current()
    if lifecycle.retired:
        return error_response(APIError(503, f"The model `{state.served.name}` is retired.",
                                       code="model_retired"))
    stats = state.engine.stats() if hasattr(state.engine, "stats") else {}
    return {"status": "ready", "model": state.served.name,
            "running": stats.get("running"), "waiting": stats.get("waiting")}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = server_state(request).metrics.render()
    return Response(body, media_type=content_type)
