"""The ``modelgate`` command. Every flag also reads ``MODELGATE_<FLAG>`` from the environment
(``--redis-url`` <- ``MODELGATE_REDIS_URL``); a flag given on the command line wins."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelgate.core.repository import RepositoryError


class _EnvParser(argparse.ArgumentParser):
    """An ArgumentParser whose options default to ``MODELGATE_<FLAG>`` when that is set."""

    env: Mapping[str, str] = os.environ

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:
        flag = next((n for n in names if isinstance(n, str) and n.startswith("--")), None)
        if flag is not None:
            variable = "MODELGATE_" + flag[2:].upper().replace("-", "_")
            if variable in self.env:
                kwargs["default"] = self.env[variable]
                kwargs["required"] = False
            help_text = kwargs.get("help", "")
            kwargs["help"] = f"{help_text} [env {variable}]".strip()
        return super().add_argument(*names, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _scaling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale-down-delay", type=float, default=30.0,
                        help="seconds a lower worker count must be enough before workers are "
                             "removed (the highest need in this window wins)")
    parser.add_argument("--max-cost-per-hour", type=float, default=None,
                        help="budget across all pools: sum of workers x worker_cost_per_hour")


def _auth_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", action="append", default=None,
                        help="require 'Authorization: Bearer KEY'; repeat for several keys "
                             "(the environment variable takes a comma-separated list)")
    parser.add_argument("--protect-probes", action="store_true", default=False,
                        help="require the API key on /v2/health/*, /metrics and /openapi.json too")


def api_keys(value: str | list[str] | None) -> tuple[str, ...]:
    """Keys from repeated flags or from the comma-separated environment variable."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(k.strip() for k in items if k.strip())


def _flag(value: object) -> bool:
    return value is True or str(value).lower() in {"1", "true", "yes", "on"}


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    _EnvParser.env = os.environ if env is None else env
    parser = _EnvParser(prog="modelgate", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_EnvParser)

    up = commands.add_parser("up", help="run Redis (embedded unless given), gateway and workers")
    up.add_argument("--models", type=Path, required=True, help="model repository folder")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    up.add_argument("--min-workers", type=_positive_int, default=1, help="workers per model")
    up.add_argument("--max-workers", type=_positive_int, default=4,
                    help="upper bound per model (used by the autoscaler)")
    up.add_argument("--default-timeout-ms", type=int, default=30_000)
    up.add_argument("--gateway-procs", type=_positive_int, default=1,
                    help="gateway processes sharing the port (metrics merged across them)")
    _auth_flags(up)
    _scaling_flags(up)

    autoscaler = commands.add_parser("autoscaler", help="run the autoscaling control loop")
    autoscaler.add_argument("--models", type=Path, required=True)
    autoscaler.add_argument("--redis-url", required=True)
    autoscaler.add_argument("--backend", choices=["local", "docker", "kubernetes"],
                            default="local")
    autoscaler.add_argument("--min-workers", type=_positive_int, default=1)
    autoscaler.add_argument("--max-workers", type=_positive_int, default=4)
    autoscaler.add_argument("--metrics-port", type=int, default=9100,
                            help="serve the autoscaler's /metrics here (0 = off)")
    autoscaler.add_argument("--docker-image", default="modelgate:latest")
    autoscaler.add_argument("--docker-network", default=None)
    autoscaler.add_argument("--docker-models-dir", default="/models",
                            help="the model repository's path inside worker containers")
    autoscaler.add_argument("--k8s-namespace", default="modelgate")
    _scaling_flags(autoscaler)

    gateway = commands.add_parser("gateway", help="run one gateway process")
    gateway.add_argument("--models", type=Path, required=True)
    gateway.add_argument("--redis-url", required=True)
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--default-timeout-ms", type=int, default=30_000)
    gateway.add_argument("--max-inflight", type=int, default=8_192,
                         help="requests one gateway process waits on at once; past it, 429")
    gateway.add_argument("--max-queue", type=int, default=10_000,
                         help="backlog per model when its config sets no max_queue; past it, 429")
    gateway.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    gateway.add_argument("--reuse-port", action="store_true", default=False,
                         help="share the port with other gateway processes (SO_REUSEPORT)")
    _auth_flags(gateway)

    worker = commands.add_parser("worker", help="run one worker process for one model")
    worker.add_argument("--models", type=Path, required=True)
    worker.add_argument("--model", required=True, help="model name in the repository")
    worker.add_argument("--version", default=None, help="default: the highest version")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--intra-op-threads", type=int, default=None,
                        help="ONNX Runtime threads per run (default: model config, else 1)")
    worker.add_argument("--claim-timeout-ms", type=int, default=5_000,
                        help="floor of the idle time after which a dead worker's entries are "
                             "taken over")
    worker.add_argument("--max-deliveries", type=int, default=3,
                        help="deliveries after which an entry goes to the dead-letter stream")

    status = commands.add_parser("status", help="show pools, workers, backlog, rates, p95, "
                                                "desired workers and the last decisions")
    status.add_argument("--redis-url", required=True)

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
    simulate.add_argument("--min-workers", type=_positive_int, default=1)
    simulate.add_argument("--max-workers", type=_positive_int, default=16)
    simulate.add_argument("--target", type=float, default=0.99,
                          help="SLO attainment the static allocation must reach")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    _scaling_flags(simulate)

    profile = commands.add_parser(
        "profile", help="write a model's reference profile for drift detection")
    profile.add_argument("--models", type=Path, required=True)
    profile.add_argument("--model", required=True)
    profile.add_argument("--version", default=None, help="default: the highest version")
    profile.add_argument("--data", type=Path, required=True,
                         help="reference rows: .csv or .npy (one input), .npz (one array per "
                              "input, named after it)")

    demo = commands.add_parser("demo", help="build the demo model repository")
    demo.add_argument("--out", type=Path, default=Path("demo_models"))
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser(env).parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _dispatch(args)
    except RepositoryError as e:
        print(f"modelgate: model repository error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from modelgate.core import settings

    if args.command == "up":
        from modelgate.cli import up

        return up.run(settings.UpSettings(
            models_dir=Path(args.models), host=args.host, port=int(args.port),
            redis_url=args.redis_url or None, min_workers=int(args.min_workers),
            max_workers=int(args.max_workers), default_timeout_ms=int(args.default_timeout_ms),
            api_keys=api_keys(args.api_key), protect_probes=_flag(args.protect_probes),
            scale_down_delay_s=float(args.scale_down_delay),
            gateway_procs=max(1, int(args.gateway_procs)),
            max_cost_per_hour=(float(args.max_cost_per_hour)
                               if args.max_cost_per_hour not in (None, "") else None),
        ))
    if args.command == "autoscaler":
        from modelgate.autoscaler.main import main as autoscaler_main

        return autoscaler_main(args)
    if args.command == "gateway":
        from modelgate.gateway.app import serve

        serve(settings.GatewaySettings(
            models_dir=Path(args.models), redis_url=args.redis_url, host=args.host,
            port=int(args.port), default_timeout_ms=int(args.default_timeout_ms),
            max_inflight=int(args.max_inflight), default_max_queue=int(args.max_queue),
            max_body_bytes=int(args.max_body_bytes), api_keys=api_keys(args.api_key),
            protect_probes=_flag(args.protect_probes), reuse_port=_flag(args.reuse_port),
        ))
        return 0
    if args.command == "worker":
        from modelgate.worker.main import main as worker_main

        return worker_main(settings.WorkerSettings(
            models_dir=Path(args.models), model=args.model, version=args.version,
            redis_url=args.redis_url,
            intra_op_threads=int(args.intra_op_threads) if args.intra_op_threads else None,
            claim_timeout_floor_ms=int(args.claim_timeout_ms),
            max_deliveries=int(args.max_deliveries),
        ))
    if args.command == "status":
        import redis

        from modelgate.cli.status import render

        return render(redis.Redis.from_url(args.redis_url), sys.stdout)
    if args.command == "simulate":
        from modelgate.autoscaler.policy import PolicyConfig
        from modelgate.autoscaler.simulate import SimConfig, run_cli

        sim = SimConfig(service_ms=float(args.service_ms), startup_s=float(args.startup_s),
                        slo_ms=float(args.slo_ms), seed=int(args.seed))
        policy = PolicyConfig(min_workers=int(args.min_workers),
                              max_workers=int(args.max_workers), slo_p95_ms=float(args.slo_ms),
                              scale_down_delay_s=float(args.scale_down_delay))
        try:
            return run_cli(args.trace, sim, policy, float(args.target), args.plot)
        except (FileNotFoundError, ValueError) as e:
            print(f"modelgate simulate: {e}", file=sys.stderr)
            return 2
    if args.command == "profile":
        from modelgate.core.profile import build_profile, profile_path, read_data, run_model
        from modelgate.core.repository import load_model

        model = load_model(Path(args.models) / args.model)
        version = model.versions.get(args.version or model.default_version)
        if version is None:
            raise RepositoryError(f"model {model.name!r} has no version {args.version}")
        if not version.batchable:
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
    if args.command == "demo":
        from modelgate.cli.demo import build_demo_repository

        names = build_demo_repository(args.out)
        print(f"modelgate: demo repository with {names} written to {args.out}")
        return 0
    raise AssertionError(args.command)
