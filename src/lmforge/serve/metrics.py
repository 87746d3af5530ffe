"""Prometheus metrics, named after vLLM's with the `lmforge:` prefix, so dashboards built for
vLLM read lmforge with a changed prefix.

With `--replicas N` every worker process writes its values to files in
$PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen when that variable
is set before the worker starts), and a scrape of any worker sums all of them: counters and
histograms add up, the running/waiting gauges add up over live workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

disable_created_metrics()  # no `_created` series beside every counter and histogram (as vLLM)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. CPU serving of small models spans milliseconds to a minute.
_TTFT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
         20.0, 40.0)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
         1.0, 2.5)
_E2E = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
        60.0, 120.0)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's metrics for one model, in their own registry (so tests can build many
    apps in one process)."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        r, labels = self.registry, ["model_name"]
        self.running = Gauge("lmforge:num_requests_running",
                             "Requests generating tokens now.", labels, registry=r,
                             multiprocess_mode="livesum")
        self.waiting = Gauge("lmforge:num_requests_waiting",
                             "Requests queued, before their first token.", labels, registry=r,
                             multiprocess_mode="livesum")
        self.ttft = Histogram("lmforge:time_to_first_token_seconds",
                              "Time from arrival to the first token.", labels, buckets=_TTFT,
                              registry=r)
        self.tpot = Histogram("lmforge:time_per_output_token_seconds",
                              "Mean time between output tokens of a request after the first.",
                              labels, buckets=_TPOT, registry=r)
        self.e2e = Histogram("lmforge:e2e_request_latency_seconds",
                             "Time from arrival to the last token.", labels, buckets=_E2E,
                             registry=r)
        self.prompt_tokens = Counter("lmforge:prompt_tokens", "Prompt tokens processed.",
                                     labels, registry=r)
        self.generation_tokens = Counter("lmforge:generation_tokens", "Tokens generated.",
                                         labels, registry=r)
        self.success = Counter("lmforge:request_success",
                               "Generations finished, by finish reason.",
                               [*labels, "finished_reason"], registry=r)
        self.errors = Counter("lmforge:request_errors",
                              "Requests answered with an error, by HTTP status.",
                              [*labels, "status"], registry=r)
        self.guardrail_hits = Counter("lmforge:guardrail_hits",
                                      "Requests (input) and answers (output) a guardrail rule "
                                      "stopped, by rule.", [*labels, "rule", "direction"],
                                      registry=r)
        self.model_name = model_name
        for g in (self.running, self.waiting):  # show 0 before the first request
            g.labels(model_name).set(0)

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric (summed over workers in multiprocess mode)."""
        if multiprocess():
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A worker that ends: its live gauges stop counting in the sum."""
        if multiprocess():
            _multiprocess.mark_process_dead(os.getpid())


def prepare_multiprocess_dir(path: str) -> None:
    """Point prometheus_client at an empty folder (stale files from an earlier run would be
    counted again). Call before any worker starts."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path
