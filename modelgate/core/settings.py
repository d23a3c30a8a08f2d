"""Typed, immutable settings, one object per process, built once in ``main`` and passed down.

Every default is declared here once; the command line (``modelgate.cli.main``) reads them from
these classes (:func:`default_of`) and never restates them. Every flag also reads
``MODELGATE_<FLAG>`` from the environment (``--redis-url`` <- ``MODELGATE_REDIS_URL``). Nothing
here reads the environment by itself.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from modelgate.core.store.heartbeats import HEARTBEAT_INTERVAL_S, WORKER_TTL_S

# Environment variables holding servers' secrets: passed to the processes that need them, and
# to no other (workers never need API keys).
SECRET_VARIABLES = ("MODELGATE_API_KEY", "MODELGATE_ADMIN_API_KEY",
                    "MODELGATE_MLFLOW_WEBHOOK_SECRET", "MLFLOW_TRACKING_TOKEN",
                    "MLFLOW_TRACKING_PASSWORD")


def default_of(settings: type, name: str) -> Any:
    """The declared default of one setting."""
    for f in fields(settings):
        if f.name == name:
            if f.default is MISSING:
                raise KeyError(f"{settings.__name__}.{name} has no default")
            return f.default
    raise KeyError(f"{settings.__name__} has no setting {name!r}")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    models_dir: Path
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    # The Open Inference Protocol over gRPC (inference.GRPCInferenceService), beside HTTP in
    # the same process; 0: no gRPC. Triton's 8001 is one above its HTTP 8000: so is ours.
    grpc_port: int = 8081
    default_timeout_ms: int = 30_000
    # How often the gateway refreshes worker liveness and backlog from Redis.
    monitor_interval_s: float = 0.5
    # Replies waiting for a gateway that died are dropped by Redis after this long.
    reply_ttl_s: int = 60
    # Admission control: requests this process waits on at once, and the backlog per model
    # when its config sets no max_queue. Past either the answer is 429 at once.
    max_inflight: int = 8_192
    max_queue: int = 10_000
    # One body, JSON and binary tensor data together: Triton's --http-max-input-size default,
    # what a V2 client expects to send.
    max_body_bytes: int = 64 * 1024 * 1024
    # Bytes of bodies one gateway process holds at once, from arrival to answer: two of the
    # largest bodies, or any number of small ones. Past it, 429.
    max_inflight_bytes: int = 128 * 1024 * 1024
    # Bodies whose JSON part is this large or more are parsed in parser processes (at most
    # parse_processes of them), not on the event loop: parsing 256 KiB of JSON takes ~5 ms.
    large_body_bytes: int = 256 * 1024
    parse_processes: int = 1
    # Optional API keys. With keys, /metrics needs one; the health probes and /openapi.json
    # stay open (the probes' bodies then name no model to a caller without a key) unless
    # protect_probes is set.
    api_keys: tuple[str, ...] = ()
    # Keys for calls that change what is served (repository load/unload); they work on every
    # other call too. With any set, application keys cannot load or unload models.
    admin_api_keys: tuple[str, ...] = ()
    protect_probes: bool = False
    # Longest a Redis command may take before the gateway treats Redis as unreachable.
    redis_timeout_s: float = 1.0
    # Share the port with other gateway processes (SO_REUSEPORT); the gRPC port too.
    reuse_port: bool = False
    # A listening socket handed down by a supervisor (``modelgate up``), instead of binding:
    # calls that arrive while this process restarts wait in its queue, not refused.
    fd: int | None = None
    # The MLflow tracking server, for links to runs (MLFLOW_TRACKING_URI); None: links only
    # for versions whose metadata names it.
    mlflow_tracking_uri: str | None = None
    # MLflow webhooks signed with this secret are accepted without an API key (MLflow cannot
    # send one); they only make the decider ask the registry sooner.
    mlflow_webhook_secret: str | None = None
    # A request's headers must arrive within this long (of the connection opening, or of the
    # next request's first byte); its body within body_timeout_s of its headers: 64 MiB at
    # 1.1 MB/s. Past either, 408 and the socket is closed (gateway/connections.py).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    # Connections one gateway process holds at once (idle keep-alive ones included; the one
    # idle longest is closed to make room); lowered to what the open-file limit allows.
    max_connections: int = 4_096
    # Append every answer on the protocol's REST paths to a file in this folder (conformance
    # checks: gateway/recorder.py); None: off.
    record_answers: Path | None = None
    # Batch jobs read and write files only under this folder; None: only uploaded inputs.
    jobs_dir: Path | None = None
    # Write every V2 infer call's stage timestamps to a file in this folder
    # (modelgate.core.trace, bench/trace.py); None: off, nothing timed.
    trace_dir: Path | None = None
    # Large request tensors go to the workers through this much shared memory (/dev/shm,
    # modelgate.core.arena) instead of through Redis; only for workers on this host, so 0
    # (off) unless `modelgate up` says otherwise.
    payload_arena_mb: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    models_dir: Path
    model: str
    redis_url: str
    version: str | None = None  # None = the model's default (highest) version
    intra_op_threads: int | None = None  # None = the model's config, else 1
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_ttl_s: float = WORKER_TTL_S
    # Longest a worker blocks on an empty stream; bounds how fast it notices a stop request.
    block_ms: int = 500
    reply_ttl_s: int = 60
    worker_id: str | None = None  # None = generated from host and pid
    # A dead worker's entries (its heartbeat expired) are taken over once idle this long; a
    # live worker's never are, however long its step.
    claim_timeout_ms: int = 5_000
    reclaim_interval_s: float = 1.0
    # Deliveries (the first plus one per worker that died holding the entry) after which it
    # is parked in the dead-letter stream.
    max_deliveries: int = 3
    # Longest the worker measures its model's rows/s by batch size at load, when no curve is
    # cached for it on this kind of host (modelgate.worker.tuning); 0: never measure.
    tuning_budget_s: float = 2.0
    # Write every entry's stage timestamps to a file in this folder (modelgate.core.trace);
    # None: off, nothing timed.
    trace_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """What the autoscaler needs, wherever it runs (``up`` or its own process)."""

    min_workers: int = 1
    max_workers: int = 4
    # Seconds a lower worker count must be enough before workers are removed.
    scale_down_delay_s: float = 30.0
    # Budget across pools: sum of workers x worker_cost_per_hour; None = no budget.
    max_cost_per_hour: float | None = None


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How the decider reaches an MLflow tracking server for models with a ``source:``:
    MLflow's own variables ``MLFLOW_TRACKING_URI`` and, if the server needs them,
    ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``."""

    tracking_uri: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0  # per REST call
    poll_s: float = 5.0  # each source is asked at most this often (never under 5 s)


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """How the served versions follow the repository (Triton's model control modes)."""

    # none: what the repository held at start; poll: rescanned every poll_s; explicit: only
    # the repository API's load and unload change anything.
    mode: str = "poll"
    poll_s: float = 5.0
    load_models: tuple[str, ...] = ()  # explicit mode: load these at start ("*": all)
    # A version whose workers show no sign of life for this long is UNAVAILABLE.
    load_timeout_s: float = 120.0
    registry: RegistrySettings = RegistrySettings()


@dataclass(frozen=True, slots=True)
class AutoscalerSettings:
    models_dir: Path
    redis_url: str
    scaling: ScalingSettings = ScalingSettings()
    control: ControlSettings = ControlSettings()
    backend: str = "local"  # local | docker | kubernetes
    metrics_port: int = 9100  # its /metrics; 0 = off
    docker_image: str = "modelgate:latest"
    docker_network: str | None = None
    docker_models_dir: str = "/models"  # the model repository's path inside worker containers
    k8s_namespace: str = "modelgate"
    # The job coordinator runs beside the decider; job files only under this folder.
    jobs_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class UpSettings:
    models_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 8081  # 0: no gRPC
    redis_url: str | None = None  # None = start an embedded redis-server
    # Where the embedded Redis keeps its files; None = a folder per model repository under
    # $XDG_STATE_HOME (or ~/.local/state)/modelgate.
    state_dir: Path | None = None
    default_timeout_ms: int = 30_000
    api_keys: tuple[str, ...] = ()
    admin_api_keys: tuple[str, ...] = ()
    protect_probes: bool = False
    scaling: ScalingSettings = ScalingSettings()
    control: ControlSettings = ControlSettings()
    gateway_procs: int = 1
    # --gateway-procs auto: start with gateway_procs and add one (up to one per CPU) while the
    # gateways, not the workers, are what is busy (modelgate.cli.gateways).
    auto_gateway_procs: bool = False
    mlflow_webhook_secret: str | None = None
    jobs_dir: Path | None = None  # batch jobs' files (gateways and coordinator alike)
    # Each gateway's shared memory for large request tensors (its workers are on this host):
    # GatewaySettings.payload_arena_mb. 0: through Redis.
    payload_arena_mb: int = 64
