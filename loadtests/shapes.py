"""Load shapes: how many users run over time, for steady, step, spike and soak tests.

Pick one with ``MODELGATE_LOADTEST_SHAPE=steady|step|spike|soak``; without it, locust's own
``-u``/``-r``/``--run-time`` drive the run. It has to be an environment variable: locust finds
a shape by scanning the locustfile's module namespace when it imports it, before any flag is
parsed.

Locust uses the first shape class it finds there and ignores any other (older versions refuse
to start), so every class here is marked ``abstract``: the locustfile makes a concrete subclass
of the selected one only (:func:`selected`), and ``locust -f loadtests/`` loading this file on
its own adds none.

A shape is a table of stages. ``-u``/``--users`` is the peak user count and each stage runs a
fraction of it; the shape sets its own spawn rates (``-r`` is not used). Durations are those of
a real test; ``MODELGATE_LOADTEST_TIME_SCALE`` multiplies them (``0.1`` turns the 30-minute soak
into 3 minutes). ``--run-time``, when given, ends any shape early.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from locust import LoadTestShape

SHAPE_ENV = "MODELGATE_LOADTEST_SHAPE"
TIME_SCALE_ENV = "MODELGATE_LOADTEST_TIME_SCALE"
MAX_SPAWN_RATE = 100.0  # users per second; locust warns that faster ramps misbehave


@dataclass(frozen=True, slots=True)
class Stage:
    until_s: float  # when the stage ends, from the start of the test, before scaling
    users: float  # fraction of the peak user count
    ramp_s: float  # the spawn rate reaches the peak count in this many seconds, before scaling


def plan(stages: tuple[Stage, ...], run_time_s: float, time_scale: float,
         peak_users: int) -> tuple[int, float] | None:
    """(users, spawn rate per second) at ``run_time_s``, or None once the last stage is over."""
    for stage in stages:
        if run_time_s < stage.until_s * time_scale:
            users = max(1, round(stage.users * peak_users))
            ramp_s = stage.ramp_s * time_scale
            rate = peak_users / ramp_s if ramp_s > 0 else MAX_SPAWN_RATE
            return users, min(rate, MAX_SPAWN_RATE)
    return None


def time_scale(environ: Mapping[str, str]) -> float:
    raw = environ.get(TIME_SCALE_ENV, "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise ValueError(f"{TIME_SCALE_ENV} must be a number above 0 (1 = full length), "
                         f"got {raw!r}")
    return scale


class StagedShape(LoadTestShape):
    """Runs ``stages`` in order, then stops the test."""

    abstract = True
    use_common_options = True  # -u is the peak; --run-time caps the shape
    stages: ClassVar[tuple[Stage, ...]] = ()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()  # locust constructs shapes without arguments, at import
        self.time_scale = time_scale(os.environ if environ is None else environ)

    def duration_s(self) -> float:
        return self.stages[-1].until_s * self.time_scale

    def tick(self) -> tuple[int, float] | None:
        options: Any = self.runner.environment.parsed_options if self.runner else None
        peak_users = int(getattr(options, "num_users", None) or 1)
        run_time_s = self.get_run_time()
        limit_s = getattr(options, "run_time", None)
        if limit_s and run_time_s >= limit_s:
            return None
        return plan(self.stages, run_time_s, self.time_scale, peak_users)


class SteadyShape(StagedShape):
    """The peak for two minutes, after a 10 s ramp: the baseline to compare others with."""

    abstract = True
    stages = (Stage(120, 1.0, 10),)


class StepShape(StagedShape):
    """A quarter of the peak more every minute: where does latency start to bend?"""

    abstract = True
    stages = (Stage(60, 0.25, 5), Stage(120, 0.5, 5), Stage(180, 0.75, 5), Stage(240, 1.0, 5))


class SpikeShape(StagedShape):
    """A minute at a quarter of the peak, 30 s at the peak reached within a second, then back:
    does the system absorb a burst (queue, scale out) and recover?"""

    abstract = True
    stages = (Stage(60, 0.25, 5), Stage(90, 1.0, 1), Stage(150, 0.25, 1))


class SoakShape(StagedShape):
    """The peak for 30 minutes: leaks, slow drift, queues that never quite drain."""

    abstract = True
    stages = (Stage(1800, 1.0, 30),)


SHAPES: dict[str, type[StagedShape]] = {
    "steady": SteadyShape, "step": StepShape, "spike": SpikeShape, "soak": SoakShape,
}


def selected(environ: Mapping[str, str]) -> type[StagedShape] | None:
    """A concrete (locust-visible) subclass of the shape named in the environment, or None."""
    name = environ.get(SHAPE_ENV, "").strip().lower()
    if not name:
        return None
    if name not in SHAPES:
        raise ValueError(f"{SHAPE_ENV}={name!r} is not a shape; choose one of "
                         f"{', '.join(SHAPES)} (or leave it unset for -u/-r/--run-time)")
    time_scale(environ)  # a bad scale fails here, with the message, not in locust's loader
    base = SHAPES[name]
    # The metaclass marks a class abstract only when its own body says so.
    return type(base.__name__, (base,), {"__doc__": base.__doc__,
                                         "__module__": base.__module__})
