"""Drift detectors per pool, fed from the workers' sampled batches in Redis.

Every gateway process reads each pool's ``mg:{pool}:drift`` stream from where it left off
(plain XREAD, no consumer group: every gateway sees every batch and computes the same state),
folds the batches into the detectors of modelgate.core.drift, keeps the latest alerts, appends
raised and cleared alerts to ``mg:{pool}:drift:alerts``, and sets the drift gauges.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import redis.asyncio as aioredis

from modelgate.core import keys
from modelgate.core.drift import (
    LABEL_OTHER_FRACTION,
    Batch,
    DriftEvent,
    FeatureState,
    Thresholds,
    fold,
    score,
)
from modelgate.core.profile import Profile, load_profile
from modelgate.core.repository import Model, RepositoryError
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

READ_COUNT = 200
ALERTS_KEPT = 100
ALERTS_MAXLEN = 1000


@dataclass(slots=True)
class PoolDrift:
    model: str
    version: str
    profile: Profile
    names: list[str]
    kinds: list[str]
    thresholds: Thresholds
    states: list[FeatureState]
    last_id: str = "0-0"
    sampled_rows: int = 0
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ALERTS_KEPT))


def _pool_drift(model: Model, profile: Profile) -> PoolDrift:
    names = [f.name for f in profile.features] + [lab.name for lab in profile.labels]
    kinds = ["input" if f.kind == "input" else "output" for f in profile.features]
    kinds += ["label"] * len(profile.labels)
    bins = max((len(f.fractions) for f in profile.features), default=2)
    thresholds = Thresholds.for_features(len(names), bins)
    states = [FeatureState(np.asarray(f.fractions, dtype=float),
                           thresholds.chi2_for(len(f.fractions)))
              for f in profile.features]
    for label in profile.labels:
        fractions = np.asarray([*label.fractions, LABEL_OTHER_FRACTION], dtype=float)
        states.append(FeatureState(fractions / fractions.sum(),
                                   thresholds.chi2_for(len(fractions)), cusum=False))
    return PoolDrift(model.name, model.default_version, profile, names, kinds, thresholds, states)


def _batch(raw: bytes, features: int, numeric: int) -> Batch:
    message = msgpack.unpackb(raw)
    chunk_rows = np.asarray(message["rows"], dtype=float)
    z = np.frombuffer(message["z"], dtype="<f8").reshape(len(chunk_rows), numeric)
    z_sums = np.zeros((len(chunk_rows), features))
    z_sums[:, :numeric] = z
    return Batch(z_sums, chunk_rows, [np.asarray(b, dtype=float) for b in message["bins"]],
                 np.asarray(message["sums"], dtype=float),
                 np.asarray(message["squares"], dtype=float))


class DriftMonitor:
    def __init__(self, models: dict[str, Model], metrics: Metrics) -> None:
        self.metrics = metrics
        self.pools: dict[str, PoolDrift] = {}
        self.unprofiled: set[str] = set()
        for name, model in models.items():
            try:
                profile = load_profile(model.default) if model.default.batchable else None
            except RepositoryError as e:
                log.warning("drift for %s is off: %s", name, e)
                profile = None
            if profile is None:
                self.unprofiled.add(name)
            else:
                self.pools[model.default.pool] = _pool_drift(model, profile)

    async def poll(self, client: aioredis.Redis) -> None:
        """Fold every batch added since the last poll; one XREAD for all pools."""
        if not self.pools:
            return
        streams = {keys.drift_stream(pool): d.last_id for pool, d in self.pools.items()}
        response = await client.xread(streams, count=READ_COUNT)
        raised: list[tuple[str, dict[str, Any]]] = []
        for stream, entries in response or []:
            pool = stream.decode().removeprefix(f"{keys.PREFIX}:").removesuffix(":drift")
            drift = self.pools[pool]
            numeric = len(drift.profile.features)
            for entry_id, fields in entries:
                drift.last_id = entry_id.decode()
                try:
                    batch = _batch(fields[b"batch"], len(drift.states), numeric)
                except (KeyError, ValueError, TypeError, msgpack.UnpackException) as e:
                    log.warning("dropped a malformed drift batch on %s: %s", pool, e)
                    continue
                drift.sampled_rows += batch.rows
                for event in fold(drift.states, drift.thresholds, batch, time.time()):
                    raised.append((pool, self._record(drift, event)))
        if raised:
            pipe = client.pipeline(transaction=False)
            for pool, alert in raised:
                pipe.xadd(keys.drift_alerts(pool), {k: str(v) for k, v in alert.items()},
                          maxlen=ALERTS_MAXLEN, approximate=True)
            await pipe.execute()
        self._gauges()

    def _record(self, drift: PoolDrift, event: DriftEvent) -> dict[str, Any]:
        alert = {"feature": drift.names[event.feature], "statistic": event.statistic,
                 "value": round(event.value, 3), "threshold": round(event.threshold, 3),
                 "window_rows": event.window_rows, "time": round(event.time, 3)}
        drift.alerts.append(alert)
        log.warning("drift %s on %s %s: %s %.2f (threshold %.2f)",
                    "cleared" if event.statistic == "cleared" else "alert", drift.model,
                    alert["feature"], event.statistic, event.value, event.threshold)
        return alert

    def _gauges(self) -> None:
        for drift in self.pools.values():
            for name, state in zip(drift.names, drift.states, strict=True):
                self.metrics.drift_score.labels(drift.model, name).set(
                    round(score(state, drift.thresholds), 4))
                self.metrics.drift_alert.labels(drift.model, name).set(int(state.alert))

    def report(self, model: str, pool: str) -> dict[str, Any]:
        """The body of GET /v2/models/{name}/drift."""
        drift = self.pools.get(pool)
        if drift is None:
            return {"model": model, "profile": False, "message":
                    "no reference profile; build one with `modelgate profile --model "
                    f"{model} --data FILE`", "features": [], "alerts": []}
        features = []
        profiled = list(drift.profile.features)
        for i, (name, state) in enumerate(zip(drift.names, drift.states, strict=True)):
            reference: dict[str, Any] = {"fractions": state.reference_fractions.tolist()}
            if i < len(profiled):
                reference.update(mean=profiled[i].mean, std=profiled[i].std,
                                 edges=list(profiled[i].edges))
            else:
                label = drift.profile.labels[i - len(profiled)]
                reference.update(classes=[*label.classes, "other"])
            counts = state.last_counts if state.last_counts is not None else state.window_counts
            total = float(counts.sum())
            features.append({
                "name": name, "kind": drift.kinds[i],
                "score": round(score(state, drift.thresholds), 4), "alert": state.alert,
                "alert_since": state.alert_since,
                "statistics": {"cusum": round(max(state.s_pos, state.s_neg), 3)
                               if state.cusum else None, "chi2": round(state.last_chi2, 3)},
                "thresholds": {"cusum": round(drift.thresholds.cusum_h, 3)
                               if state.cusum else None, "chi2": round(state.chi2_threshold, 3)},
                "window_rows": state.window_n, "window_target": drift.thresholds.window_rows,
                "reference": reference,
                "current": {"mean": state.last_mean, "std": state.last_std,
                            "fractions": (counts / total).tolist() if total else None},
            })
        return {
            "model": model, "version": drift.version, "profile": True,
            "message": f"{sum(s.alert for s in drift.states)} feature(s) drifting",
            "false_alarm_budget": f"1 per {1 / drift.thresholds.false_alarms_per_row:,.0f} "
                                  "sampled rows across all features",
            "sampled_rows": drift.sampled_rows, "features": features,
            "alerts": list(drift.alerts)[-20:],
        }
