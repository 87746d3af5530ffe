"""The FastAPI application: routes, error handlers and middleware around one ServerState.

    state = build_state(ServeConfig(model="production"))
    app = create_app(state)          # uvicorn.run(app) serves it; the engine starts with it

Middleware, outermost first: access log, catch-all 500, guard (key, rate limit, lifecycle
headers, 410), body size limit; then FastAPI's routing and validation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import lmforge
from lmforge.guardrails import load_rules
from lmforge.registry import Workspace
from lmforge.serve import feedback_routes, openai_routes, ops_routes, pages, review_routes
from lmforge.serve.access_log import AccessLogMiddleware
from lmforge.serve.auth import KeyStore
from lmforge.serve.config import ServeConfig
from lmforge.serve.errors import ERROR_RESPONSES, CatchAllMiddleware, install_error_handlers
from lmforge.serve.feedback import FeedbackStore, store_path
from lmforge.serve.guard import GuardMiddleware
from lmforge.serve.limits import BodyLimitMiddleware, RateLimiter
from lmforge.serve.metrics import Metrics
from lmforge.serve.model_state import LifecycleTracker, ServedModel, load_served_model
from lmforge.serve.state import ServerState

log = logging.getLogger("lmforge.serve")

EngineFactory = Callable[..., Any]


def default_engine(served: ServedModel, cfg: ServeConfig) -> Any:
    # torch-heavy imports: only when serving for real. "process": the decode loop off this
    # interpreter (engine/process.py), with the same caller side as the Engine.
    if cfg.engine == "process":
        from lmforge.engine.process import ProcessEngine as engine_class
    else:
        from lmforge.engine.scheduler import Engine as engine_class

    return engine_class(served.model, served.tok, max_batch=cfg.max_batch,
                        max_queue=cfg.max_queue)


def build_state(cfg: ServeConfig, ws: Workspace | None = None, *,
                served: ServedModel | None = None, verify: bool = True,
                engine_factory: Callable[[ServedModel, ServeConfig], Any] = default_engine
                ) -> ServerState:
    """Load the model (checksums verified unless `verify` is off, as in replicas after the
    parent checked), and make everything a server process holds."""
    ws = ws or Workspace.open(cfg.workspace)
    if served is None:
        served = load_served_model(ws, cfg.model, served_name=cfg.served_name,
                                   device=cfg.device, verify=verify)
    keys = KeyStore.from_file(cfg.api_key_file) if cfg.api_key_file else None
    limiter = RateLimiter(cfg.rate_limit_per_min) if cfg.rate_limit_per_min else None
    store = FeedbackStore(store_path(ws.root, served.id), served.id) \
        if cfg.store_responses else None
    rules = load_rules(cfg.guardrails) if cfg.guardrails else None
    metrics = Metrics(served.name)
    for rule in rules.rules if rules else ():  # every rule on /metrics from the start, at 0
        metrics.guardrail_hits.labels(served.name, rule.name, rule.direction)
    return ServerState(cfg, served, engine_factory(served, cfg), metrics,
                       LifecycleTracker(served, ws, cfg.state_refresh_s), keys, limiter, store,
                       rules)


def _count_error(state: ServerState, entry: dict[str, Any]) -> None:
    if entry["status"] >= 400 and str(entry.get("path", "")).startswith("/v1/"):
        state.metrics.errors.labels(state.metrics.model_name, str(entry["status"])).inc()


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        state.ready = True
        log.info("serving %s as %r", state.served.label, state.served.name)
        try:
            yield
        finally:
            state.ready = False
            state.engine.stop()
            state.metrics.close()
            if state.feedback is not None:
                state.feedback.close()

    app = FastAPI(title="lmforge", version=lmforge.__version__, lifespan=lifespan,
                  description="An OpenAI-compatible API for one lmforge model.",
                  redoc_url=None)
    app.state.lmforge = state
    install_error_handlers(app)
    app.include_router(openai_routes.router, responses=ERROR_RESPONSES)
    app.include_router(feedback_routes.router, responses=ERROR_RESPONSES)
    app.include_router(ops_routes.router, responses=ERROR_RESPONSES)
    app.include_router(review_routes.router, responses=ERROR_RESPONSES)
    app.include_router(pages.router)  # / and /review: the browser pages
    # add_middleware puts each one outside the previous: innermost first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.cfg.max_body_bytes)
    app.add_middleware(GuardMiddleware, keys=state.keys, limiter=state.limiter,
                       lifecycle=state.lifecycle, model_name=state.served.name)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(AccessLogMiddleware, log_prompts=state.cfg.log_prompts,
                       on_finish=lambda entry: _count_error(state, entry))
    return app
