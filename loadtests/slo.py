"""An SLO gate for locust runs: the exit code says whether the run met its latency and error
objectives, and the output says which objective failed, by how much.

``register(locust.events)`` (the locustfile does it) adds these flags, each also read from its
environment variable:

==================== ============================ ========================================
flag                 environment                  fails the run when, over all requests
==================== ============================ ========================================
--slo-p95-ms MS      MODELGATE_SLO_P95_MS         95th percentile response time > MS
--slo-p99-ms MS      MODELGATE_SLO_P99_MS         99th percentile response time > MS
--slo-error-rate F   MODELGATE_SLO_ERROR_RATE     failed / all requests > F (default 0)
--slo-min-requests N MODELGATE_SLO_MIN_REQUESTS   fewer than N requests (default 1)
==================== ============================ ========================================

and at ``events.quitting`` evaluates locust's aggregated statistics, prints the verdict (every
check, observed against allowed) and sets ``environment.process_exit_code``: 1 if any check
failed, else 0. The outcome is repeated in one line at the very end, below locust's tables.

The gate always decides the exit code, so with no flags it behaves like plain locust (any
failed request fails the run), except that a run without a single request fails too.
Exceptions raised by user code also fail it. Latency checks run only when their threshold is
given. In a distributed run only the master judges; its statistics hold every worker's.

Pure evaluation (:func:`evaluate`) is kept apart from locust, which is imported by the caller,
so tests can check verdicts without gevent's monkey-patching.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from locust.env import Environment
    from locust.event import Events

FAILED_EXIT_CODE = 1


@dataclass(frozen=True, slots=True)
class Thresholds:
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float = 0.0  # failed / all requests, 0..1
    min_requests: int = 1

    @classmethod
    def from_options(cls, options: Any) -> Thresholds:
        """From locust's parsed options (the flags registered by :func:`add_flags`)."""
        return cls(p95_ms=options.slo_p95_ms, p99_ms=options.slo_p99_ms,
                   error_rate=options.slo_error_rate, min_requests=options.slo_min_requests)


@dataclass(frozen=True, slots=True)
class Observed:
    """What a run measured, aggregated over every request."""

    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float
    exceptions: int = 0  # raised by user code (tasks, on_start), not failed requests

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    observed: str
    limit: str
    passed: bool
    source: str  # where the threshold comes from, so a reader knows what to change
    at_least: bool = False  # the limit is a floor (request count), not a ceiling

    def summary(self) -> str:
        """``p95 latency 12 ms <= 250 ms`` or ``p95 latency 812 ms > 250 ms allowed``."""
        if self.passed:
            return f"{self.what} {self.observed} {'>=' if self.at_least else '<='} {self.limit}"
        if self.at_least:
            return f"{self.what} {self.observed} < {self.limit} required"
        return f"{self.what} {self.observed} > {self.limit} allowed"

    def line(self) -> str:
        if self.passed:
            return f"  ok    {self.summary()}"
        return f"  FAIL  {self.summary()}  [{self.source}]"


@dataclass(frozen=True, slots=True)
class Verdict:
    checks: tuple[Check, ...]
    observed: Observed

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def violations(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def report(self) -> str:
        """The verdict with every check; what failed first, by how much, and which flag."""
        o = self.observed
        figures = (f"{o.requests} requests, {o.failures} failed, {o.requests_per_s:.1f} req/s, "
                   f"p50 {o.p50_ms:g} ms, p95 {o.p95_ms:g} ms, p99 {o.p99_ms:g} ms")
        if self.passed:
            return (f"SLO gate PASSED ({figures}): "
                    + "; ".join(c.summary() for c in self.checks))
        return "\n".join([
            f"SLO gate FAILED: {len(self.violations)} of {len(self.checks)} checks violated "
            f"over {figures}",
            *(c.line() for c in self.checks),
        ])

    def headline(self) -> str:
        """One line for the end of the output, below locust's tables."""
        if self.passed:
            return "SLO gate PASSED (exit code 0)"
        return ("SLO gate FAILED (exit code 1): "
                + "; ".join(c.summary() for c in self.violations))


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def evaluate(thresholds: Thresholds, observed: Observed) -> Verdict:
    """Every check that applies, passed or not, in a fixed order."""
    checks = [Check("requests", str(observed.requests), str(thresholds.min_requests),
                    observed.requests >= thresholds.min_requests,
                    "--slo-min-requests / MODELGATE_SLO_MIN_REQUESTS", at_least=True)]
    # A gate over nothing is no gate: latency and error figures of zero requests pass vacuously,
    # so say only that there were too few requests.
    if observed.requests:
        checks.append(Check("error rate", f"{_percent(observed.error_rate)} "
                            f"({observed.failures} of {observed.requests})",
                            _percent(thresholds.error_rate),
                            observed.error_rate <= thresholds.error_rate,
                            "--slo-error-rate / MODELGATE_SLO_ERROR_RATE"))
        if thresholds.p95_ms is not None:
            checks.append(Check("p95 latency", _ms(observed.p95_ms), _ms(thresholds.p95_ms),
                                observed.p95_ms <= thresholds.p95_ms,
                                "--slo-p95-ms / MODELGATE_SLO_P95_MS"))
        if thresholds.p99_ms is not None:
            checks.append(Check("p99 latency", _ms(observed.p99_ms), _ms(thresholds.p99_ms),
                                observed.p99_ms <= thresholds.p99_ms,
                                "--slo-p99-ms / MODELGATE_SLO_P99_MS"))
    checks.append(Check("exceptions in locust user code", str(observed.exceptions), "0",
                        observed.exceptions == 0, "fix the locustfile; see the error report"))
    return Verdict(tuple(checks), observed)


# --------------------------------------------------------------------------- locust wiring


def _bounded(kind: Callable[[str], float], low: float, high: float | None = None,
             *, low_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            bounds = f"{'>' if low_open else '>='} {low:g}" + (
                f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def add_flags(parser: Any) -> None:
    """The ``--slo-*`` flags on locust's (configargparse) parser, with their env variables."""
    group = parser.add_argument_group(
        "SLO gate", "thresholds over all requests; the run exits 1 when one is exceeded")
    group.add_argument("--slo-p95-ms", type=_bounded(float, 0.0, low_open=True), default=None,
                       env_var="MODELGATE_SLO_P95_MS", metavar="MS",
                       help="fail if the 95th percentile response time is above MS")
    group.add_argument("--slo-p99-ms", type=_bounded(float, 0.0, low_open=True), default=None,
                       env_var="MODELGATE_SLO_P99_MS", metavar="MS",
                       help="fail if the 99th percentile response time is above MS")
    group.add_argument("--slo-error-rate", type=_bounded(float, 0.0, 1.0), default=0.0,
                       env_var="MODELGATE_SLO_ERROR_RATE", metavar="FRACTION",
                       help="fail if more than this fraction of requests failed (0.01 = 1%%; "
                            "default 0: any failure fails)")
    group.add_argument("--slo-min-requests", type=_bounded(int, 0), default=1,
                       env_var="MODELGATE_SLO_MIN_REQUESTS", metavar="N",
                       help="fail if fewer than N requests were made (default 1)")


def observe(environment: Environment) -> Observed:
    """The aggregated ("Aggregated" row) statistics of a finished run."""
    total = environment.stats.total
    runner = environment.runner
    return Observed(
        requests=total.num_requests,
        failures=total.num_failures,
        p50_ms=float(total.get_response_time_percentile(0.50) or 0.0),
        p95_ms=float(total.get_response_time_percentile(0.95) or 0.0),
        p99_ms=float(total.get_response_time_percentile(0.99) or 0.0),
        requests_per_s=float(total.total_rps),
        exceptions=sum(e["count"] for e in runner.exceptions.values()) if runner else 0,
    )


class Gate:
    """The listeners: judge at ``quitting``, repeat the outcome at ``quit`` (after the tables)."""

    def __init__(self) -> None:
        self.verdict: Verdict | None = None

    def on_quitting(self, environment: Environment, **_kwargs: Any) -> None:
        """Judge the run and set the exit code (the master or a local runner only)."""
        from locust.runners import WorkerRunner  # loaded by now; see the module docstring

        if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
            return
        self.verdict = evaluate(Thresholds.from_options(environment.parsed_options),
                                observe(environment))
        environment.process_exit_code = 0 if self.verdict.passed else FAILED_EXIT_CODE
        print(self.verdict.report(), flush=True)

    def on_quit(self, **_kwargs: Any) -> None:
        if self.verdict is not None:
            print(self.verdict.headline(), flush=True)


def register(events: Events) -> Gate:
    """Add the flags and the gate's listeners to locust's event hooks."""
    gate = Gate()
    events.init_command_line_parser.add_listener(add_flags)
    events.quitting.add_listener(gate.on_quitting)
    events.quit.add_listener(gate.on_quit)
    return gate
