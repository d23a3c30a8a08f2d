"""Typed, immutable settings, one object per process, built once in ``main`` and passed down.

Every command-line flag also reads ``MODELGATE_<FLAG>`` from the environment (``--redis-url`` <-
``MODELGATE_REDIS_URL``); see ``modelgate.cli.main``. Nothing here reads the environment by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    models_dir: Path
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS
    # How often the gateway refreshes worker liveness and backlog from Redis.
    monitor_interval_s: float = 0.5
    # A worker whose last heartbeat is older than this is not counted as live.
    worker_ttl_s: float = 5.0
    # Replies waiting for a gateway that died are dropped by Redis after this long.
    reply_ttl_s: int = 60
    # Admission control: requests this process waits on at once, and the backlog per model
    # when its config sets no max_queue. Past either the answer is 429 at once.
    max_inflight: int = 8_192
    default_max_queue: int = 10_000
    max_body_bytes: int = 32 * 1024 * 1024
    # Optional API keys; probes (health, metrics, /openapi.json) stay open unless
    # protect_probes is set.
    api_keys: tuple[str, ...] = ()
    protect_probes: bool = False
    # Longest a Redis command may take before the gateway treats Redis as unreachable.
    redis_timeout_s: float = 1.0
    # Share the port with other gateway processes (SO_REUSEPORT; `up --gateway-procs N`).
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    models_dir: Path
    model: str
    redis_url: str
    version: str | None = None  # None = the model's default (highest) version
    intra_op_threads: int | None = None  # None = the model's config, else 1
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    # Longest a worker blocks on an empty stream; bounds how fast it notices a stop request.
    block_ms: int = 500
    reply_ttl_s: int = 60
    worker_id: str | None = None  # None = generated from host and pid
    # Entries pending this long with their consumer silent are taken over (never below this
    # floor; grows with the pool's slowest recent step).
    claim_timeout_floor_ms: int = 5_000
    reclaim_interval_s: float = 1.0
    # Deliveries after which an entry is parked in the dead-letter stream.
    max_deliveries: int = 3


@dataclass(frozen=True, slots=True)
class UpSettings:
    models_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None  # None = start an embedded redis-server
    min_workers: int = 1
    max_workers: int = 4
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS
    api_keys: tuple[str, ...] = ()
    protect_probes: bool = False
    scale_down_delay_s: float = 30.0
    max_cost_per_hour: float | None = None
    gateway_procs: int = 1
