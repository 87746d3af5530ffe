"""The one model a server serves: loaded read-only from the registry (checksums verified) or
a model folder, the names clients may call it by, whether it can chat, and its lifecycle.

A deprecated model is served with `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) headers
and a `Link` to its successor; a retired (or archived) one is refused with 410 naming the
successor. The state comes from the registry and is re-read every few seconds, so
`lmforge registry` moves reach a running server. The sunset date and successor come from
the record when it holds them: the deprecation event, or the artifact manifest's top-level
`deprecated`, `sunset`, `successor` and `retired` fields.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import torch

from lmforge.engine.chat import _check_stored_template, require_chat_template
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.serve.errors import APIError
from lmforge.tokenizer import Tokenizer

RETIRED_STATES = ("retired", "archived")


@dataclass
class ServedModel:
    model: Transformer
    tok: Tokenizer
    id: str                        # the artifact id, or the folder's absolute path
    names: tuple[str, ...]         # what a request's `model` may say; the first is listed
    label: str                     # for logs and messages
    created: int                   # unix seconds, for /v1/models
    chat_problem: str | None       # why chat completions are refused; None: it can chat
    manifest: dict[str, Any] = field(default_factory=dict)
    registered: bool = False

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def context_length(self) -> int:
        return self.model.design.context_length


def _unix(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def load_served_model(ws: Workspace, ref: str, *, served_name: str | None = None,
                      device: str | torch.device = "cpu", verify: bool = True) -> ServedModel:
    """Load `ref` (artifact id, prefix, alias, or model folder) for serving. Nothing is
    written to the artifact; its files are read, and checked against their sha256s."""
    path = Path(ref)
    if path.is_dir() and not (path / "manifest.json").exists():
        folder = path.resolve()
        model_id, label, manifest, registered = str(folder), f"model folder {ref}", {}, False
        names = [served_name or path.name or str(folder), str(folder)]
        created = int(folder.stat().st_mtime)
    else:
        art = ws.resolve(ref, kind="model", verify=verify)
        folder, model_id, manifest, registered = art.path, art.id, art.manifest, True
        label = f"model {art.id}" + (f" ({art.name})" if art.name else "")
        aliases = ws.aliases_of(art.id)
        names = [served_name or ref, art.id, *([art.name] if art.name else []), *aliases]
        created = _unix(art.created)
    model, tok = load_model_dir(folder, device)
    chat_problem = None
    try:
        _check_stored_template(folder, label)
        require_chat_template(tok, label, "it cannot answer chat completions")
    except LmforgeError as e:
        chat_problem = (e.message.replace("so it cannot chat", "so it cannot answer chat "
                                          "completions") + "; use /v1/completions")
    unique = list(dict.fromkeys(n for n in names if n))
    return ServedModel(model, tok, model_id, tuple(unique), label, created, chat_problem,
                       manifest, registered)


# --- lifecycle ------------------------------------------------------------------------------

def _when(value: Any) -> datetime | None:
    """A date or time from the record ('2027-03-01', ISO-8601, unix seconds), in UTC."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return None


@dataclass(frozen=True)
class Lifecycle:
    """What clients must be told about the model's place in its life."""

    state: str | None = None
    deprecated: bool = False
    deprecated_at: datetime | None = None
    sunset: datetime | None = None
    successor: str | None = None
    retired: bool = False

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.deprecated or self.retired:
            when = self.deprecated_at or self.sunset
            if when is not None:  # RFC 9745: a structured-field date, @unix-seconds
                out["Deprecation"] = f"@{int(when.timestamp())}"
            else:
                out["Deprecation"] = "@0"  # deprecated at some unrecorded time: the past
            if self.sunset is not None:  # RFC 8594: an HTTP-date
                out["Sunset"] = format_datetime(self.sunset.astimezone(timezone.utc),
                                                usegmt=True)
            if self.successor:
                out["Link"] = f'</v1/models/{self.successor}>; rel="successor-version"'
        return out

    def refusal(self, name: str) -> APIError | None:
        """The 410 a retired model answers with, or None."""
        if not self.retired:
            return None
        then = f" Use {self.successor} instead." if self.successor else ""
        return APIError(410, f"The model `{name}` has been retired and is no longer "
                             f"served.{then}", param="model", code="model_retired",
                        headers=self.headers())


def lifecycle_from(state: str | None, events: Iterable[Any], metadata: dict[str, Any]
                   ) -> Lifecycle:
    """Combine the registry's state and events with the manifest's lifecycle fields.

    `events` are registry Events, oldest first; the latest move to `deprecated` dates the
    deprecation (and gives a sunset and successor where the event records them).
    """
    deprecated_at = sunset = None
    successor = None
    for e in events:
        if getattr(e, "to_state", None) == "deprecated":
            deprecated_at = _when(getattr(e, "time", None))
            sunset = _when(getattr(e, "sunset", None)) or sunset
            successor = getattr(e, "successor", None) or successor
    meta_dep = metadata.get("deprecated")
    meta_retired = metadata.get("retired")
    deprecated = state in ("deprecated", *RETIRED_STATES) or bool(meta_dep) \
        or meta_retired not in (None, False)
    retired = state in RETIRED_STATES or meta_retired not in (None, False)
    if deprecated_at is None:
        deprecated_at = _when(meta_dep)
    sunset = sunset or _when(metadata.get("sunset")) or _when(meta_retired)
    successor = successor or (metadata.get("successor") if isinstance(
        metadata.get("successor"), str) else None)
    return Lifecycle(state, deprecated, deprecated_at, sunset, successor, retired)


class LifecycleTracker:
    """The model's Lifecycle, re-read from the registry at most every `refresh_s`."""

    def __init__(self, served: ServedModel, ws: Workspace | None, refresh_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.served, self.ws, self.refresh_s, self._clock = served, ws, refresh_s, clock
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._current = Lifecycle()

    def _read(self) -> Lifecycle:
        state, events = None, []
        if self.ws is not None and self.served.registered:
            try:
                state = self.ws.state_of(self.served.id)
                events = self.ws.history(self.served.id)
            except LmforgeError:
                return self._current  # a busy or moved registry: keep what we knew
        return lifecycle_from(state, events, self.served.manifest)

    def current(self) -> Lifecycle:
        now = self._clock()
        with self._lock:
            if now - self._at >= self.refresh_s:
                self._current, self._at = self._read(), now
            return self._current
