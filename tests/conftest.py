"""Shared fixtures, and the rule that CI runs every cross-check.

Cross-checks against reference implementations (datatrove, datasketch, lm-eval, transformers)
and tests on real data need an extra installed and ../shared/data beside the repository. On a
user's clone they skip, saying why. With CI=true a skip for either reason is a failure: CI
must not go green with the cross-checks unrun. LMFORGE_SHARED_DATA points the tests at
another data folder (tests of this rule use it for a folder that does not exist).
"""

import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")
SHARED_DATA_ABSENT = "shared data absent"  # the start of every such skip's reason
# The start of a skip's reason for a missing system package (Debian's chromium, say): CI
# fails it too. Tests that CI cannot provide for carry a marker that the default run leaves out.
SYSTEM_PACKAGE_ABSENT = "system package absent"
_IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real datasets); tests using it skip where a clone lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA_ABSENT}: {SHARED_DATA} (it ships beside the repository on "
                    "dev and CI machines; LMFORGE_SHARED_DATA points elsewhere)")
    return SHARED_DATA


def _missing_prerequisite(excinfo) -> str | None:
    """Why a skip would hide a cross-check: shared data absent, or an import that failed in
    pytest.importorskip (a reference package's extra not installed). None for other skips
    (a GPU-only test on a CPU machine, say)."""
    if excinfo is None or not excinfo.errisinstance(pytest.skip.Exception):
        return None
    message = str(excinfo.value.msg if hasattr(excinfo.value, "msg") else excinfo.value)
    if message.startswith(SHARED_DATA_ABSENT):
        return f"{message}; put the data there"
    if message.startswith(SYSTEM_PACKAGE_ABSENT):
        return f"{message}; install it, or leave this test's marker out of the run"
    if any(entry.frame.code.name == "importorskip" for entry in excinfo.traceback):
        return (f"a reference package is not installed ({message}); install the README's "
                "extras, .[dev,hf,data,eval]")
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _IN_CI and report.skipped:
        why = _missing_prerequisite(call.excinfo)
        if why is not None:
            report.outcome = "failed"
            report.longrepr = f"CI=true: this test would skip, and CI must run it: {why}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    # A module-level pytest.importorskip skips the whole file at collection.
    report = yield
    if _IN_CI and report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
        if "could not import" in message or SHARED_DATA_ABSENT in message:
            report.outcome = "failed"
            report.longrepr = (f"CI=true: {collector.nodeid} would be skipped, and CI must run "
                               f"it: {message}; install the README's extras, .[dev,hf,data,eval]")
    return report


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    """Run `lmforge ARGS...` in-process against a fresh workspace: (exit code, stdout, stderr)."""
    from lmforge.cli import main

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    run.workspace = tmp_path / "ws"  # type: ignore[attr-defined]
    return run
