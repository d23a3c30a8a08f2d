"""``modelgate status``: the live system as a readable table, from Redis alone."""

from __future__ import annotations

import time
from typing import TextIO

import redis

from modelgate.autoscaler.observe import Observer
from modelgate.core import keys

RECENT_DECISIONS = 8


def _pools(client: redis.Redis) -> list[str]:
    suffix = ":requests"
    found = set()
    for key in client.scan_iter(match=f"{keys.PREFIX}:*{suffix}", count=500):
        name = key.decode()
        found.add(name[len(keys.PREFIX) + 1:-len(suffix)])
    return sorted(found)


def _workers(client: redis.Redis, pool: str) -> list[dict[str, str]]:
    ids = [w.decode() for w in client.zrangebyscore(keys.pool_workers(pool), time.time() - 10,
                                                    "+inf")]
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(keys.worker_heartbeat(worker_id))
    rows = []
    for worker_id, fields in zip(ids, pipe.execute(), strict=True):
        if fields:
            rows.append({"id": worker_id, **{k.decode(): v.decode() for k, v in fields.items()}})
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(client: redis.Redis, out: TextIO) -> int:
    pools = _pools(client)
    if not pools:
        print("no model pools in this Redis yet (no request stream exists)", file=out)
        return 0
    observations = Observer(client).observe({p: 0 for p in pools})
    desired = client.mget([keys.pool_desired(p) for p in pools])
    print(f"{'pool':<24}{'workers':>8}{'starting':>9}{'desired':>8}{'backlog':>8}"
          f"{'in/s':>8}{'out/s':>8}{'p95 ms':>8}{'svc ms':>8}", file=out)
    for pool, want in zip(pools, desired, strict=True):
        obs = observations[pool]
        print(f"{pool:<24}{obs.live_workers:>8}{obs.starting_workers:>9}"
              f"{(want or b'-').decode():>8}{obs.backlog:>8}{obs.arrival_rate:>8.1f}"
              f"{obs.completion_rate:>8.1f}{_fmt(obs.latency_p95_ms):>8}"
              f"{_fmt(obs.service_s * 1000 if obs.service_s is not None else None, digits=2):>8}",
              file=out)
    print("\nworkers", file=out)
    for pool in pools:
        for w in _workers(client, pool):
            uptime = time.time() - float(w.get("started", time.time()))
            print(f"  {w['id']:<36} {pool:<20} pid {w.get('pid', '?'):>7} "
                  f"up {uptime:>6.0f}s  processed {w.get('processed', '0'):>8}  "
                  f"busy {float(w.get('busy', 0)):.0%}", file=out)
    events = client.xrevrange(keys.AUTOSCALER_EVENTS, count=RECENT_DECISIONS * len(pools))
    changes = [e for _, e in events if e.get(b"current") != e.get(b"desired")]
    print("\nlast scaling decisions" + ("" if changes else ": none (steady)"), file=out)
    for fields in (changes or [])[:RECENT_DECISIONS]:
        when = time.strftime("%H:%M:%S", time.localtime(float(fields[b"time"])))
        print(f"  {when} {fields[b'pool'].decode():<16} {fields[b'current'].decode()} -> "
              f"{fields[b'desired'].decode()}  {fields[b'reason'].decode()}", file=out)
    if events:
        _, latest = events[0]
        print(f"\nlatest tick: {latest[b'reason'].decode()}", file=out)
    _drift(client, pools, out)
    return 0


def _drift(client: redis.Redis, pools: list[str], out: TextIO) -> None:
    """Features whose latest drift event is an alert (not cleared)."""
    pipe = client.pipeline(transaction=False)
    for pool in pools:
        pipe.xrevrange(keys.drift_alerts(pool), count=200)
    active = []
    for pool, entries in zip(pools, pipe.execute(), strict=True):
        latest: dict[str, dict[bytes, bytes]] = {}
        for _, fields in entries:  # newest first: the first seen per feature is its state
            latest.setdefault(fields[b"feature"].decode(), fields)
        for feature, fields in sorted(latest.items()):
            if fields[b"statistic"] != b"cleared":
                active.append((pool, feature, fields))
    print("\ndrift alerts" + ("" if active else ": none"), file=out)
    for pool, feature, fields in active:
        when = time.strftime("%H:%M:%S", time.localtime(float(fields[b"time"])))
        print(f"  {when} {pool:<16} {feature:<24} {fields[b'statistic'].decode()} "
              f"{fields[b'value'].decode()} > {fields[b'threshold'].decode()}", file=out)
