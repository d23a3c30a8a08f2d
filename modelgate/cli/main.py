"""The ``modelgate`` command. Every flag also reads ``MODELGATE_<FLAG>`` from the environment
(``--redis-url`` <- ``MODELGATE_REDIS_URL``); a flag given on the command line wins.

Each subcommand registers its parser and its handler together (``_COMMANDS``); defaults come
from the settings classes (``modelgate.core.settings``), never restated here. Secrets given as
flags (API keys, a Redis URL with a password) are moved to the environment and the command
re-executes itself without them at once, so ``ps`` does not show them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelgate.core.repository import RepositoryError
from modelgate.core.settings import (
    AutoscalerSettings,
    ControlSettings,
    GatewaySettings,
    RegistrySettings,
    ScalingSettings,
    UpSettings,
    WorkerSettings,
    default_of,
)

# Set in the environment of a command that re-executed itself to hide secrets: never twice.
_REEXECUTED = "MODELGATE_SECRETS_MOVED"


class UsageError(ValueError):
    """A setting that cannot be used as given; the message says how to fix it."""


class _EnvParser(argparse.ArgumentParser):
    """An ArgumentParser whose options default to ``MODELGATE_<FLAG>`` when that is set."""

    env: Mapping[str, str] = os.environ

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:
        flag = next((n for n in names if isinstance(n, str) and n.startswith("--")), None)
        if flag is not None:
            variable = env_variable(flag)
            if variable in self.env:
                kwargs["default"] = self.env[variable]
                kwargs["required"] = False
            help_text = kwargs.get("help", "")
            kwargs["help"] = f"{help_text} [env {variable}]".strip()
        return super().add_argument(*names, **kwargs)


def env_variable(flag: str) -> str:
    return "MODELGATE_" + flag[2:].upper().replace("-", "_")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _gateway_procs(text: str) -> str:
    if text.strip() == "auto":
        return "auto"
    return str(_positive_int(text))


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _optional_float(value: object) -> float | None:
    return float(str(value)) if value not in (None, "") else None


def _flag(value: object) -> bool:
    return value is True or str(value).lower() in {"1", "true", "yes", "on"}


class _AppendKeys(argparse.Action):
    """``--api-key`` repeated: flags replace a list read from the environment, never extend
    it (a flag given on the command line wins), and never crash on it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        keys = list(current) if isinstance(current, list) else []
        keys.append(values)
        setattr(namespace, self.dest, keys)


def api_keys(value: str | list[str] | None, what: str = "--api-key") -> tuple[str, ...]:
    """Keys from repeated flags or from the comma-separated environment variable.

    Not given at all: no keys. Given but naming no key (an empty or blank value, an empty item
    in the list): a UsageError, never an open gateway -- a missing Kubernetes Secret must not
    turn authentication off.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    keys = tuple(k.strip() for k in items)
    if not keys or not all(keys):
        raise UsageError(
            f"{what} (or {env_variable(what)}) is set but holds an empty key: give one or more "
            "keys (comma-separated in the environment), or unset it to run without keys")
    if any("," in k for k in keys):
        raise UsageError(f"{what}: a key cannot contain ','")
    return keys


def _scaling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-workers", type=_count,
                        default=default_of(ScalingSettings, "min_workers"),
                        help="workers per model at least (0 lets an idle model scale to zero)")
    parser.add_argument("--max-workers", type=_positive_int,
                        default=default_of(ScalingSettings, "max_workers"),
                        help="upper bound per model")
    parser.add_argument("--scale-down-delay", type=float,
                        default=default_of(ScalingSettings, "scale_down_delay_s"),
                        help="seconds a lower worker count must be enough before workers are "
                             "removed (the highest need in this window wins)")
    parser.add_argument("--max-cost-per-hour", type=_optional_float, default=None,
                        help="budget across all pools: sum of workers x worker_cost_per_hour")


def _scaling(args: argparse.Namespace) -> ScalingSettings:
    return ScalingSettings(min_workers=int(args.min_workers),
                           max_workers=int(args.max_workers),
                           scale_down_delay_s=float(args.scale_down_delay),
                           max_cost_per_hour=_optional_float(args.max_cost_per_hour))


def _control_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                        default=default_of(ControlSettings, "mode"),
                        help="none: serve what the repository holds at start; poll: apply "
                             "changes to it as they come; explicit: change only through the "
                             "repository API (load/unload)")
    parser.add_argument("--repository-poll-secs", type=float,
                        default=default_of(ControlSettings, "poll_s"),
                        help="how often poll mode scans the repository")
    parser.add_argument("--load-model", action="append", default=None,
                        help="explicit mode: a model to load at start (repeat; '*' loads all)")
    _registry_flags(parser)


def _registry_flags(parser: argparse.ArgumentParser) -> None:
    _mlflow_flag(parser)
    parser.add_argument("--registry-poll-secs", type=float,
                        default=default_of(RegistrySettings, "poll_s"),
                        help="how often each model's registry source is asked (5 at least; "
                             "MLflow webhooks make it ask at once)")


def _mlflow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow-tracking-uri",
                        default=_EnvParser.env.get("MLFLOW_TRACKING_URI"),
                        help="the MLflow tracking server: where models with a source: take "
                             "their versions from, and where run links point (default: "
                             "MLflow's own MLFLOW_TRACKING_URI)")


def _registry(args: argparse.Namespace) -> RegistrySettings:
    """The tracking server, and its credentials from MLflow's own variables (never flags)."""
    env = _EnvParser.env
    if float(args.registry_poll_secs) < 5:
        raise UsageError("--registry-poll-secs must be 5 or more: a registry is a shared "
                         "service; MLflow webhooks make the decider ask at once")
    return RegistrySettings(tracking_uri=args.mlflow_tracking_uri or None,
                            poll_s=float(args.registry_poll_secs),
                            token=env.get("MLFLOW_TRACKING_TOKEN") or None,
                            username=env.get("MLFLOW_TRACKING_USERNAME") or None,
                            password=env.get("MLFLOW_TRACKING_PASSWORD") or None)


def _control(args: argparse.Namespace) -> ControlSettings:
    loads = args.load_model
    names = tuple(loads.split(",") if isinstance(loads, str) else loads or ())
    if names and args.model_control_mode != "explicit":
        raise UsageError("--load-model works with --model-control-mode explicit only")
    if float(args.repository_poll_secs) <= 0:
        raise UsageError("--repository-poll-secs must be more than 0")
    return ControlSettings(mode=args.model_control_mode,
                           poll_s=float(args.repository_poll_secs), load_models=names,
                           registry=_registry(args))


def _auth_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", action=_AppendKeys, default=None,
                        help="require 'Authorization: Bearer KEY'; repeat for several keys "
                             "(the environment variable takes a comma-separated list)")
    parser.add_argument("--admin-api-key", action=_AppendKeys, default=None,
                        help="keys for calls that change what is served (repository "
                             "load/unload); with one set, application keys cannot make them")
    parser.add_argument("--protect-probes", action="store_true", default=False,
                        help="require the API key on /v2/health/* and /openapi.json too "
                             "(without it they answer everyone, naming no model; /metrics "
                             "always needs the key when keys are set)")
    parser.add_argument("--mlflow-webhook-secret", default=None,
                        help="accept MLflow model-registry webhooks signed with this secret "
                             "(they make the decider ask the registry at once); give it "
                             "through the environment")


# --------------------------------------------------------------------------- subcommands


def _jobs_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs-dir", type=Path, default=None,
                        help="batch jobs read and write files only under this folder (paths "
                             "relative to it, or absolute inside it); without it only "
                             "uploaded inputs work")


def _jobs_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.jobs_dir) if args.jobs_dir else None


def _add_up(commands: Any) -> None:
    up = commands.add_parser("up", help="run Redis (embedded unless given), gateway and workers")
    up.add_argument("--models", type=Path, required=True, help="model repository folder")
    up.add_argument("--host", default=default_of(UpSettings, "host"))
    up.add_argument("--port", type=int, default=default_of(UpSettings, "port"))
    up.add_argument("--grpc-port", type=_count, default=default_of(UpSettings, "grpc_port"),
                    help="the Open Inference Protocol over gRPC on this port, shared by every "
                         "gateway process (0: no gRPC)")
    up.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    up.add_argument("--state-dir", type=Path, default=None,
                    help="where the embedded Redis keeps its files (default: a folder per model "
                         "repository under $XDG_STATE_HOME/modelgate)")
    up.add_argument("--default-timeout-ms", type=_positive_int,
                    default=default_of(UpSettings, "default_timeout_ms"))
    up.add_argument("--gateway-procs", type=_gateway_procs,
                    default=str(default_of(UpSettings, "gateway_procs")),
                    help="gateway processes sharing the port (metrics merged across them); "
                         "auto: one, and one more (up to one per CPU) while the gateways' CPU, "
                         "not the workers', limits throughput")
    up.add_argument("--payload-arena-mb", type=_count,
                    default=default_of(UpSettings, "payload_arena_mb"),
                    help="shared memory (/dev/shm) per gateway process through which large "
                         "request tensors reach the workers instead of through Redis "
                         "(0: through Redis)")
    _auth_flags(up)
    _jobs_dir_flag(up)
    _scaling_flags(up)
    _control_flags(up)
    up.set_defaults(handler=_run_up)


def _run_up(args: argparse.Namespace) -> int:
    from modelgate.cli import up

    return up.run(UpSettings(
        models_dir=Path(args.models), host=args.host, port=int(args.port),
        grpc_port=int(args.grpc_port), redis_url=args.redis_url or None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        default_timeout_ms=int(args.default_timeout_ms),
        api_keys=api_keys(args.api_key),
        admin_api_keys=api_keys(args.admin_api_key, "--admin-api-key"),
        protect_probes=_flag(args.protect_probes), scaling=_scaling(args), control=_control(args),
        gateway_procs=1 if args.gateway_procs == "auto" else int(args.gateway_procs),
        auto_gateway_procs=args.gateway_procs == "auto",
        mlflow_webhook_secret=args.mlflow_webhook_secret or None, jobs_dir=_jobs_dir(args),
        payload_arena_mb=int(args.payload_arena_mb)))


def _add_autoscaler(commands: Any) -> None:
    autoscaler = commands.add_parser("autoscaler", help="run the autoscaling control loop")
    autoscaler.add_argument("--models", type=Path, required=True)
    autoscaler.add_argument("--redis-url", required=True)
    autoscaler.add_argument("--backend", choices=["local", "docker", "kubernetes"],
                            default=default_of(AutoscalerSettings, "backend"))
    autoscaler.add_argument("--metrics-port", type=_count,
                            default=default_of(AutoscalerSettings, "metrics_port"),
                            help="serve the autoscaler's /metrics here (0 = off)")
    autoscaler.add_argument("--docker-image",
                            default=default_of(AutoscalerSettings, "docker_image"))
    autoscaler.add_argument("--docker-network", default=None)
    autoscaler.add_argument("--docker-models-dir",
                            default=default_of(AutoscalerSettings, "docker_models_dir"),
                            help="the model repository's path inside worker containers")
    autoscaler.add_argument("--k8s-namespace",
                            default=default_of(AutoscalerSettings, "k8s_namespace"))
    _jobs_dir_flag(autoscaler)
    _scaling_flags(autoscaler)
    _control_flags(autoscaler)
    autoscaler.set_defaults(handler=_run_autoscaler)


def _run_autoscaler(args: argparse.Namespace) -> int:
    from modelgate.autoscaler.main import main as autoscaler_main

    return autoscaler_main(AutoscalerSettings(
        models_dir=Path(args.models), redis_url=args.redis_url, scaling=_scaling(args),
        control=_control(args), backend=args.backend, metrics_port=int(args.metrics_port),
        docker_image=args.docker_image, docker_network=args.docker_network or None,
        docker_models_dir=args.docker_models_dir, k8s_namespace=args.k8s_namespace,
        jobs_dir=_jobs_dir(args)))


def _add_coordinator(commands: Any) -> None:
    coordinator = commands.add_parser(
        "coordinator", help="run only the batch-job coordinator (`up` and `autoscaler` run it "
                            "already; one acts per deployment, under a lease)")
    coordinator.add_argument("--models", type=Path, required=True)
    coordinator.add_argument("--redis-url", required=True)
    _jobs_dir_flag(coordinator)
    coordinator.set_defaults(handler=_run_coordinator)


def _run_coordinator(args: argparse.Namespace) -> int:
    from modelgate.autoscaler.coordinator import main as coordinator_main

    return coordinator_main(Path(args.models), args.redis_url, _jobs_dir(args))


def _add_gateway(commands: Any) -> None:
    gateway = commands.add_parser("gateway", help="run one gateway process")
    gateway.add_argument("--models", type=Path, required=True)
    gateway.add_argument("--redis-url", required=True)
    gateway.add_argument("--host", default=default_of(GatewaySettings, "host"))
    gateway.add_argument("--port", type=int, default=default_of(GatewaySettings, "port"))
    gateway.add_argument("--grpc-port", type=_count,
                         default=default_of(GatewaySettings, "grpc_port"),
                         help="serve the Open Inference Protocol over gRPC here too "
                              "(inference.GRPCInferenceService; 0: no gRPC)")
    gateway.add_argument("--default-timeout-ms", type=_positive_int,
                         default=default_of(GatewaySettings, "default_timeout_ms"))
    gateway.add_argument("--max-inflight", type=_positive_int,
                         default=default_of(GatewaySettings, "max_inflight"),
                         help="requests one gateway process waits on at once; past it, 429")
    gateway.add_argument("--max-queue", type=_positive_int,
                         default=default_of(GatewaySettings, "max_queue"),
                         help="backlog per model when its config sets no max_queue; past it, 429")
    gateway.add_argument("--max-body-bytes", type=_positive_int,
                         default=default_of(GatewaySettings, "max_body_bytes"),
                         help="one request body, JSON and binary data together; past it, 413")
    gateway.add_argument("--max-inflight-bytes", type=_positive_int,
                         default=default_of(GatewaySettings, "max_inflight_bytes"),
                         help="bytes of request bodies one gateway process holds at once, "
                              "from arrival to answer; past it, 429")
    gateway.add_argument("--large-body-bytes", type=_positive_int,
                         default=default_of(GatewaySettings, "large_body_bytes"),
                         help="bodies whose JSON part is this large or more are parsed in a "
                              "parser process, off the event loop")
    gateway.add_argument("--parse-processes", type=_positive_int,
                         default=default_of(GatewaySettings, "parse_processes"),
                         help="parser processes per gateway process (started on the first "
                              "large body)")
    gateway.add_argument("--header-timeout-s", type=_positive_float,
                         default=default_of(GatewaySettings, "header_timeout_s"),
                         help="a request's headers must arrive within this long; past it, 408")
    gateway.add_argument("--body-timeout-s", type=_positive_float,
                         default=default_of(GatewaySettings, "body_timeout_s"),
                         help="a request's body must arrive within this long of its headers; "
                              "past it, 408")
    gateway.add_argument("--max-connections", type=_positive_int,
                         default=default_of(GatewaySettings, "max_connections"),
                         help="connections one gateway process holds; at the limit the one "
                              "idle longest is closed, or the newcomer gets 503")
    gateway.add_argument("--reuse-port", action="store_true", default=False,
                         help="share the port (and the gRPC port) with other gateway "
                              "processes (SO_REUSEPORT)")
    gateway.add_argument("--record-answers", type=Path, default=None,
                         help="append every answer on the protocol's REST paths to "
                              "DIR/answers-PID.jsonl (conformance checks; a write per call)")
    gateway.add_argument("--trace-dir", type=Path, default=None,
                         help="write every V2 infer call's stage timestamps to "
                              "DIR/trace-gateway-PID.jsonl (bench/trace.py; off by default)")
    gateway.add_argument("--payload-arena-mb", type=_count,
                         default=default_of(GatewaySettings, "payload_arena_mb"),
                         help="send large request tensors to workers through this much shared "
                              "memory (/dev/shm) instead of through Redis; only when every "
                              "worker runs on this host, outside containers (0: off; "
                              "`modelgate up` sets it)")
    gateway.add_argument("--fd", type=_count, default=None,
                         help="serve on this inherited listening socket instead of binding "
                              "(set by `modelgate up`)")
    _auth_flags(gateway)
    _jobs_dir_flag(gateway)
    _mlflow_flag(gateway)
    gateway.set_defaults(handler=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    from modelgate.gateway.app import serve

    serve(GatewaySettings(
        models_dir=Path(args.models), redis_url=args.redis_url, host=args.host,
        port=int(args.port), grpc_port=int(args.grpc_port),
        default_timeout_ms=int(args.default_timeout_ms),
        max_inflight=int(args.max_inflight), max_queue=int(args.max_queue),
        max_body_bytes=int(args.max_body_bytes),
        max_inflight_bytes=int(args.max_inflight_bytes),
        large_body_bytes=int(args.large_body_bytes),
        parse_processes=int(args.parse_processes), api_keys=api_keys(args.api_key),
        admin_api_keys=api_keys(args.admin_api_key, "--admin-api-key"),
        protect_probes=_flag(args.protect_probes), reuse_port=_flag(args.reuse_port),
        fd=int(args.fd) if args.fd not in (None, "") else None,
        header_timeout_s=float(args.header_timeout_s), body_timeout_s=float(args.body_timeout_s),
        max_connections=int(args.max_connections),
        mlflow_tracking_uri=args.mlflow_tracking_uri or None,
        mlflow_webhook_secret=args.mlflow_webhook_secret or None,
        record_answers=Path(args.record_answers) if args.record_answers else None,
        jobs_dir=_jobs_dir(args),
        trace_dir=Path(args.trace_dir) if args.trace_dir else None,
        payload_arena_mb=int(args.payload_arena_mb)))
    return 0


def _add_worker(commands: Any) -> None:
    worker = commands.add_parser("worker", help="run one worker process for one model")
    worker.add_argument("--models", type=Path, required=True)
    worker.add_argument("--model", required=True, help="model name in the repository")
    worker.add_argument("--version", default=None,
                        help="default: the model's default version (as served, else as the "
                             "repository says)")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--intra-op-threads", type=_positive_int, default=None,
                        help="ONNX Runtime threads per run (default: model config, else 1)")
    worker.add_argument("--claim-timeout-ms", type=_positive_int,
                        default=default_of(WorkerSettings, "claim_timeout_ms"),
                        help="idle time after which a dead worker's entries are taken over "
                             "(a worker is dead once its heartbeat has expired; a live "
                             "worker's entries are never taken)")
    worker.add_argument("--max-deliveries", type=_positive_int,
                        default=default_of(WorkerSettings, "max_deliveries"),
                        help="deliveries (the first, plus one per worker that died holding "
                             "it) after which an entry goes to the dead-letter stream")
    worker.add_argument("--tuning-budget-s", type=_non_negative_float,
                        default=default_of(WorkerSettings, "tuning_budget_s"),
                        help="longest the worker measures the model's rows/s by batch size "
                             "at load to choose its batch sizes, when no curve is cached for "
                             "this model on this kind of host (0: never measure)")
    worker.add_argument("--trace-dir", type=Path, default=None,
                        help="write every entry's stage timestamps to "
                             "DIR/trace-worker-PID.jsonl (bench/trace.py; off by default)")
    worker.set_defaults(handler=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    from modelgate.worker.main import main as worker_main

    return worker_main(WorkerSettings(
        models_dir=Path(args.models), model=args.model, version=args.version or None,
        redis_url=args.redis_url,
        intra_op_threads=int(args.intra_op_threads) if args.intra_op_threads else None,
        claim_timeout_ms=int(args.claim_timeout_ms), max_deliveries=int(args.max_deliveries),
        tuning_budget_s=float(args.tuning_budget_s),
        trace_dir=Path(args.trace_dir) if args.trace_dir else None))


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="show pools, workers, backlog, rates, p95, "
                                                "desired workers and the last decisions")
    status.add_argument("--redis-url", required=True,
                        help="the Redis to read; for `modelgate up`'s, the URL in the file it "
                             "printed")
    status.add_argument("--model", default=None,
                        help="show this model's versions in detail: lineage (run, params, "
                             "training metrics, registry) beside live figures since loaded")
    status.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    import redis

    from modelgate.cli.status import render, render_model

    client = redis.Redis.from_url(args.redis_url)
    if args.model:
        return render_model(client, args.model, sys.stdout)
    return render(client, sys.stdout)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    """For the commands that talk to a gateway over HTTP (not servers' flags)."""
    parser.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the gateway to talk to")
    parser.add_argument("--key", default=None,
                        help="the API key to send (env MODELGATE_CLIENT_KEY; the admin key to "
                             "change traffic when the server has one)")


def _add_traffic(commands: Any) -> None:
    traffic = commands.add_parser(
        "traffic", help="show or set how a model's calls are shared between its versions")
    traffic.add_argument("model")
    traffic.add_argument("--weights", default=None,
                         help="canary weights, e.g. 1=90,2=10 (replaces the whole policy)")
    traffic.add_argument("--shadow", default=None,
                         help="mirror calls to a version, e.g. 3:100 (version:percent)")
    traffic.add_argument("--sticky-header", default=None,
                         help="calls with the same value of this header stay on one version")
    traffic.add_argument("--default", default=None, help="the version for unpinned calls")
    action = traffic.add_mutually_exclusive_group()
    for name in ("promote", "rollback", "pause", "resume"):
        action.add_argument(f"--{name}", action="store_true", default=False,
                            help=f"{name} the model's promotion gate")
    _client_flags(traffic)
    traffic.set_defaults(handler=_run_traffic)


def _run_traffic(args: argparse.Namespace) -> int:
    from modelgate.cli.traffic import run

    return run(args)


def _add_batch(commands: Any) -> None:
    batch = commands.add_parser("batch", help="batch prediction jobs: submit a file and "
                                              "download its scores, or follow jobs")
    actions = batch.add_subparsers(dest="action", required=True, parser_class=_EnvParser)
    submit = actions.add_parser("submit", help="upload FILE, show progress, download the "
                                               "output to --out")
    submit.add_argument("file", type=Path)
    submit.add_argument("--model", required=True)
    submit.add_argument("--version", default=None, help="default: the model's default version")
    submit.add_argument("--out", type=Path, required=True, help="where to write the output")
    submit.add_argument("--format", default=None,
                        help="the input's format (default: from FILE's extension)")
    submit.add_argument("--id-column", default=None, help="the column holding each row's id")
    submit.add_argument("--output-format", default=None,
                        help="jsonl or parquet (default: from --out's extension, else jsonl)")
    submit.add_argument("--detach", action="store_true", default=False,
                        help="print the job's id and return without waiting")
    _client_flags(submit)
    for name, text in (("status", "show a job"), ("cancel", "cancel a job"),
                       ("retry", "run a job's failed rows again")):
        action = actions.add_parser(name, help=text)
        action.add_argument("job")
        _client_flags(action)
    listing = actions.add_parser("list", help="list the newest jobs")
    listing.add_argument("--state", default=None)
    _client_flags(listing)
    batch.set_defaults(handler=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from modelgate.cli.batch import run

    return run(args)


def _add_feedback(commands: Any) -> None:
    feedback = commands.add_parser(
        "feedback", help="send labels (CSV: id,label[,row]; or JSONL) for answered calls")
    feedback.add_argument("file", help="a CSV with columns id, label and optionally row, or a "
                                       ".jsonl file of {\"id\", \"label\", \"row\"} lines")
    feedback.add_argument("--model", required=True, help="the model that answered the calls")
    _client_flags(feedback)
    feedback.set_defaults(handler=_run_feedback)


def _run_feedback(args: argparse.Namespace) -> int:
    from modelgate.cli.feedback import run

    return run(args)


def _add_simulate(commands: Any) -> None:
    simulate = commands.add_parser(
        "simulate", help="replay a traffic trace through the scaling policy")
    simulate.add_argument("trace", nargs="?", default="step",
                          help="a CSV of time_s,rate_rps, or a shipped trace: steady, step, "
                               "spike, diurnal")
    simulate.add_argument("--service-ms", type=float, default=20.0,
                          help="mean worker time per request (measure it: modelgate status)")
    simulate.add_argument("--startup-s", type=float, default=2.0,
                          help="seconds from starting a worker to its first request")
    simulate.add_argument("--slo-ms", type=float, default=250.0,
                          help="latency a request must meet to count as within SLO")
    simulate.add_argument("--target", type=float, default=0.99,
                          help="SLO attainment the static allocation must reach")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    _scaling_flags(simulate)
    simulate.set_defaults(handler=_run_simulate, max_workers=16)


def _run_simulate(args: argparse.Namespace) -> int:
    from modelgate.autoscaler.policy import PolicyConfig
    from modelgate.autoscaler.simulate import SimConfig, run_cli

    scaling = _scaling(args)
    sim = SimConfig(service_ms=float(args.service_ms), startup_s=float(args.startup_s),
                    slo_ms=float(args.slo_ms), seed=int(args.seed))
    policy = PolicyConfig(min_workers=scaling.min_workers, max_workers=scaling.max_workers,
                          slo_p95_ms=float(args.slo_ms),
                          scale_down_delay_s=scaling.scale_down_delay_s)
    try:
        return run_cli(args.trace, sim, policy, float(args.target), args.plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"modelgate simulate: {e}", file=sys.stderr)
        return 2


def _add_profile(commands: Any) -> None:
    profile = commands.add_parser(
        "profile", help="write a model's reference profile for drift detection")
    profile.add_argument("--models", type=Path, required=True)
    profile.add_argument("--model", required=True)
    profile.add_argument("--version", default=None, help="default: the highest version")
    profile.add_argument("--data", type=Path, required=True,
                         help="reference rows: .csv or .npy (one input), .npz (one array per "
                              "input, named after it)")
    profile.set_defaults(handler=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from modelgate.core.profile import build_profile, profile_path, read_data, run_model
    from modelgate.core.repository import load_model

    model = load_model(Path(args.models) / args.model)
    version = model.versions.get(args.version or model.default_version)
    if version is None:
        raise RepositoryError(f"model {model.name!r} has no version {args.version}")
    if not version.rows_axis:
        raise RepositoryError(f"model {model.name!r} cannot batch; drift profiles need "
                              "rows (a variable first dimension on every input)")
    inputs = read_data(Path(args.data), version)
    rows = len(next(iter(inputs.values())))
    print(f"modelgate: running {model.name} v{version.version} over {rows} rows...",
          flush=True)
    built = build_profile(version, inputs, run_model(version, inputs))
    built.save(profile_path(version))
    print(f"modelgate: profile of {len(built.features)} feature(s) and "
          f"{len(built.labels)} label output(s) written to {profile_path(version)}; "
          "restart workers and gateways to use it")
    return 0


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="build the demo model repository")
    demo.add_argument("--out", type=Path, default=Path("demo_models"))
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from modelgate.cli.demo import build_demo_repository

    names = build_demo_repository(args.out)
    print(f"modelgate: demo repository with {names} written to {args.out}")
    return 0


_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_up, _add_autoscaler, _add_coordinator, _add_gateway, _add_worker, _add_status,
    _add_traffic, _add_batch, _add_feedback, _add_simulate, _add_profile, _add_demo)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    _EnvParser.env = os.environ if env is None else env
    parser = _EnvParser(prog="modelgate", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_EnvParser)
    for add in _COMMANDS:
        add(commands)
    return parser


# --------------------------------------------------------------------------- secrets


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None or "password=" in urlsplit(url).query
    except ValueError:
        return False


def move_secrets(argv: Sequence[str], env: Mapping[str, str]
                 ) -> tuple[list[str], dict[str, str]] | None:
    """``argv`` without secret flags and ``env`` holding them instead, or None when there is
    nothing to move. ``--api-key`` (repeatable) becomes ``MODELGATE_API_KEY``, a
    ``--redis-url`` with a password ``MODELGATE_REDIS_URL``, ``--mlflow-webhook-secret``
    ``MODELGATE_MLFLOW_WEBHOOK_SECRET``."""
    kept: list[str] = []
    keys: list[str] = []
    admin_keys: list[str] = []
    redis_url: str | None = None
    webhook_secret: str | None = None
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        name, has_value, inline = item.partition("=")
        if name in ("--api-key", "--admin-api-key", "--redis-url", "--mlflow-webhook-secret"):
            if has_value:
                value = inline
            elif i + 1 < len(items):
                value, i = items[i + 1], i + 1
            else:
                kept.append(item)  # let argparse say the value is missing
                i += 1
                continue
            if name == "--api-key":
                keys.append(value)
            elif name == "--admin-api-key":
                admin_keys.append(value)
            elif name == "--mlflow-webhook-secret":
                webhook_secret = value
            elif _has_password(value):
                redis_url = value
            else:
                kept += [name, value]
        else:
            kept.append(item)
        i += 1
    if not keys and not admin_keys and redis_url is None and webhook_secret is None:
        return None
    moved = dict(env)
    if keys:
        moved["MODELGATE_API_KEY"] = ",".join(keys)
    if admin_keys:
        moved["MODELGATE_ADMIN_API_KEY"] = ",".join(admin_keys)
    if redis_url is not None:
        moved["MODELGATE_REDIS_URL"] = redis_url
    if webhook_secret is not None:
        moved["MODELGATE_MLFLOW_WEBHOOK_SECRET"] = webhook_secret
    moved[_REEXECUTED] = "1"
    return kept, moved


def _hide_secrets_from_ps(argv: list[str]) -> None:
    """Re-execute without secret flags (their values move to the environment)."""
    if os.environ.get(_REEXECUTED):
        return
    moved = move_secrets(argv, os.environ)
    if moved is None:
        return
    kept, env = moved
    os.execve(sys.executable, [sys.executable, "-m", "modelgate", *kept], env)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    if argv is None:
        _hide_secrets_from_ps(sys.argv[1:])
    args = build_parser(env).parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.handler(args))
    except UsageError as e:
        print(f"modelgate {args.command}: {e}", file=sys.stderr)
        return 2
    except RepositoryError as e:
        print(f"modelgate: model repository error: {e}", file=sys.stderr)
        return 2
