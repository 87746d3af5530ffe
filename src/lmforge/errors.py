"""The exceptions that reach the user as a clean message instead of a traceback: a mistake
(LmforgeError, exit 2) and a training run stopped by a signal after saving (Interrupted, 130)."""

from __future__ import annotations


class LmforgeError(Exception):
    """A user-facing error: what was wrong, where, and how to fix it.

    The CLI prints it as one line (plus the hint) and exits with code 2.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written before leaving, and the
    same command (or `lmforge run` again) resumes from it."""
