"""tests/skip_gate.py: with CI=true a run that skipped anything fails and says what; without
CI skips stay allowed. Each case runs pytest for real, in a subprocess, on a tiny test file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.procs import REPO_ROOT
from tests.skip_gate import SECTION, under_ci

PASSES = "def test_passes():\n    assert 1 + 1 == 2\n"


def run_pytest(folder: Path, source: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """pytest, with the gate as its only plugin, on ``folder`` where ``test_sample.py`` holds
    ``source``."""
    (folder / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the venv's plugins only slow each run down
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_gate", "-p", "no:cacheprovider",
         "-q", "-ra", "."],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False)


SKIPS = PASSES + """
import pytest

def test_needs_a_browser():
    pytest.skip("no chromium on PATH")
"""


def test_under_ci_a_skip_fails_the_run_naming_the_test_and_its_reason(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPS, ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert SECTION in result.stdout
    assert "test_sample.py::test_needs_a_browser - skipped: no chromium on PATH" in result.stdout
    assert "1 test(s) checked nothing" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout  # pytest's own summary is left as it was


def test_outside_ci_a_skip_is_allowed_and_its_reason_shown(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPS, ci=False)
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert SECTION not in result.stdout
    assert "no chromium on PATH" in result.stdout  # by -ra


def test_under_ci_a_run_without_skips_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, PASSES, ci=True)
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert SECTION not in result.stdout


def test_under_ci_a_module_skipped_while_collected_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text(PASSES)
    result = run_pytest(tmp_path, textwrap.dedent("""
        import pytest

        pytest.importorskip("no_such_module_here", reason="the optional tool is missing")

        def test_never_runs():
            pass
        """), ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "test_sample.py - skipped: the optional tool is missing" in result.stdout


def test_under_ci_an_xfail_that_is_not_strict_counts_as_a_skip(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, PASSES + textwrap.dedent("""
        import pytest

        @pytest.mark.xfail(reason="known bug 12")
        def test_known_bug():
            assert False

        @pytest.mark.xfail(reason="fixed long ago")
        def test_stale_marker():
            pass
        """), ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "test_known_bug - xfailed (xfail not strict): known bug 12" in result.stdout
    assert "test_stale_marker - xpassed (xfail not strict): fixed long ago" in result.stdout


def test_under_ci_a_strict_xfail_is_a_real_check_and_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, PASSES + textwrap.dedent("""
        import pytest

        @pytest.mark.xfail(reason="documents a limit", strict=True)
        def test_limit():
            assert False
        """), ci=True)
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert SECTION not in result.stdout


def test_under_ci_a_failure_keeps_its_exit_status(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPS + "\ndef test_fails():\n    assert 1 == 2\n", ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "1 failed, 1 passed, 1 skipped" in result.stdout


def test_under_ci_no_test_collected_still_exits_5(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "def helper():\n    pass\n", ci=True)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("", False), ("false", False), ("0", False),
])
def test_ci_is_read_from_the_ci_variable(value: str, expected: bool) -> None:
    assert under_ci({"CI": value}) is expected
    assert under_ci({}) is False


def test_this_test_session_loads_the_gate(pytestconfig: pytest.Config) -> None:
    """tests/conftest.py loads it, so `make test` and .ci/run are gated, not only this file."""
    assert pytestconfig.pluginmanager.has_plugin("tests.skip_gate")
    assert pytestconfig.pluginmanager.has_plugin("skip-gate") is under_ci(os.environ)
