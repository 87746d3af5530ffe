"""A throwaway PostgreSQL server for tests, started from the Debian package's binaries
(apt-get install postgresql: /usr/lib/postgresql/<version>/bin), listening only on a unix
socket in its own temporary folder, with trust authentication, removed when done.

initdb and postgres refuse to run as root; as root they run as Debian's `postgres` user
(or `nobody`) through runuser, owning the temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
PREFERRED_VERSION = "15"
USER = "lmforge"
# The socket lives in a folder of its own, so any port number is free: it only names the file.
PORT = 5432


class CannotStart(Exception):
    """No server could start here; the message says why."""


@dataclass(frozen=True)
class Server:
    socket_dir: Path
    port: int
    version: str

    def url(self, dbname: str) -> str:
        return f"postgresql://{USER}@/{dbname}?host={self.socket_dir}&port={self.port}"


def find_bin() -> Path | None:
    """The bin folder of PostgreSQL 15 where installed, else of the newest version there."""
    found = sorted((p.parent for p in PG_ROOT.glob("*/bin/initdb")),
                   key=lambda b: (b.parent.name != PREFERRED_VERSION,
                                  -int(b.parent.name) if b.parent.name.isdigit() else 0))
    return found[0] if found else None


def _run_as() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the server with: ourselves unless we are root."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    raise CannotStart("running as root, and neither a `postgres` nor a `nobody` user with "
                      "runuser to start the server as")


@contextlib.contextmanager
def running(bin_dir: Path) -> Iterator[Server]:
    """Start a fresh server from `bin_dir`; stop it and remove its files on exit."""
    prefix, uid, gid = _run_as()
    base = Path(tempfile.mkdtemp(prefix="lmforge-pg-"))
    try:
        os.chmod(base, 0o755)
        if uid is not None:
            os.chown(base, uid, gid)
        data, log = base / "data", base / "server.log"

        def run(*args: str) -> None:
            done = subprocess.run([*prefix, *args], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                if log.exists():
                    tail += log.read_text(errors="replace").strip().splitlines()[-3:]
                raise CannotStart(f"{Path(args[0]).name} failed: {' | '.join(tail)}")

        # fsync off: a throwaway server; durability against power loss is not under test.
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth", "trust",
            "-E", "UTF8", "--locale", "C", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-k {base} -p {PORT} -c listen_addresses='' -c fsync=off "
                  f"-c max_connections=200", "start")
        try:
            yield Server(base, PORT, bin_dir.parent.name)
        finally:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(base, ignore_errors=True)
