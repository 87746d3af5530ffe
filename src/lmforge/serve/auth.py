"""API keys: read from a file (one per line, `#` comments), kept only as sha256 digests,
compared in constant time. A request names its key as `Authorization: Bearer KEY` (what the
`openai` package sends) or `api-key: KEY`."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.serve.errors import APIError


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """The accepted keys' digests. `check` returns a short key id for logs and limits: the
    first hex digits of the digest, which do not reveal the key."""

    def __init__(self, keys: list[str]):
        self._digests = [digest(k) for k in keys]

    @classmethod
    def from_file(cls, path: str | Path) -> KeyStore:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LmforgeError(f"cannot read the API key file {path}: {e}",
                               hint="give a UTF-8 text file with one key per line") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip()
                .startswith("#")]
        if not keys:
            raise LmforgeError(f"the API key file {path} holds no key",
                               hint="write one key per line (lines starting with # are "
                                    "comments)")
        if any(len(k) < 8 for k in keys):
            raise LmforgeError(f"the API key file {path} holds a key shorter than 8 "
                               "characters", hint="use long random keys, e.g. `python -c "
                               "'import secrets; print(secrets.token_urlsafe(32))'`")
        return cls(keys)

    def check(self, presented: str | None) -> str:
        """The key id of a valid key; a 401 otherwise."""
        if not presented:
            raise APIError(401, "You didn't provide an API key. You need to provide your API "
                                "key in an Authorization header using Bearer auth (i.e. "
                                "Authorization: Bearer YOUR_KEY).", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        d = digest(presented)
        # Compare against every digest, so the time taken does not tell which one matched.
        match = None
        for known in self._digests:
            if hmac.compare_digest(d, known):
                match = known
        if match is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return "key-" + match.hex()[:12]


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key in `Authorization: Bearer KEY`, else in `api-key` (Azure's header)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return api_key.strip() if api_key else None
