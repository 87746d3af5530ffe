import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real datasets); tests using it skip where a clone lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it ships beside the repository on dev/CI machines)")
    return SHARED_DATA


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
