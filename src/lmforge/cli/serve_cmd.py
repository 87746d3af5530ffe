"""`lmforge serve`: an OpenAI-compatible HTTP server for one model (see docs/serving.md)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from lmforge.cli.app import app, err_console, workspace
from lmforge.errors import LmforgeError

_SERVE_HELP = """Serve a model over HTTP with OpenAI's API: the official clients work unchanged.

\b
  lmforge serve MODEL                                 # http://127.0.0.1:8000/v1
  lmforge serve production --port 8080 --api-key-file keys.txt --rate-limit 60/min
  lmforge serve MODEL --replicas 2                    # 2 worker processes, one port
  lmforge serve MODEL --guardrails rules.toml         # input and output filters
\b
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "MODEL", "messages": [{"role": "user", "content": "Hi"}]}'

\b
Endpoints: /v1/models, /v1/completions, /v1/chat/completions (streaming with \
"stream": true; tools and tool_calls for models tuned to call them), /v1/feedback, \
/v1/review, /health, /ready, /metrics (Prometheus), /openapi.json. Pages: / (a chat page \
with thumbs up/down) and /review (pick the better of two answers: preference data).

MODEL is a model id, id prefix, alias or model folder; a registered model's checksums are \
verified before it is served, and its files are never written. Chat completions need a \
model with a chat template; any model answers /v1/completions. Answers are recorded in \
<workspace>/feedback/ so that /v1/feedback can refer to them (--no-store-responses turns \
both off). A deprecated model is served with Deprecation and Sunset headers; a retired one \
is refused with 410. --guardrails applies a rules file (TOML, e.g. from red teaming): a \
request an input rule matches gets the rule's refusal with finish_reason content_filter, \
and an answer an output rule matches is cut there. Details: docs/serving.md.
"""


def _check_port(host: str, port: int) -> None:
    """Refuse a port in use before loading the model, with a line instead of a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LmforgeError(f"--host {host}: {e.strerror}",
                           hint="use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
                           ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise LmforgeError(f"cannot listen on {host}:{port}: {e.strerror}",
                               hint="pick another port with --port, or stop the server "
                                    "that holds it") from None


def _engine_mode(engine: str, device: str) -> str:
    """auto: a process of its own where the server's HTTP work and the decode loop can run on
    two CPU cores (measured: bench/README.md, vllm_compare.py); a thread on one core or a
    GPU, where the process would only add a pipe."""
    if engine not in ("auto", "process", "thread"):
        raise LmforgeError(f"--engine must be auto, process or thread, got {engine!r}",
                           hint="auto (the default) picks process on a CPU with 2+ cores")
    if engine != "auto":
        return engine
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "process" if device == "cpu" and (cores or 1) >= 2 else "thread"


def _check_rules(path: Path | None) -> str | None:
    """The rules file's absolute path (workers may start elsewhere), read once here so that a
    bad rule is one line before the model loads."""
    if path is None:
        return None
    from lmforge.guardrails import load_rules

    rules = load_rules(path.expanduser())
    err_console.print(f"[dim]guardrails: {escape(rules.summary())}[/]", highlight=False,
                      soft_wrap=True)
    return str(path.expanduser().resolve())


@app.command("serve", rich_help_panel="Use and move models", help=_SERVE_HELP)
def serve(
    model: str = typer.Argument(..., help="Model artifact id/prefix/alias, or a model folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every "
                                               "interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: str = typer.Option(None, "--name", help="The model name clients send (default: "
                                                  "MODEL as given)."),
    api_key_file: Path = typer.Option(None, help="File of API keys, one per line; without "
                                                 "it the API is open."),
    max_batch: int = typer.Option(16, help="Requests decoded together."),
    max_queue: int = typer.Option(256, help="Requests that may wait; beyond it: 503."),
    max_prompt_tokens: int = typer.Option(None, help="Longest prompt accepted (413 beyond; "
                                                     "default: the model's context)."),
    max_tokens: int = typer.Option(512, help="Most new tokens one choice may ask for."),
    default_max_tokens: int = typer.Option(256, help="New tokens when a request does not "
                                                     "say."),
    rate_limit: str = typer.Option(None, help="Requests per key (or per client address), "
                                              "e.g. 60/min or 2/s; beyond it: 429."),
    timeout: float = typer.Option(120.0, help="Seconds one request may take, queueing "
                                              "included."),
    replicas: int = typer.Option(1, help="Worker processes on the port, each with the whole "
                                         "model."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or "
                                            "mps."),
    log_prompts: bool = typer.Option(False, help="Put prompt and answer text in the access "
                                                 "log (off: sizes only)."),
    store_responses: bool = typer.Option(True, help="Record answers for /v1/feedback in "
                                                    "<workspace>/feedback/."),
    guardrails: Path = typer.Option(None, help="Rules file (TOML) of input and output "
                                               "filters, e.g. from red teaming; see "
                                               "docs/serving.md."),
    engine: str = typer.Option("auto", help="Where the decode loop runs: process (its own "
                                            "process, so HTTP work never waits for it), "
                                            "thread (inside the server), or auto (process "
                                            "on a CPU with 2+ cores)."),
) -> None:
    import uvicorn

    from lmforge.runtime import resolve_device
    from lmforge.serve.access_log import configure_logging
    from lmforge.serve.config import ServeConfig, check_key_file, parse_rate

    dev = str(resolve_device(device))
    cfg = ServeConfig(
        model=model, served_name=name, device=dev,
        max_batch=max_batch, max_queue=max_queue, max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens, default_max_tokens=min(default_max_tokens, max_tokens),
        rate_limit_per_min=parse_rate(rate_limit), timeout_s=timeout,
        api_key_file=check_key_file(str(api_key_file) if api_key_file else None),
        log_prompts=log_prompts, store_responses=store_responses, replicas=replicas,
        guardrails=_check_rules(guardrails), engine=_engine_mode(engine, dev))
    _check_port(host, port)
    ws = workspace()
    cfg = dataclasses.replace(cfg, workspace=str(ws.root))
    configure_logging()
    where = f"http://{host}:{port}/v1"
    if replicas == 1:
        from lmforge.serve.app import build_state, create_app

        state = build_state(cfg, ws)
        err_console.print(f"[dim]serving {escape(state.served.label)} as "
                          f"{escape(state.served.name)!r} at {where}[/]", highlight=False,
                          soft_wrap=True)
        uvicorn.run(create_app(state), host=host, port=port, access_log=False,
                    log_level="warning", timeout_graceful_shutdown=5)
        return
    _serve_replicas(cfg, ws, host, port, where)


def _serve_replicas(cfg, ws, host: str, port: int, where: str) -> None:
    """N uvicorn workers on one port. The artifact is verified once, here; workers load it
    by its full id. Metrics go through files in a fresh folder (multiprocess mode)."""
    import uvicorn

    from lmforge.serve.auth import KeyStore
    from lmforge.serve.metrics import prepare_multiprocess_dir
    from lmforge.serve.worker import CONFIG_ENV

    ref = Path(cfg.model)
    if ref.is_dir() and not (ref / "manifest.json").exists():
        label = f"model folder {cfg.model}"
        cfg = dataclasses.replace(cfg, model=str(ref.resolve()),
                                  served_name=cfg.served_name or ref.name)
    else:
        art = ws.resolve(cfg.model, kind="model")  # checksums, once for every worker
        label = f"model {art.id}"
        cfg = dataclasses.replace(cfg, model=art.id, served_name=cfg.served_name or cfg.model)
    if cfg.api_key_file:
        KeyStore.from_file(cfg.api_key_file)  # a bad key file fails here, not N times
    metrics_dir = tempfile.mkdtemp(prefix="lmforge-metrics-")
    try:
        prepare_multiprocess_dir(metrics_dir)  # before any worker starts
        os.environ[CONFIG_ENV] = cfg.to_json()
        err_console.print(f"[dim]serving {escape(label)} as {escape(cfg.served_name or '')!r} "
                          f"at {where} with {cfg.replicas} replicas[/]", highlight=False,
                          soft_wrap=True)
        uvicorn.run("lmforge.serve.worker:app_from_env", factory=True, host=host, port=port,
                    workers=cfg.replicas, access_log=False, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
