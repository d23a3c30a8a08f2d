"""``modelgate autoscaler``: the control loop as its own process (Compose, Kubernetes)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import redis
from prometheus_client import start_http_server

from modelgate.autoscaler.backends.base import Backend
from modelgate.autoscaler.budget import BudgetError
from modelgate.autoscaler.loop import Autoscaler
from modelgate.autoscaler.plans import plans_for
from modelgate.core.redis_checks import check_redis
from modelgate.core.repository import load_repository
from modelgate.core.settings import AutoscalerSettings

log = logging.getLogger("modelgate.autoscaler")


def build_backend(settings: AutoscalerSettings) -> Backend:
    if settings.backend == "docker":
        from modelgate.autoscaler.backends.docker import DockerBackend

        return DockerBackend(image=settings.docker_image, network=settings.docker_network,
                             redis_url=settings.redis_url, models_dir=settings.docker_models_dir)
    if settings.backend == "kubernetes":
        from modelgate.autoscaler.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(namespace=settings.k8s_namespace)
    from modelgate.autoscaler.backends.local import LocalBackend

    return LocalBackend(settings.models_dir, settings.redis_url)


def main(settings: AutoscalerSettings) -> int:
    models = load_repository(settings.models_dir)
    plans = plans_for(models, settings.scaling)
    backend = build_backend(settings)
    client = redis.Redis.from_url(settings.redis_url)
    check_redis(client, log)
    try:
        autoscaler = Autoscaler(client, backend, plans, settings.scaling.max_cost_per_hour)
    except BudgetError as e:
        log.error("%s", e)
        return 2
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=autoscaler.registry)
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
        # Local workers are this process's children and would be orphaned; containers and
        # Deployments outlive a restart of the autoscaler, which finds them again.
        if backend.name == "local":
            backend.stop_all()
    return 0
