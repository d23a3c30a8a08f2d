"""Under CI a skipped test fails the run: CI checks what it claims, not less.

With ``CI=true`` in the environment, a run whose tests all passed exits 1 when any test was
skipped (``pytest.skip``, ``skipif``, ``importorskip``, or a whole module skipped while
collected) or marked xfail without ``strict``: each of those checked nothing. Just above the
closing line, the run names every such test with its reason. A strict xfail stays allowed
(an unexpected pass fails it). Outside CI skips stay allowed; ``-ra`` lists them with their
reasons. tests/conftest.py loads this plugin; pytest's own exit 5 (no test collected) fails
CI without it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping

import pytest

SECTION = "skipped under CI"


def under_ci(environ: Mapping[str, str]) -> bool:
    """CI services set ``CI=true``; ``1`` and ``yes`` count too."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _strict_xfail(item: pytest.Item) -> bool:
    """Whether the item's xfail marker is strict (as pytest decides it: the marker's own
    ``strict``, else the ``strict_xfail`` ini option, else ``strict``)."""
    mark = item.get_closest_marker("xfail")
    if mark is None:
        return False  # pytest.xfail() called in the test: never strict
    strict = mark.kwargs.get("strict")
    if strict is None:
        strict = item.config.getini("strict_xfail")
    if strict is None:
        strict = item.config.getini("strict")
    return bool(strict)


class SkipGate:
    """Collects what did not really run and turns a passing run into a failing one."""

    def __init__(self) -> None:
        self.unchecked: list[tuple[str, str, str]] = []  # (test id, outcome, reason)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
            self, item: pytest.Item,
            call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        wasxfail = getattr(report, "wasxfail", None)
        if wasxfail is not None:
            if not _strict_xfail(item) and (report.skipped or report.when == "call"):
                outcome = "xfailed" if report.skipped else "xpassed"
                self.unchecked.append((report.nodeid, f"{outcome} (xfail not strict)",
                                       wasxfail.removeprefix("reason: ")))
        elif report.skipped:
            self.unchecked.append((report.nodeid, "skipped", _skip_reason(report)))
        return report

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.unchecked.append((report.nodeid, "skipped", _skip_reason(report)))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unchecked and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unchecked:
            return
        terminalreporter.section(SECTION, red=True)
        for nodeid, outcome, reason in self.unchecked:
            terminalreporter.line(f"{nodeid} - {outcome}: {reason or '(no reason given)'}")
        terminalreporter.line(
            f"CI=true and {len(self.unchecked)} test(s) checked nothing, so this run fails: "
            "install what they need (`make system-deps`, the dev extra) or fix them.",
            red=True)


def pytest_configure(config: pytest.Config) -> None:
    if under_ci(os.environ):
        config.pluginmanager.register(SkipGate(), "skip-gate")
