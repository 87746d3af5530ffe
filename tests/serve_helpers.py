"""Shared by the tests/test_serve_*.py files: a tiny random chat model, servers built on it
(in-process with TestClient, or a real uvicorn on a free loopback port), and stand-in engines
for the states a real one reaches only under load (a full queue, a stalled request)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from lmforge.design.spec import ModelDesign
from lmforge.engine.scheduler import EngineOverloaded
from lmforge.engine.streams import RequestStream
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.serve.app import build_state, create_app
from lmforge.serve.config import ServeConfig
from lmforge.serve.state import ServerState
from lmforge.tokenizer import Tokenizer, train_tokenizer

TEXT = [
    "The cat sat on the mat and looked at the dog.",
    "A dog is a loyal animal that likes to play outside.",
    "What is a cat? A cat is a small furry animal that purrs.",
    "Hello! How are you today? I am fine, thank you.",
    "Python functions return values; modules group functions together.",
] * 20
CONTEXT = 96


def tiny_model(out: Path) -> tuple[Transformer, Tokenizer]:
    """A random 2-layer chat model with lmforge's tokenizer, saved as a model folder."""
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                         vocab_size=tok.vocab_size, context_length=CONTEXT)
    model = initialize(Transformer(design), "scaled", seed=0).eval()
    save_model_dir(model, out, tok, "# tiny\n\nA random model for serving tests.\n")
    return model, tok


def make_state(model_ref: str | Path, ws_root: Path, engine: Any = None,
               **settings: Any) -> ServerState:
    """A ServerState for `model_ref` with the real engine, or `engine` instead."""
    cfg = ServeConfig(model=str(model_ref), workspace=str(ws_root), **settings)
    ws = Workspace.open(ws_root)
    if engine is None:
        return build_state(cfg, ws)
    return build_state(cfg, ws, engine_factory=lambda served, c: engine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, output: Callable[[], str],
               timeout: float = 60.0) -> None:
    """Wait until a `lmforge serve` process answers `url`/ready; fail with its `output()` if it
    exits first, and kill it if it is not ready within `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lmforge serve exited: {output()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError(f"lmforge serve was not ready after {timeout:.0f} s")


@contextlib.contextmanager
def live_server(state: ServerState) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class StandInEngine:
    """Follows the engine's contract without a model: `overloaded` refuses every submit
    (a full queue); otherwise requests are accepted and never produce a token until
    cancelled (a request stuck behind a long queue)."""

    def __init__(self, overloaded: bool = False):
        self.overloaded = overloaded
        self.streams: list[RequestStream] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def submit(self, req: Any) -> RequestStream:
        if self.overloaded:
            raise EngineOverloaded("256 requests already wait", hint="retry in a moment")
        stream = RequestStream(f"req-{len(self.streams)}")
        self.streams.append(stream)
        return stream

    def stats(self) -> dict:
        return {"running": 0, "waiting": len(self.streams)}
