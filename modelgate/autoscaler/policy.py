"""The scaling policy: a pure function of an observation, the policy's state and ``now``.

``decide`` never reads a clock or Redis; the control loop and the simulator both call it, and
tests step it tick by tick with an injected ``now``. Each tick it computes a *raw* worker count
from three signals and then shapes it:

1. **Backlog**: ``ceil(backlog / target_backlog_per_worker)`` -- reacts to queues at once.
2. **Little's law**: ``ceil(arrival_rate * service_s / target_utilisation)`` -- sizes the pool
   for the offered load with headroom, before a queue forms.
3. **SLO guard**: if the observed p95 latency is over ``slo_p95_ms`` while work is waiting,
   grow in proportion to the overshoot (at least one more worker).

Shaping, in order: a tolerance band (no change for a deviation under ``tolerance``); a panic
mode when the raw count is at least ``panic_threshold`` times the current one, during which
nothing scales down; scale-down stabilisation (the highest raw count over the last
``scale_down_delay_s`` wins, so a dip does not remove workers that are needed a moment later);
a cap on how many workers one tick may add (lifted in panic) or remove; and
``min_workers``/``max_workers``. With
``min_workers == 0`` an idle pool scales to zero after the stabilisation window, and any
backlog or arrival brings one worker back (the gateway holds calls meanwhile).

Batch jobs are a signal of their own (:func:`job_need`), kept apart from these: the loop grants
the workers a job asks for only after every pool's online needs, within the budget
(``budget.allocate``), and a job wakes a pool scaled to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NOISE_SIGMAS = 4.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What the loop saw of one pool (from Redis alone)."""

    pool: str
    workers: int  # live + starting replicas (what the backend runs now)
    backlog: int  # requests waiting or in work (pools.queued)
    arrival_rate: float  # requests/s over the short window
    completion_rate: float  # requests/s over the short window
    service_s: float | None  # worker-seconds per request (compute), None if nothing ran
    latency_p95_ms: float | None  # queue wait + compute, p95 over the latency window
    live_workers: int = 0
    starting_workers: int = 0
    rate_window_s: float = 3.0  # how long arrival_rate was counted over (sets its noise)
    job_chunks: int = 0  # batch-job chunks on the pool's job stream, not yet answered


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    min_workers: int = 1
    max_workers: int = 4
    target_backlog_per_worker: float = 8.0
    target_utilisation: float = 0.7
    slo_p95_ms: float | None = None
    tolerance: float = 0.1
    panic_threshold: float = 2.0
    panic_window_s: float = 6.0
    scale_down_delay_s: float = 30.0
    max_step_up: int = 4  # per tick, or the current count if larger (at most doubling)
    max_step_down: int = 1  # per tick

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 0 <= min_workers ({self.min_workers}) <= max_workers "
                             f"({self.max_workers})")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("target_utilisation must be in (0, 1]")
        if self.target_backlog_per_worker <= 0:
            raise ValueError("target_backlog_per_worker must be positive")


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between ticks: recent raw counts and the panic deadline."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw count), oldest first
    panic_until: float = 0.0
    since: float | None = None  # first tick: no scale-down before a full window is seen


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str
    state: PolicyState = field(default_factory=PolicyState)
    raw: int = 0
    panicking: bool = False


def need(obs: Observation, config: PolicyConfig) -> tuple[float, str]:
    """The (fractional) worker count the signals ask for this tick, and which signal set it."""
    candidates = [(0.0, "idle")]
    if obs.backlog > 0:
        candidates.append((obs.backlog / config.target_backlog_per_worker,
                           f"backlog {obs.backlog}"))
    if obs.arrival_rate > 0:
        service_s = obs.service_s if obs.service_s is not None else 0.0
        candidates.append((max(obs.arrival_rate * service_s / config.target_utilisation,
                               1.0 if obs.workers == 0 else 0.0),
                           f"arrivals {obs.arrival_rate:.1f}/s x {service_s * 1000:.1f} ms "
                           f"/ {config.target_utilisation:.0%}"))
    # Late answers with requests still queueing beyond what the workers hold: grow in
    # proportion to the overshoot. Without the queue condition a latency window that still
    # remembers a past burst would keep adding workers that have nothing to do.
    if (config.slo_p95_ms and obs.latency_p95_ms is not None
            and obs.backlog > max(obs.workers, 1)
            and obs.latency_p95_ms > config.slo_p95_ms):
        overshoot = obs.latency_p95_ms / config.slo_p95_ms
        current = max(obs.workers, 1)
        candidates.append((max(current + 1.0, current * min(overshoot, 2.0)),
                           f"p95 {obs.latency_p95_ms:.0f} ms over SLO {config.slo_p95_ms:.0f} ms"))
    return max(candidates, key=lambda c: c[0])


# Job chunks per worker the job signal sizes a pool for: a job keeps a window of chunks in
# flight, and a worker takes one at a time.
CHUNKS_PER_WORKER = 4


def job_need(obs: Observation, config: PolicyConfig) -> int:
    """Workers batch jobs ask for: none without chunks waiting; else one per
    CHUNKS_PER_WORKER chunks, at least one (a job wakes a pool at zero), at most
    ``max_workers``."""
    if obs.job_chunks <= 0 or config.max_workers <= 0:
        return 0
    return min(config.max_workers, max(1, math.ceil(obs.job_chunks / CHUNKS_PER_WORKER)))


def _clamp(count: int, config: PolicyConfig) -> int:
    return min(max(count, config.min_workers), config.max_workers)


def decide(obs: Observation, state: PolicyState, now: float,
           config: PolicyConfig) -> Decision:
    current = obs.workers
    wanted, why = need(obs, config)
    raw = _clamp(math.ceil(wanted - 1e-9), config)
    # The tolerance band works on the fractional need (HPA's rule), so noise around a whole
    # number of workers does not flip the count. Upward, an arrivals-driven need must clear
    # the band widened to four standard deviations of the Poisson noise in the arrivals counted
    # (a false alarm about once in 30,000 ticks: hours at a tick a second); the short window
    # reacts in seconds and this keeps its noise from being read as load. Downward, the count
    # remembered for stabilisation is the smallest that keeps the need within the band, so a
    # need hovering just above a whole number does not pin an extra worker.
    up_band = config.tolerance
    if why.startswith("arrivals"):
        counted = max(obs.arrival_rate * obs.rate_window_s, 1.0)
        up_band = max(up_band, NOISE_SIGMAS / math.sqrt(counted))
    enough = _clamp(math.ceil(wanted / (1.0 + config.tolerance) - 1e-9), config)

    window_start = now - config.scale_down_delay_s
    history = (*(r for r in state.recommendations if r[0] > window_start), (now, enough))
    panic_until = state.panic_until
    if current > 0 and raw >= config.panic_threshold * current:
        panic_until = now + config.panic_window_s
    panicking = now < panic_until
    since = now if state.since is None else state.since
    new_state = PolicyState(history, panic_until, since)

    outside_bounds = not config.min_workers <= current <= config.max_workers
    if raw > current and (current == 0 or outside_bounds or wanted > current * (1 + up_band)):
        # In panic (a burst: the need doubled) go straight to it, as Knative's panic mode
        # does: every tick of a capped climb is a start-up delay more of queueing.
        step = raw - current if panicking else max(config.max_step_up, current)
        desired = min(raw, current + step)
        reason = f"scale up: {why}" + (f" (capped at +{step} per tick)" if desired < raw else "")
        return Decision(desired, reason + (" [panic]" if panicking else ""), new_state, raw,
                        panicking)
    if raw > current:
        return Decision(current, f"hold: {why} is within the {up_band:.0%} tolerance",
                        new_state, raw, panicking)
    if enough < current or current > config.max_workers:
        if panicking:
            return Decision(current, "hold: panic mode, no scale-down", new_state, raw, True)
        stable = max(r for _, r in history)
        if now - since < config.scale_down_delay_s:
            stable = max(stable, current)  # the window is not full yet: what runs was needed
        stable = min(stable, config.max_workers)
        if stable >= current:
            return Decision(current, f"hold: needed {stable} within the last "
                            f"{config.scale_down_delay_s:.0f} s", new_state, raw, False)
        desired = max(stable, current - config.max_step_down)
        return Decision(desired, f"scale down: {why}, highest need in "
                        f"{config.scale_down_delay_s:.0f} s is {stable}", new_state, raw, False)
    return Decision(current, f"steady: {why}", new_state, raw, panicking)
