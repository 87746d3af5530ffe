"""What one `lmforge serve` process is told: limits, keys, logging. Plain data, so that
`--replicas N` can hand the same settings to every worker process as JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

MAX_N = 16  # choices per prompt; each is a full generation, so keep it bounded
MAX_CHOICES = 64  # prompts x n in one completions request


@dataclass(frozen=True)
class ServeConfig:
    model: str                                # the ref as given: id, prefix, alias or folder
    workspace: str | None = None              # None: $LMFORGE_HOME or ./lmforge-workspace
    served_name: str | None = None            # the name clients pass as `model`
    device: str = "cpu"
    max_batch: int = 16                       # rows decoded together by the engine
    max_queue: int = 256                      # waiting requests beyond this: 503
    max_prompt_tokens: int | None = None      # None: the model's context minus one
    max_tokens: int = 512                     # most new tokens one choice may ask for
    default_max_tokens: int = 256             # when a request leaves max_tokens out
    rate_limit_per_min: float | None = None   # per key (or per client address without keys)
    timeout_s: float = 120.0                  # whole request, queueing included
    api_key_file: str | None = None
    log_prompts: bool = False
    store_responses: bool = True              # feedback needs them; off turns feedback off
    max_body_bytes: int = 4 * 1024 * 1024
    state_refresh_s: float = 10.0             # how often the registry's state is re-read
    guardrails: str | None = None             # a rules file (TOML): input and output filters
    replicas: int = 1
    engine: str = "thread"                    # "process": the decode loop in a child process

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_tokens", "default_max_tokens",
                     "max_body_bytes", "replicas"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"--{name.replace('_', '-')} must be at least 1, got "
                                   f"{getattr(self, name)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise LmforgeError(f"--max-prompt-tokens must be at least 1, got "
                               f"{self.max_prompt_tokens}")
        if self.engine not in ("thread", "process"):
            raise LmforgeError(f"--engine must be thread or process, got {self.engine!r}",
                               hint="auto picks process on a CPU with two cores or more")
        if self.timeout_s <= 0:
            raise LmforgeError(f"--timeout must be positive, got {self.timeout_s}",
                               hint="give seconds, e.g. --timeout 60")
        if self.rate_limit_per_min is not None and self.rate_limit_per_min <= 0:
            raise LmforgeError(f"the rate limit must be positive, got {self.rate_limit_per_min}",
                               hint="e.g. --rate-limit 60/min")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER_MIN = {"s": 60.0, "sec": 60.0, "second": 60.0, "m": 1.0, "min": 1.0, "minute": 1.0,
            "h": 1 / 60, "hour": 1 / 60}


def parse_rate(text: str | None) -> float | None:
    """'60/min', '2/s', '1000/hour' or a bare number (per minute) -> requests per minute."""
    if text is None or text.strip() == "":
        return None
    m = _RATE.match(text.lower())
    if not m or float(m.group(1)) <= 0:
        raise LmforgeError(f"--rate-limit {text!r} is not a rate",
                           hint="write requests per period, e.g. --rate-limit 60/min or 2/s")
    return float(m.group(1)) * _PER_MIN[m.group(2) or "min"]


def check_key_file(path: str | None) -> str | None:
    """The key file's absolute path (workers may start elsewhere), refused early if absent."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise LmforgeError(f"--api-key-file {path}: no such file",
                           hint="write one key per line into a file, e.g. "
                                "`python -c 'import secrets; print(secrets.token_urlsafe(32))' "
                                "> keys.txt`")
    return str(p.resolve())
