"""Who made a change to the record, and with which command line: every lifecycle event
keeps both, so the record answers "who retired this, and how?" without anyone's memory."""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import sys
from pathlib import Path


def actor() -> str:
    """`user@host`; LMFORGE_ACTOR overrides (a CI job or a service account names itself)."""
    if os.environ.get("LMFORGE_ACTOR", "").strip():
        return os.environ["LMFORGE_ACTOR"].strip()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname() or 'localhost'}"


def command_line() -> str:
    """This process's command line as a shell would take it back: `lmforge registry retire
    m-1`, or `python -m pytest ...` for a module run with -m."""
    argv = list(sys.argv) or [""]
    program = Path(argv[0]).name
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if program in ("__main__.py", "") and spec is not None and spec.name:
        words = ["python", "-m", spec.name.removesuffix(".__main__")]
    elif program in ("-c", "-"):  # a program given inline or on stdin: not kept
        words = ["python", program]
    else:
        words = [program]
    return shlex.join(words + argv[1:])
