"""Drift detectors per pool, fed from the workers' sampled batches in Redis.

Every gateway process reads each pool's ``mg:{pool}:drift`` stream from where it left off
(plain XREAD, no consumer group: every gateway sees every batch and computes the same state),
folds the batches into the detectors of modelgate.core.drift, keeps the latest alerts, appends
raised and cleared alerts to ``mg:{pool}:drift:alerts``, and sets the drift gauges.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

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
from modelgate.core.repository import ModelVersion, RepositoryError
from modelgate.core.store import drift as drift_store
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

READ_COUNT = 200
ALERTS_KEPT = 100


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
    alerts: deque[drift_store.DriftAlert] = field(
        default_factory=lambda: deque(maxlen=ALERTS_KEPT))


def _pool_drift(model: ModelVersion, profile: Profile) -> PoolDrift:
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
    return PoolDrift(model.name, model.version, profile, names, kinds, thresholds, states)


def _batch(raw: bytes, features: int, numeric: int) -> Batch:
    """A worker's batch as the detectors take it: numeric features' z sums padded to every
    feature (labels have none). Raises DriftRecordError for a batch of another shape."""
    record = drift_store.DriftBatch.decode(raw)
    if record.z.shape[1] != numeric or len(record.bins) != features:
        raise drift_store.DriftRecordError(
            f"batch of {record.z.shape[1]} numeric and {len(record.bins)} features in all, "
            f"the profile has {numeric} and {features}")
    z_sums = np.zeros((len(record.chunk_rows), features))
    z_sums[:, :numeric] = record.z
    return Batch(z_sums, np.asarray(record.chunk_rows, dtype=float),
                 [np.asarray(b, dtype=float) for b in record.bins],
                 np.asarray(record.sums, dtype=float), np.asarray(record.squares, dtype=float))


class DriftMonitor:
    """Detectors for every served version that has a reference profile."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.pools: dict[str, PoolDrift] = {}
        self.unprofiled: set[str] = set()  # pools without a profile
        self._seen: dict[str, str] = {}  # pool -> the content (sha256) its detectors are for

    def sync(self, versions: list[ModelVersion]) -> None:
        """Detect drift for exactly these versions: new ones start afresh, a version whose
        content changed starts afresh, versions gone are dropped (and their gauges)."""
        wanted = {v.pool: v for v in versions}
        for pool in [p for p in self._seen if p not in wanted]:
            drift = self.pools.pop(pool, None)
            self.unprofiled.discard(pool)
            del self._seen[pool]
            if drift is not None:
                for name in drift.names:
                    for gauge in (self.metrics.drift_score, self.metrics.drift_alert):
                        with contextlib.suppress(KeyError):
                            gauge.remove(drift.model, drift.version, name)
        for pool, version in wanted.items():
            if self._seen.get(pool) == version.sha256:
                continue
            self._seen[pool] = version.sha256
            try:
                profile = load_profile(version) if version.rows_axis else None
            except RepositoryError as e:
                log.warning("drift for %s is off: %s", pool, e)
                profile = None
            if profile is None:
                self.pools.pop(pool, None)
                self.unprofiled.add(pool)
            else:
                self.pools[pool] = _pool_drift(version, profile)
                self.unprofiled.discard(pool)

    async def poll(self, client: aioredis.Redis) -> None:
        """Fold every batch added since the last poll; one XREAD for all pools."""
        if not self.pools:
            return
        pool_of = {drift_store.batches(pool): pool for pool in self.pools}
        streams = {stream: self.pools[pool].last_id for stream, pool in pool_of.items()}
        response = await client.xread(streams, count=READ_COUNT)
        raised: list[tuple[str, drift_store.DriftAlert]] = []
        for stream, entries in response or []:
            pool = pool_of[stream.decode()]
            drift = self.pools[pool]
            numeric = len(drift.profile.features)
            for entry_id, fields in entries:
                drift.last_id = entry_id.decode()
                try:
                    batch = _batch(fields[b"batch"], len(drift.states), numeric)
                    events = fold(drift.states, drift.thresholds, batch, time.time())
                except (KeyError, drift_store.DriftRecordError) as e:
                    log.warning("dropped a malformed drift batch on %s: %s", pool, e)
                    self.metrics.malformed_records.labels("drift").inc()
                    continue
                # Anything else a batch makes the detectors raise is bad data too: one batch
                # dropped, never the poller.
                except Exception:
                    log.exception("dropped a drift batch on %s the detectors could not fold",
                                  pool)
                    self.metrics.malformed_records.labels("drift").inc()
                    continue
                drift.sampled_rows += batch.rows
                for event in events:
                    raised.append((pool, self._record(drift, event)))
        # Before the alerts' write: a scrape during it sees what the drift report says.
        self._gauges()
        if raised:
            pipe = client.pipeline(transaction=False)
            for pool, alert in raised:
                pipe.xadd(drift_store.alerts(pool), alert.fields(),
                          maxlen=drift_store.ALERTS_MAXLEN, approximate=True)
            await pipe.execute()

    def _record(self, drift: PoolDrift, event: DriftEvent) -> drift_store.DriftAlert:
        alert = drift_store.DriftAlert(drift.names[event.feature], event.statistic,
                                       round(event.value, 3), round(event.threshold, 3),
                                       event.window_rows, round(event.time, 3))
        drift.alerts.append(alert)
        log.warning("drift %s on %s %s: %s %.2f (threshold %.2f)",
                    "cleared" if event.statistic == "cleared" else "alert", drift.model,
                    alert.feature, event.statistic, event.value, event.threshold)
        return alert

    def _gauges(self) -> None:
        for drift in self.pools.values():
            for name, state in zip(drift.names, drift.states, strict=True):
                self.metrics.drift_score.labels(drift.model, drift.version, name).set(
                    round(score(state, drift.thresholds), 4))
                self.metrics.drift_alert.labels(drift.model, drift.version, name).set(
                    int(state.alert))

    def summary(self, pool: str) -> dict[str, Any]:
        """One version's drift in a word: ``none`` (no reference profile), ``ok`` or
        ``alert``, with the drifting features."""
        drift = self.pools.get(pool)
        if drift is None:
            return {"state": "none", "features": []}
        drifting = [n for n, s in zip(drift.names, drift.states, strict=True) if s.alert]
        return {"state": "alert" if drifting else "ok", "features": drifting,
                "sampled_rows": drift.sampled_rows}

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
            "alerts": [a.body() for a in list(drift.alerts)[-20:]],
        }
