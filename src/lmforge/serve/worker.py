"""The app factory each `--replicas N` worker process runs: uvicorn starts N processes on one
port, and each builds its own ServerState (a full model and engine) from the settings the
parent put in $LMFORGE_SERVE_CONFIG. The parent already verified the artifact's checksums."""

from __future__ import annotations

import os

from fastapi import FastAPI

from lmforge.serve.access_log import configure_logging
from lmforge.serve.app import build_state, create_app
from lmforge.serve.config import ServeConfig

CONFIG_ENV = "LMFORGE_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    configure_logging()
    cfg = ServeConfig.from_json(os.environ[CONFIG_ENV])
    return create_app(build_state(cfg, verify=False))
