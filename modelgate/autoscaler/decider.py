"""The one decider of a deployment: whoever holds the control lease keeps the model state
(``control.py``) and scales every pool it names (``loop.py``); any other process running this
stands by until the lease lapses, then takes over. ``modelgate up``'s supervisor and the
``modelgate autoscaler`` service both run it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis

from modelgate.autoscaler.control import ModelControl
from modelgate.autoscaler.loop import Autoscaler
from modelgate.autoscaler.plans import plans_for
from modelgate.core.settings import ScalingSettings
from modelgate.core.store import models as model_store

log = logging.getLogger("modelgate.autoscaler")


class Decider:
    def __init__(self, client: redis.Redis, control: ModelControl, autoscaler: Autoscaler,
                 scaling: ScalingSettings, decider_id: str | None = None) -> None:
        self.client = client
        self.control = control
        self.autoscaler = autoscaler
        self.scaling = scaling
        self.id = decider_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.holding = False
        # The gate waits while the budget caps a candidate (the serving version goes first).
        control.rollouts.capped = lambda pool: (pool in autoscaler.last
                                                and autoscaler.last[pool].capped)

    def _take_lease(self) -> bool:
        value = model_store.lease_value(self.id, self.control.mode)
        held = bool(self.client.eval(model_store.TAKE_LEASE, 1, model_store.LEASE, value,
                                     int(model_store.LEASE_TTL_S * 1000)))
        if held != self.holding:
            log.info("%s the control lease" if held else "%s: another decider holds the "
                     "control lease; standing by", "took" if held else self.id)
        self.holding = held
        return held

    def tick(self, now: float | None = None) -> bool:
        """One round: model state, then scaling. False when standing by."""
        now = time.time() if now is None else now
        if not self._take_lease():
            return False
        states = self.control.tick(now)
        self.autoscaler.set_plans(plans_for(states, self.control.versions(), self.scaling,
                                            self.control.statuses))
        self.autoscaler.tick(now)
        return True

    def release(self) -> None:
        """Give the lease up at once (on a clean stop), so a successor need not wait."""
        value = model_store.lease_value(self.id, self.control.mode)
        try:
            if self.client.get(model_store.LEASE) == value.encode():
                self.client.delete(model_store.LEASE)
        except redis.RedisError:
            pass

    def run(self, stop: threading.Event, interval_s: float = 1.0,
            max_ticks: int | None = None, on_tick: Callable[[], None] | None = None) -> int:
        """Tick every ``interval_s`` until ``stop`` is set (or ``max_ticks``); returns ticks.

        ``on_tick`` runs after every tick, and also while Redis cannot be reached (a
        supervisor restarting what died, Redis included, must not wait for Redis).
        """
        ticks = 0
        backoff_s = 0.5
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            started = time.monotonic()
            try:
                self.tick()
                backoff_s = 0.5
            # Without observations (or with a tick that broke halfway) the safe action is
            # none: keep what runs, retry. Never fatal: a bad value read, the platform refusing
            # or a bug is logged and counted, and the next tick tries again.
            except Exception as e:
                self.autoscaler.errors.inc()
                if isinstance(e, redis.RedisError):
                    log.warning("cannot reach Redis (%s); holding, retry in %.1fs", e,
                                backoff_s)
                else:
                    log.exception("tick failed; holding, retry in %.1fs", backoff_s)
                try:
                    self.autoscaler.backend.supervise()  # replace what died, even while blind
                except Exception:
                    log.exception("backend upkeep failed too")
                if on_tick is not None:
                    on_tick()
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            ticks += 1
            if on_tick is not None:
                on_tick()
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
        return ticks
