"""Batch sizes tuned at load: the model's rows/s at run sizes 1, 2, 4, ... on this host.

Before a worker reports ready it takes its pool's :class:`~modelgate.core.batching.BatchPlan`
from the cache (same model content, CPU model, ORT threads and runtime version) or measures the
curve on its own session, on synthetic input, within ``budget_s``
(``WorkerSettings.tuning_budget_s``): each size is run until a few runs agree or its share of
the budget is spent, and its best run counts
(the one least disturbed by other work on the host). Sizes the budget does not reach are left
out of the curve, and so out of the choice. The worker then caches the curve, if it measured,
and publishes the plan for its pool; a worker started later (under load, or after a crash)
reads it and does not measure again, and one starting while another measures waits for that
one's curve rather than measure beside it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import redis

from modelgate.core import wire
from modelgate.core.batching import (
    BatchPlan,
    PlanError,
    Source,
    cpu_model,
    plan_for,
    sizes_to_measure,
)
from modelgate.core.repository import ModelVersion
from modelgate.core.store import batching as batching_store
from modelgate.worker.runner import Runner

log = logging.getLogger("modelgate.worker")

# Runs per size: at least MIN_RUNS (the first at a new shape allocates), at most MAX_RUNS
# (past it the best run no longer moves), within the size's share of the budget.
MIN_RUNS = 3
MAX_RUNS = 25


def host_signature(threads: int, limit: int) -> str:
    """What a curve depends on besides the model: the CPU, the threads a run uses, the runtime
    and the largest size measured."""
    return (f"{cpu_model()}; {threads} intra-op threads; onnxruntime {ort.__version__}; "
            f"sizes up to {limit}")


def synthetic_feeds(model: ModelVersion, rows: int) -> dict[str, np.ndarray]:
    """Inputs of ``rows`` rows: standard normal floats, zero integers, empty strings; other
    variable dimensions are 1."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model.inputs:
        shape = (rows, *(1 if d < 0 else d for d in spec.shape[1:]))
        if spec.datatype == wire.BYTES:
            feeds[spec.name] = np.full(shape, "", dtype=object)
            continue
        dtype = wire.NUMPY_DTYPES[spec.datatype]
        feeds[spec.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                            else np.zeros(shape, dtype=dtype))
    return feeds


def measure(runner: Runner, limit: int, budget_s: float,
            clock: Callable[[], float] = time.perf_counter) -> list[tuple[int, float]]:
    """(run size, rows/s) for sizes 1, 2, 4, ... ``limit`` measured on ``runner``'s session
    within ``budget_s``; empty when the model rejects synthetic input.

    Two passes, up the sizes and back down, each size's best run of both counting: work that
    starts on the host during the first pass (slowing its large sizes) or ends during it
    (flattering them) weighs on every size alike. The second pass runs only as far as the
    budget allows."""
    sizes = sizes_to_measure(limit)
    if not sizes or budget_s <= 0:
        return []
    deadline = clock() + budget_s
    share_s = budget_s / (4 * len(sizes))  # half the budget spread evenly over both passes
    best: dict[int, float] = {}
    for order in (sizes, sizes[::-1]):
        for size in order:
            if size not in best and best and order is not sizes:
                continue  # the first pass did not reach it: no second either
            # Made again on the way down rather than kept: one size's input in memory at once.
            timed = _best_run_s(runner, synthetic_feeds(runner.model, size), share_s,
                                deadline, clock)
            if timed is None:
                return []
            best[size] = min(best.get(size, timed), timed)
            # The next size runs about twice as long, MIN_RUNS times: stop if that passes the
            # end (on the way down, the next is shorter: go on while there is time).
            ahead_s = (2 if order is sizes else 0.5) * timed * MIN_RUNS
            if clock() + ahead_s > deadline:
                break
        if clock() >= deadline:
            break
    return [(size, size / max(best[size], 1e-9)) for size in sizes if size in best]


def _best_run_s(runner: Runner, feeds: dict[str, np.ndarray], share_s: float, deadline: float,
                clock: Callable[[], float]) -> float | None:
    """The shortest of a few runs on ``feeds`` (at least MIN_RUNS unless the deadline comes,
    until ``share_s`` is spent, at most MAX_RUNS); None when the model refuses them."""
    started = clock()
    best_s = float("inf")
    for runs in range(1, MAX_RUNS + 1):
        before = clock()
        try:
            runner.session.run(runner.output_names, feeds)
        except Exception as e:  # ORT's own exception types: synthetic input refused
            log.warning("tuning %s: a run on synthetic input failed (%s); not measuring",
                        runner.model.pool, str(e).splitlines()[0] if str(e) else e)
            return None
        after = clock()
        best_s = min(best_s, after - before)
        if after + best_s > deadline or (runs >= MIN_RUNS and after - started >= share_s):
            break
    return best_s


def cached_plan(client: redis.Redis, sha256: str, host: str) -> BatchPlan | None:
    """The curve cached for this content on this kind of host (None if none, unreadable or
    Redis is not serving: measuring costs less than waiting for it)."""
    try:
        raw = client.hget(batching_store.cache(sha256), host)
    except redis.RedisError as e:
        log.warning("tuning cache unreachable (%s); measuring", e)
        return None
    if raw is None:
        return None
    try:
        return BatchPlan.decode(raw)
    except PlanError as e:
        log.warning("tuning cache entry unreadable (%s); measuring again", e)
        return None


def tune(client: redis.Redis, version: ModelVersion, runner: Runner, threads: int,
         budget_s: float, poll_s: float = 0.1) -> BatchPlan:
    """The pool's plan: from the cache, else measured now (see the module's docstring).

    Of workers starting at once for the same content on the same kind of host, one measures
    (it holds :func:`~modelgate.core.store.batching.measuring`) and the others wait for its
    curve: they would slow each other's runs and the curve with them. A measurer that dies
    lets its claim lapse, and the others then measure themselves."""
    if not version.batchable:
        return plan_for(version, (), "", "", time.time())
    host = host_signature(threads, version.max_batch_size)
    cached = cached_plan(client, version.sha256, host)
    if cached is None and budget_s > 0 and not _claim(client, version.sha256, host, budget_s):
        cached = _await_curve(client, version.sha256, host, _claim_s(budget_s), poll_s)
    if cached is not None:
        return plan_for(version, cached.curve, Source.CACHED, host, cached.measured_at)
    started = time.monotonic()
    curve = measure(runner, version.max_batch_size, budget_s)
    plan = plan_for(version, curve, Source.MEASURED, host, time.time())
    log.info("tuned %s in %.2f s", version.pool, time.monotonic() - started)
    if curve:
        try:
            _cache(client, plan)
        except redis.RedisError as e:  # published with the plan once Redis takes writes
            log.warning("could not cache the curve yet (%s)", e)
    return plan


def _measuring(sha256: str, host: str) -> str:
    return batching_store.measuring(sha256, batching_store.host_id(host))


def _claim_s(budget_s: float) -> int:
    """How long a claim to measure holds: the budget, one run past it, and a margin."""
    return math.ceil(2 * budget_s + 5)


def _claim(client: redis.Redis, sha256: str, host: str, budget_s: float) -> bool:
    """Whether this worker measures (it took the claim, or Redis cannot say otherwise)."""
    try:
        return bool(client.set(_measuring(sha256, host), os.getpid(), nx=True,
                               ex=_claim_s(budget_s)))
    except redis.RedisError:
        return True


def _await_curve(client: redis.Redis, sha256: str, host: str, timeout_s: float,
                 poll_s: float) -> BatchPlan | None:
    """The curve another worker is measuring, once cached; None if it never comes (the claim
    lapsed or was released without one: the model refused synthetic input)."""
    deadline = time.monotonic() + timeout_s
    log.info("another worker measures this model on this kind of host; waiting for its curve")
    while time.monotonic() < deadline:
        cached = cached_plan(client, sha256, host)
        if cached is not None:
            return cached
        try:
            if not client.exists(_measuring(sha256, host)):
                return cached_plan(client, sha256, host)
        except redis.RedisError:
            return None
        time.sleep(poll_s)
    return None


def _cache(client: redis.Redis, plan: BatchPlan) -> None:
    """Cache a measured curve and release the claim to measure it."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(batching_store.cache(plan.sha256), plan.host, plan.encode())
    pipe.expire(batching_store.cache(plan.sha256), batching_store.CACHE_TTL_S)
    pipe.delete(_measuring(plan.sha256, plan.host))
    pipe.execute()


def publish(client: redis.Redis, pool: str, plan: BatchPlan) -> None:
    """Write the pool's plan and, when this worker measured its curve, cache the curve.
    Raises RedisError (the caller retries it with the rest of its start)."""
    pipe = client.pipeline(transaction=False)
    pipe.set(batching_store.plan(pool), plan.encode())
    if plan.curve_from:
        cache = batching_store.cache(plan.sha256)
        if plan.curve_from == Source.MEASURED:
            pipe.hset(cache, plan.host, plan.encode())
            pipe.delete(_measuring(plan.sha256, plan.host))
        pipe.expire(cache, batching_store.CACHE_TTL_S)
    pipe.execute()
