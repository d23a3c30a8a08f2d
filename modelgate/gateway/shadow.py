"""Shadow calls: a copy of a call mirrored to a candidate version after the serving version's
answer is written, and the agreement between the two answers.

A mirrored copy never delays the caller's answer, never reaches the caller and never counts as
the caller's error: it is its own traffic (metrics route ``shadow``, and the candidate pool's
arrivals, so its cost is the candidate's). It is shed first under load: past
``MAX_IN_FLIGHT`` copies waiting in this gateway, when the candidate has no live worker or a
backlog past half its limit, or when this gateway is past half its in-flight cap; shed copies
are counted (``modelgate_shadow_shed_total``), never queued without bound.

Agreement is counted per (model, serving, candidate) in memory and flushed with the gateway's
other counters into one Redis hash a second plus one since the candidate loaded
(``core/store/traffic.py``), where every gateway's counts add up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from modelgate.core import wire
from modelgate.core.agreement import compare
from modelgate.core.errors import ModelgateError
from modelgate.core.prediction import PredictionError, PredictionSpec
from modelgate.core.repository import ModelVersion
from modelgate.core.stats import BUCKET_TTL_S
from modelgate.core.store import traffic
from modelgate.gateway.dispatch import Dispatcher
from modelgate.gateway.errors import status_of
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

MAX_IN_FLIGHT = 256  # copies one gateway process waits on at once
SHADOW_TIMEOUT_MS = 30_000

Pair = tuple[str, str, str]  # model, serving version, candidate version


class Mirror:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics,
                 spec_of: Callable[[ModelVersion], PredictionSpec]) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.spec_of = spec_of
        self.tallies: dict[Pair, traffic.AgreementTally] = {}
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, primary: ModelVersion, candidate: ModelVersion, request: wire.Request,
             answer: wire.Reply, admit: Callable[[ModelVersion], bool]) -> None:
        """Mirror ``request`` to ``candidate`` once the caller's answer is out (``admit``
        says whether the candidate can take it now; the copy is shed when it cannot)."""
        if answer.status != wire.ReplyStatus.OK or self.in_flight >= MAX_IN_FLIGHT or \
                not admit(candidate):
            self.metrics.shadow_shed.labels(candidate.name, candidate.version).inc()
            return
        self.in_flight += 1
        # call_soon: the task is created after this step, in which the answer is written.
        asyncio.get_running_loop().call_soon(self._start, primary, candidate, request, answer)

    def _start(self, primary: ModelVersion, candidate: ModelVersion, request: wire.Request,
               answer: wire.Reply) -> None:
        task = asyncio.create_task(self._mirror(primary, candidate, request, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(self, primary: ModelVersion, candidate: ModelVersion,
                      request: wire.Request, answer: wire.Reply) -> None:
        started = time.perf_counter()
        status = 200
        try:
            deadline_ms = int(time.time() * 1000) + SHADOW_TIMEOUT_MS
            reply = await self.dispatcher.submit(candidate.pool, request, deadline_ms,
                                                 candidate.max_batch_size)
            if reply.status != wire.ReplyStatus.OK:
                status = 400 if reply.status == wire.ReplyStatus.BAD_INPUT else 500
                return
            self._agree(primary, candidate, answer, reply)
        except ModelgateError as e:
            status = status_of(e)
        except Exception:  # a copy must never take the gateway down with it
            log.exception("a shadow call to %s failed", candidate.pool)
            status = 500
        finally:
            self.in_flight -= 1
            self.metrics.count_request(candidate.name, candidate.version, "http", "shadow",
                                       status, time.perf_counter() - started)

    def _agree(self, primary: ModelVersion, candidate: ModelVersion, answer: wire.Reply,
               reply: wire.Reply) -> None:
        spec = self.spec_of(primary)
        served = {n: t.data for n, t in answer.outputs.items() if t.datatype != wire.JSON}
        mirrored = {n: t.data for n, t in reply.outputs.items() if t.datatype != wire.JSON}
        try:
            rows, matches, deltas = compare(spec, served, mirrored)
        except PredictionError as e:
            log.debug("no agreement for %s vs %s: %s", primary.pool, candidate.pool, e)
            return
        pair = (primary.name, primary.version, candidate.version)
        self.tallies.setdefault(pair, traffic.AgreementTally()).add(rows, matches, deltas)

    def flush(self, pipe: Any, now: float) -> None:
        """Queue this gateway's agreement counts since the last flush, and reset them."""
        tallies, self.tallies = self.tallies, {}
        for (model, serving, candidate), tally in tallies.items():
            for epoch in (int(now), "total"):
                key = traffic.agreement(model, serving, candidate, epoch)
                for name, value in tally.fields().items():
                    if isinstance(value, float) and not value.is_integer():
                        pipe.hincrbyfloat(key, name, value)
                    else:
                        pipe.hincrby(key, name, int(value))
                if epoch != "total":
                    pipe.expire(key, BUCKET_TTL_S)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
