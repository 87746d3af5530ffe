"""Load on `lmforge serve` over HTTP, in the style of vLLM's benchmark_serving.

Clients stream `/v1/completions` (or `/v1/chat/completions` with `--endpoint chat`): requests
arrive as a Poisson process at `--request-rate` per second (`inf`: all at once), at most
`--concurrency` in flight, each with a prompt of exactly `--input-len` tokens (text cut from
TinyStories with the served model's tokenizer; the server's `usage` confirms the count) and
`--output-len` new tokens (greedy by default). Per request: TTFT (send to the first chunk
with text), TPOT ((end - first text) / (tokens - 1)), ITL (gaps between text chunks) and end-to-end
latency. Reported: request throughput, output tokens/s, TTFT/TPOT/ITL/e2e p50/p90/p99,
errors.

The script starts `lmforge serve` itself on a free loopback port, twice on the same model:
continuous batching (`--max-batch 16`) and one request at a time (`--max-batch 1`), and
prints the ratio of output tokens/s. The model is the `tiny` design preset, randomly
initialized and saved as a model folder in a temp dir (speed does not depend on training),
unless `--model` names a model folder or artifact. The load generator runs in this process
and shares the machine with the servers, so they run with one torch thread fewer than the
machine has cores (`--server-threads`): on 2 cores, a server with 2 threads waits for the
thread the client preempts at every step.

    python bench/serve_load.py            # 16 streams, 64 prompts 32 -> 128, best of 3 (~2 min)
    python bench/serve_load.py --quick    # a smoke run, not a figure to quote
    python bench/serve_load.py --duration 300 --request-rate 2   # soak: errors, RSS start/end
    python bench/serve_load.py --base-url http://127.0.0.1:8000 --model PATH  # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lmforge.tokenizer import Tokenizer

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from engine_batching import stories  # noqa: E402 - the same TinyStories text as the engine bench

# ---------------------------------------------------------------- the model and its prompts


def prepare_model(args: argparse.Namespace, tmp: Path) -> tuple[str, Tokenizer, str]:
    """(what `lmforge serve` is given, the model's tokenizer, a label for the table)."""
    if args.model is None:
        from lmforge.design.spec import from_preset
        from lmforge.model.init import initialize
        from lmforge.model.io import save_model_dir
        from lmforge.model.transformer import Transformer
        from lmforge.tokenizer import train_tokenizer

        design = from_preset("tiny")
        tok = train_tokenizer(stories(), design.vocab_size, show_progress=False)
        model = initialize(Transformer(design), "gpt2", seed=0).eval()
        folder = tmp / "tiny"
        save_model_dir(model, folder, tok, "# tiny\n\nRandom init, for serve_load.py.\n")
        return str(folder), tok, "tiny preset (random init)"
    path = Path(args.model).expanduser()
    if path.is_dir() and not (path / "manifest.json").exists():
        return str(path.resolve()), Tokenizer.load(path), str(path)
    from lmforge.registry import Workspace

    ws = Workspace.open(args.workspace)
    try:
        art = ws.resolve(args.model, kind="model")
        return art.id, Tokenizer.load(art.path), f"{args.model} ({art.id[:12]})"
    finally:
        ws.close()


def make_prompts(tok: Tokenizer, n: int, length: int) -> list[str]:
    """`n` different texts of exactly `length` tokens each (when the cut allows it: a window
    of tokens decoded and re-encoded can merge differently at its ends, so a window that does
    not come back at `length` is moved one token on)."""
    stream: list[int] = []
    for story in stories():
        stream += tok.encode(story + "\n\n")
        if len(stream) >= 4 * n * length + 1000:
            break
    stream = stream * (4 * n * length // len(stream) + 2)
    prompts, start = [], 0
    while len(prompts) < n:
        for shift in range(32):  # almost always the first window fits
            text = tok.decode(stream[start + shift:start + shift + length])
            if len(tok.encode(text)) == length:
                break
        prompts.append(text)
        start += length + shift
    return prompts


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (replicas are children)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process ended between the calls: no figure
        return 0
    pids = [pid]
    with contextlib.suppress(OSError):  # direct children only, without psutil
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Server:
    base_url: str
    name: str
    pid: int | None = None  # None: a server this script did not start (--base-url)


@contextlib.contextmanager
def start_server(model: str, max_batch: int, args: argparse.Namespace, tmp: Path
                 ) -> Iterator[Server]:
    """`lmforge serve MODEL --max-batch N` on a free port, until /ready says 200."""
    port = free_port()
    exe = shutil.which("lmforge", path=str(Path(sys.executable).parent)) or "lmforge"
    cmd = [exe, "serve", model, "--port", str(port), "--max-batch", str(max_batch),
           "--name", "bench", "--timeout", str(args.server_timeout),
           "--max-tokens", str(max(512, args.output_len)), *args.serve_arg]
    log = tmp / f"serve-{max_batch}-{port}.log"
    env = dict(os.environ)
    if args.workspace:
        env["LMFORGE_HOME"] = args.workspace
    elif Path(model).is_dir():  # a model folder: answers are recorded in a throwaway workspace
        env["LMFORGE_HOME"] = str(tmp / "workspace")
    if args.server_threads:  # torch reads it at start: intra-op threads of the server
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"lmforge serve did not become ready:\n{' '.join(cmd)}\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield Server(base, "bench", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- one request


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def request_body(server: Server, prompt: str, args: argparse.Namespace,
                 max_tokens: int | None = None) -> dict:
    body: dict = {"model": server.name, "max_tokens": max_tokens or args.output_len,
                  "temperature": args.temperature, "stream": True,
                  "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def endpoint_url(server: Server, args: argparse.Namespace) -> str:
    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    return server.base_url + path


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    res, start = Result(), time.perf_counter()
    last = 0.0
    done = False
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                res.error = f"HTTP {r.status_code}: {text[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = f"in stream: {chunk['error'].get('message', chunk['error'])}"
                    return res
                if chunk.get("usage"):
                    res.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or ():
                    text = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if text:  # chat's opening role chunk carries no text: not a first token
                        now = time.perf_counter()
                        if last:
                            res.itl.append(now - last)
                        else:
                            res.ttft = now - start
                        last = now
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
        return res
    res.e2e = time.perf_counter() - start
    if not done:
        res.error = "stream ended without [DONE]"
        return res
    res.ok = True
    if not last:  # an answer that ended at once (say, an end of turn): complete at the end
        res.ttft = res.e2e
    return res


# ---------------------------------------------------------------- the load


async def run_load(server: Server, prompts: list[str], args: argparse.Namespace,
                   duration: float | None = None, rss_every: float = 0.0
                   ) -> tuple[list[Result], float, list[tuple[float, int]]]:
    """Send requests as a Poisson process at args.request_rate, at most args.concurrency at
    once: len(prompts) of them, or, with `duration`, as many as arrive in that many seconds
    (prompts reused in turn). Returns results, wall seconds (first send to last answer) and
    (seconds, RSS) samples of the server when rss_every > 0."""
    rng = random.Random(args.seed)
    limit = asyncio.Semaphore(args.concurrency)
    url = endpoint_url(server, args)
    samples: list[tuple[float, int]] = []
    timeout = httpx.Timeout(args.server_timeout + 60, connect=30)
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def limited(prompt: str) -> Result:
            async with limit:
                return await one_request(client, url, request_body(server, prompt, args))

        async def watch_rss() -> None:
            while True:
                samples.append((time.perf_counter() - start, rss_bytes(server.pid)))
                await asyncio.sleep(rss_every)

        start = time.perf_counter()
        watcher = asyncio.create_task(watch_rss()) if rss_every and server.pid else None
        tasks, i = [], 0
        while (i < len(prompts)) if duration is None else (time.perf_counter() - start < duration):
            tasks.append(asyncio.create_task(limited(prompts[i % len(prompts)])))
            i += 1
            if math.isfinite(args.request_rate):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        if watcher:
            watcher.cancel()
            samples.append((wall, rss_bytes(server.pid)))
    return list(results), wall, samples


async def probe(server: Server, args: argparse.Namespace, text: str, max_tokens: int) -> Result:
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.server_timeout, connect=30)) as c:
        return await one_request(c, endpoint_url(server, args),
                                 request_body(server, text, args, max_tokens))


def template_overhead(server: Server, tok: Tokenizer, args: argparse.Namespace) -> int:
    """Tokens the server adds around the text: BOS for a completion, the chat template's
    role tokens for a chat message. Measured, so the prompts come out at --input-len."""
    text = "Once upon a time"
    res = asyncio.run(probe(server, args, text, 1))
    if not res.prompt_tokens:  # no text back is fine here (one token may be an end of turn)
        raise SystemExit(f"the server refused a probe request: {res.error}")
    overhead = res.prompt_tokens - len(tok.encode(text))
    if overhead >= args.input_len:
        raise SystemExit(f"--input-len {args.input_len}: the server adds {overhead} tokens "
                         "around every prompt; ask for more")
    return overhead


def warm_up(server: Server, prompts: list[str], args: argparse.Namespace) -> None:
    """A few short requests first: thread pools, allocator, the first decode steps."""
    async def go() -> None:
        await asyncio.gather(*(probe(server, args, p, 8) for p in prompts[:4]))

    asyncio.run(go())


# ---------------------------------------------------------------- the figures


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    report = {"requests": len(results), "completed": len(ok), "failed": len(results) - len(ok),
              "errors": sorted({r.error for r in results if not r.ok})[:5],
              "seconds": wall, "request_throughput": len(ok) / wall,
              "output_tokens_per_s": out_tokens / wall,
              "total_tokens_per_s": (out_tokens + sum(r.prompt_tokens for r in ok)) / wall,
              "mean_prompt_tokens": sum(r.prompt_tokens for r in ok) / max(1, len(ok)),
              "mean_output_tokens": out_tokens / max(1, len(ok))}
    series = {"ttft": [r.ttft for r in ok], "tpot": [t for r in ok if (t := r.tpot) is not None],
              "itl": [x for r in ok for x in r.itl], "e2e": [r.e2e for r in ok]}
    for name, values in series.items():
        report[f"{name}_mean_ms"] = 1000 * sum(values) / len(values) if values else float("nan")
        for q in (50, 90, 99):
            report[f"{name}_p{q}_ms"] = 1000 * percentile(values, q)
    return report


ROWS = [("completed / failed", None), ("seconds", "seconds"),
        ("requests/s", "request_throughput"), ("output tokens/s", "output_tokens_per_s"),
        ("total tokens/s", "total_tokens_per_s"), ("mean prompt tokens", "mean_prompt_tokens"),
        ("mean output tokens", "mean_output_tokens")]
for _m in ("ttft", "tpot", "itl", "e2e"):
    ROWS += [(f"{_m.upper()} {s} (ms)", f"{_m}_{s}_ms") for s in ("mean", "p50", "p90", "p99")]


def print_table(report: dict) -> None:
    runs = report["runs"]
    print(f"\n{report['model']}, /v1/{'chat/' if report['endpoint'] == 'chat' else ''}"
          f"completions streamed, {report['input_len']} -> {report['output_len']} tokens, "
          f"temperature {report['temperature']}; request rate {report['request_rate']}/s, "
          f"concurrency {report['concurrency']}; {report['cpu']}, {report['cores']} cores, "
          f"server threads {report['server_threads'] or 'not set here'}, best of "
          f"{report['rounds']} round(s); load average {report['load_average']}")
    names = [r["label"] for r in runs]
    width = max(16, *(len(n) for n in names))
    print(f"  {'':22s}" + "".join(f" {n:>{width}s}" for n in names))
    for title, key in ROWS:
        if key is None:
            cells = [f"{r['completed']} / {r['failed']}" for r in runs]
        else:
            cells = [f"{r[key]:.1f}" if r[key] >= 10 else f"{r[key]:.2f}" for r in runs]
        print(f"  {title:22s}" + "".join(f" {c:>{width}s}" for c in cells))
    for r in runs:
        for e in r["errors"]:
            print(f"  error ({r['label']}): {e}")
        if len(r["rounds_output_tokens_per_s"]) > 1:
            print(f"  output tokens/s by round ({r['label']}): "
                  + ", ".join(f"{x:.0f}" for x in r["rounds_output_tokens_per_s"]))
        if "rss_start_mb" in r:
            print(f"  server RSS ({r['label']}): start {r['rss_start_mb']:.0f} MB, max "
                  f"{r['rss_max_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB "
                  f"({r['rss_end_mb'] - r['rss_start_mb']:+.0f} MB)")
            samples = r["rss_samples"]  # flat or growing: the fifths of the run tell
            marks = [samples[round(i * (len(samples) - 1) / 5)] for i in range(6)]
            print("  server RSS over the run: " + ", ".join(
                f"{t:.0f} s {b / 2**20:.0f} MB" for t, b in marks))
    if "ratio" in report:
        print(f"  continuous batching / one at a time, output tokens/s: {report['ratio']:.2f}x")


# ---------------------------------------------------------------- main


def one_round(server: Server, prompts: list[str], args: argparse.Namespace) -> dict:
    results, wall, samples = asyncio.run(run_load(
        server, prompts, args, args.duration, args.rss_every if args.duration else 0.0))
    report = summarize(results, wall)
    if samples:
        report.update(rss_start_mb=samples[0][1] / 2**20, rss_end_mb=samples[-1][1] / 2**20,
                      rss_max_mb=max(s[1] for s in samples) / 2**20,
                      rss_samples=[(round(t, 1), b) for t, b in samples])
    return report


def measure(servers: dict[str, Server], prompts: list[str], args: argparse.Namespace
            ) -> list[dict]:
    """Rounds alternate between the servers (all up at once, idle while the other is
    loaded), rotating the order, so that background load hits each alike; each server's
    best round is kept (background load only ever slows a round down)."""
    for server in servers.values():
        warm_up(server, prompts, args)
    labels = list(servers)
    best: dict[str, dict] = {}
    every: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            report = one_round(servers[label], prompts, args)
            every[label].append(report["output_tokens_per_s"])
            if label not in best or \
                    report["output_tokens_per_s"] > best[label]["output_tokens_per_s"]:
                best[label] = report
    return [{**best[label], "label": label, "rounds_output_tokens_per_s": every[label]}
            for label in labels]


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-serve-load-"))
    try:
        model, tok, label = prepare_model(args, tmp)
        if args.base_url:
            server = Server(args.base_url.rstrip("/"), args.served_name, args.server_pid)
            prompts = make_prompts(tok, args.num_prompts,
                                   args.input_len - template_overhead(server, tok, args))
            runs = measure({f"server at {args.base_url}": server}, prompts, args)
        else:
            batches = [args.max_batch] if args.duration or args.no_compare \
                else [args.max_batch, 1]
            with contextlib.ExitStack() as stack:
                servers = {}
                for max_batch in batches:
                    name = "batching" if max_batch > 1 else "1 at a time"
                    servers[f"{name} (max-batch {max_batch})"] = stack.enter_context(
                        start_server(model, max_batch, args, tmp))
                first = next(iter(servers.values()))  # the same prompts for every server
                overhead = template_overhead(first, tok, args)
                prompts = make_prompts(tok, args.num_prompts, args.input_len - overhead)
                runs = measure(servers, prompts, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from lmforge.runtime import cpu_name

    report = {"model": label, "endpoint": args.endpoint, "input_len": args.input_len,
              "output_len": args.output_len, "temperature": args.temperature,
              "num_prompts": args.num_prompts,
              "request_rate": args.request_rate, "concurrency": args.concurrency,
              "duration": args.duration, "rounds": args.rounds,
              "server_threads": None if args.base_url else args.server_threads, "cpu": cpu_name(),
              "cores": os.cpu_count(),
              "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": runs}
    if len(runs) == 2:
        report["ratio"] = runs[0]["output_tokens_per_s"] / runs[1]["output_tokens_per_s"]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model folder or artifact reference "
                   "(default: the tiny preset, randomly initialized, in a temp folder)")
    p.add_argument("--workspace", default=None, help="workspace for --model references")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--num-prompts", type=int, default=64, help="requests per run")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per request")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (0: greedy, every answer runs to --output-len "
                        "unless the model ends it)")
    p.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    p.add_argument("--max-batch", type=int, default=16, help="the batching server's --max-batch")
    p.add_argument("--no-compare", action="store_true",
                   help="only the batching server (no --max-batch 1 run)")
    p.add_argument("--duration", type=float, default=None,
                   help="send requests for this many seconds (one server; reports RSS)")
    p.add_argument("--rss-every", type=float, default=5.0, help="RSS sample period in seconds")
    p.add_argument("--rounds", type=int, default=3, help="runs per server, the best kept "
                   "(background load only slows a run down); 1 with --duration")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    p.add_argument("--server-timeout", type=float, default=600.0,
                   help="the server's --timeout (high: queueing is measured, not refused)")
    p.add_argument("--server-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads of the servers (OMP_NUM_THREADS; default: one core "
                        "fewer than the machine has, the one left is the load generator's; "
                        "0: torch's default, one per core)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="one more argument for lmforge serve (repeat the option)")
    p.add_argument("--base-url", default=None, help="load a running server instead of "
                   "starting one (--model gives the tokenizer)")
    p.add_argument("--served-name", default="bench", help="model name for --base-url")
    p.add_argument("--server-pid", type=int, default=None, help="with --base-url: its pid, "
                   "for RSS in --duration mode")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (8 prompts x 16 tokens): not a figure to quote")
    args = p.parse_args(argv)
    if args.quick:
        args.num_prompts, args.output_len, args.rounds = 8, 16, 1
    if args.duration is not None:
        args.rounds = 1
    if min(args.num_prompts, args.output_len, args.concurrency, args.max_batch,
           args.rounds) < 1 or args.input_len < 8:
        p.error("--num-prompts, --output-len, --concurrency, --max-batch and --rounds must "
                "be at least 1, --input-len at least 8")
    if args.duration is not None and not math.isfinite(args.request_rate):
        p.error("--duration needs a finite --request-rate (requests per second)")
    if not args.request_rate > 0:
        p.error("--request-rate must be above 0")
    report = run(args)
    report["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
