"""The rule of tests/conftest.py: on a user's clone a cross-check without its data or its
reference package skips with a reason; with CI=true the same skip fails the run. Checked in a
separate pytest run over a few small test files, with LMFORGE_SHARED_DATA pointing at a folder
that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
FILES = {
    "test_data.py": "def test_needs_data(shared_data):\n    assert shared_data.is_dir()\n",
    "test_extra.py": ("import pytest\n\n\ndef test_needs_a_reference():\n"
                      "    pytest.importorskip('lmforge_no_such_reference_package')\n"),
    "test_extra_module.py": ("import pytest\n\n"
                             "pytest.importorskip('lmforge_no_such_reference_package')\n\n\n"
                             "def test_cross_check():\n    pass\n"),
    "test_other_skip.py": ("import pytest\n\n\ndef test_gpu_only():\n"
                           "    pytest.skip('needs a GPU')\n"),
}


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    for name, body in FILES.items():
        pytester.makepyfile(**{name[:-3]: body})
    monkeypatch.setenv("LMFORGE_SHARED_DATA", str(tmp_path / "no-shared-data"))
    return pytester


def test_a_clone_skips_with_reasons(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*shared data absent*no-shared-data*",
                                 "*could not import*lmforge_no_such_reference_package*"])


def test_ci_fails_where_a_cross_check_would_skip(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess("-rs", "-p", "no:cacheprovider",
                                        "--continue-on-collection-errors")
    # Data (a fixture: an error at setup), a test's import (a failure), a module's import (a
    # collection error, which alone stops a plain run). A skip for another reason stays.
    result.assert_outcomes(failed=1, errors=2, skipped=1)
    for line in ("*CI=true*shared data absent*", "*CI=true*reference package is not installed*",
                 "*CI=true*test_extra_module.py would be skipped*", "SKIPPED*needs a GPU*"):
        result.stdout.fnmatch_lines([line])
    assert result.ret != 0
