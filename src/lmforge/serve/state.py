"""Everything one server process holds, in one object the routes reach as
`request.app.state.lmforge`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from lmforge.guardrails import Guardrails
from lmforge.serve.auth import KeyStore
from lmforge.serve.config import ServeConfig
from lmforge.serve.errors import APIError
from lmforge.serve.feedback import FeedbackStore
from lmforge.serve.limits import RateLimiter
from lmforge.serve.metrics import Metrics
from lmforge.serve.model_state import LifecycleTracker, ServedModel


@dataclass
class ServerState:
    cfg: ServeConfig
    served: ServedModel
    engine: Any                       # lmforge.engine.scheduler.Engine, or a test's stand-in
    metrics: Metrics
    lifecycle: LifecycleTracker
    keys: KeyStore | None = None
    limiter: RateLimiter | None = None
    feedback: FeedbackStore | None = None
    guardrails: Guardrails | None = None  # --guardrails: filters on requests and answers
    ready: bool = False               # the engine runs: traffic may come

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt accepted: --max-prompt-tokens, never beyond the context minus
        one (one token must be left to write)."""
        room = self.served.context_length - 1
        return min(self.cfg.max_prompt_tokens or room, room)

    def check_model(self, name: str) -> None:
        if name not in self.served.names:
            raise APIError(404, f"The model `{name}` does not exist or you do not have access "
                                f"to it. This server serves `{self.served.name}`.",
                           param="model", code="model_not_found")

    def card(self) -> dict[str, Any]:
        """The model as /v1/models lists it."""
        return {"id": self.served.name, "object": "model", "created": self.served.created,
                "owned_by": "lmforge", "root": self.served.id,
                "max_model_len": self.served.context_length}


def server_state(request: Request) -> ServerState:
    return request.app.state.lmforge
