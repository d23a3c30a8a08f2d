"""``modelgate autoscaler``: the control loop as its own process (Compose, Kubernetes)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import redis
from prometheus_client import start_http_server

from modelgate.autoscaler.backends.base import Backend
from modelgate.autoscaler.budget import BudgetError
from modelgate.autoscaler.loop import Autoscaler
from modelgate.autoscaler.plans import plans_for
from modelgate.core.repository import load_repository

log = logging.getLogger("modelgate.autoscaler")


def build_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "docker":
        from modelgate.autoscaler.backends.docker import DockerBackend

        return DockerBackend(image=args.docker_image, network=args.docker_network,
                             redis_url=args.redis_url, models_dir=args.docker_models_dir)
    if args.backend == "kubernetes":
        from modelgate.autoscaler.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(namespace=args.k8s_namespace)
    from modelgate.autoscaler.backends.local import LocalBackend

    return LocalBackend(Path(args.models), args.redis_url)


def main(args: argparse.Namespace) -> int:
    models = load_repository(Path(args.models))
    plans = plans_for(models, int(args.min_workers), int(args.max_workers),
                      float(args.scale_down_delay))
    max_cost = float(args.max_cost_per_hour) if args.max_cost_per_hour not in (None, "") else None
    backend = build_backend(args)
    try:
        autoscaler = Autoscaler(redis.Redis.from_url(args.redis_url), backend, plans, max_cost)
    except BudgetError as e:
        log.error("%s", e)
        return 2
    if int(args.metrics_port):
        start_http_server(int(args.metrics_port), registry=autoscaler.registry)
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping the control loop", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    log.info("autoscaler on the %s backend for %s", backend.name,
             ", ".join(f"{p.model} ({p.policy.min_workers}..{p.policy.max_workers})"
                       for p in plans))
    try:
        autoscaler.run(stop)
    finally:
        if backend.name == "local":
            backend.stop_all()
    return 0
