"""Every version of a model side by side: where it came from (its lineage: run, parameters,
training metrics, registry entry) beside how it has done since it loaded (calls, error rate,
p50/p99, drift). The body of ``GET /v2/models/{name}/versions`` and of the dashboard's version
panel; it knows nothing about HTTP.

Live figures come from the pool's running totals, which the decider folds from the per-second
counters (``core/store/lineage.py``): without a decider they stay empty. Agreement with the
serving (default) version is the shadowed calls' tally since the version loaded
(``core/store/traffic.py``, merged across gateways): ``null`` for the serving version itself
and for a version no traffic is shadowed to.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from modelgate.core.errors import ModelNotFound
from modelgate.core.lineage import Lineage
from modelgate.core.repository import ModelScan, check_name, scan_model
from modelgate.core.stats import percentile_ms
from modelgate.core.store import lineage as lineage_store
from modelgate.core.store import pools
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.traffic import AgreementTally
from modelgate.gateway.drift import DriftMonitor
from modelgate.gateway.serving import POOLED, ServedModel

AGREEMENT_NOTE = ("agreement with the serving version over calls shadowed to this one since "
                  "it loaded (modelgate traffic MODEL --shadow); null without them")


def live_figures(totals: dict[str, float],
                 agreement: dict[str, Any] | None = None) -> dict[str, Any]:
    """Calls, errors and latency since the pool was created, from its totals; agreement with
    the serving version (``AgreementTally.summary``), when calls were shadowed to it."""
    calls = totals.get("completed", 0.0)
    errors = totals.get("errors", 0.0)
    return {
        "since": totals.get("since"), "through": totals.get("through"),
        "calls": int(calls), "errors": int(errors),
        "rejected": int(totals.get("rejected", 0.0)),
        "error_rate": round(errors / calls, 6) if calls else None,
        "p50_ms": _round(percentile_ms(totals, 0.50)),
        "p99_ms": _round(percentile_ms(totals, 0.99)),
        "agreement": agreement,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# A model folder is read at most this often for the view (reading a graph costs its size).
SCAN_TTL_S = 5.0


class FolderScans:
    """Model folders as last read, each re-read at most every ``ttl_s``."""

    def __init__(self, models_dir: Path, ttl_s: float = SCAN_TTL_S) -> None:
        self.models_dir = models_dir
        self.ttl_s = ttl_s
        self._scans: dict[str, tuple[float, ModelScan | None]] = {}

    async def get(self, name: str) -> ModelScan | None:
        """The model's folder (None when it has none)."""
        check_name(name)
        found = self._scans.get(name)
        if found is not None and time.monotonic() - found[0] < self.ttl_s:
            return found[1]
        folder = self.models_dir / name
        scan = await asyncio.to_thread(lambda: scan_model(folder) if folder.is_dir() else None)
        if len(self._scans) > 1000:
            self._scans.clear()
        self._scans[name] = (time.monotonic(), scan)
        return scan


async def versions_view(client: aioredis.Redis, served: ServedModel | None,
                        scan: ModelScan | None, drift: DriftMonitor,
                        tracking_uri: str | None, name: str) -> dict[str, Any]:
    """Each version the model serves or has on disk, highest first."""
    if served is None and scan is None:
        raise ModelNotFound(f"unknown model {name!r}")
    state = served.state if served is not None else None
    numbers = set(served.versions if served is not None else ()) | set(
        scan.versions if scan is not None else ())
    ordered = sorted(numbers, key=int, reverse=True)
    pooled = [v for v in ordered if served is not None and v in served.versions
              and served.versions[v].state.status in POOLED]
    serving = state.default if state is not None else None
    shadowed = [v for v in pooled if serving is not None and v != serving]
    pipe = client.pipeline(transaction=False)
    for version in pooled:
        pipe.hgetall(lineage_store.totals(pools.pool_id(name, version)))
    for version in shadowed:
        pipe.hgetall(traffic_store.agreement(name, str(serving), version, "total"))
    pipe.get(lineage_store.registry(name))
    results = await pipe.execute()
    totals = {v: lineage_store.decode_totals(raw) for v, raw in zip(pooled, results,
                                                                       strict=False)}
    agreements = {}
    for version, raw in zip(shadowed, results[len(pooled):], strict=False):
        tally = AgreementTally.parse(raw)
        agreements[version] = tally.summary() if tally.n else None
    registry = lineage_store.RegistryStatus.decode(results[-1])
    loadable = scan.loadable() if scan is not None else {}
    rows = []
    for version in ordered:
        served_version = served.versions.get(version) if served is not None else None
        loaded = (served_version.version if served_version is not None
                  and served_version.version is not None else loadable.get(version))
        found = scan.versions.get(version) if scan is not None else None
        if served_version is not None:
            status, reason = served_version.state.status.value, served_version.state.reason
            sha256 = served_version.state.sha256
        else:
            status = "UNAVAILABLE"
            reason = (found.error if found is not None and found.error else
                      scan.unserved_reason(version) if scan is not None else "")
            sha256 = loaded.sha256 if loaded is not None else ""
        lineage = loaded.lineage if loaded is not None else Lineage()
        pool = pools.pool_id(name, version)
        rows.append({
            "version": version, "state": status, "reason": reason, "sha256": sha256,
            "default": state is not None and state.default == version,
            "lineage": None if lineage.empty else lineage.body(),
            "run_url": lineage.run_url(tracking_uri),
            "warnings": list(lineage.warnings),
            "live": live_figures(totals[version], agreements.get(version))
            if version in totals else None,
            "drift": drift.summary(pool) if version in totals else None,
        })
    return {
        "name": name,
        "default_version": state.default if state is not None else None,
        "source": scan.source if scan is not None else None,
        "registry": registry.body() if registry is not None else None,
        "agreement": AGREEMENT_NOTE,
        "versions": rows,
    }
