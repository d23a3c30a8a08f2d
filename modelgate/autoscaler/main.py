"""``modelgate autoscaler``: the control loop as its own process (Compose, Kubernetes)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import redis
from prometheus_client import CollectorRegistry, start_http_server

from modelgate.autoscaler import coordinator as job_coordinator
from modelgate.autoscaler.backends.base import Backend
from modelgate.autoscaler.control import ModelControl
from modelgate.autoscaler.decider import Decider
from modelgate.autoscaler.loop import Autoscaler
from modelgate.autoscaler.registry.sync import RegistrySync
from modelgate.core.redis_checks import check_redis
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


def build_decider(client: redis.Redis, backend: Backend, settings: AutoscalerSettings,
                  models_dir: Path, registry: CollectorRegistry | None = None) -> Decider:
    """Model control and scaling under one lease, as ``up`` and this service both run them."""
    control = ModelControl(client, models_dir, settings.control.mode, settings.control.poll_s,
                           settings.control.load_models, settings.control.load_timeout_s,
                           settings.scaling.max_cost_per_hour,
                           registry=RegistrySync(models_dir, settings.control.registry))
    autoscaler = Autoscaler(client, backend, [], settings.scaling.max_cost_per_hour, registry)
    return Decider(client, control, autoscaler, settings.scaling)


def main(settings: AutoscalerSettings) -> int:
    backend = build_backend(settings)
    client = redis.Redis.from_url(settings.redis_url)
    check_redis(client, log)
    decider = build_decider(client, backend, settings,
                            settings.models_dir)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=decider.autoscaler.registry)
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping the control loop", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    log.info("autoscaler on the %s backend, model control %s, repository %s", backend.name,
             settings.control.mode, settings.models_dir)
    # Batch jobs' coordinator beside the decider, under its own lease.
    coordinator, _ = job_coordinator.start_thread(redis.Redis.from_url(settings.redis_url),
                                                  settings.models_dir, settings.jobs_dir, stop)
    try:
        decider.run(stop)
    finally:
        coordinator.release()
        decider.release()
        # Local workers are this process's children and would be orphaned; containers and
        # Deployments outlive a restart of the autoscaler, which finds them again.
        if backend.name == "local":
            backend.stop_all()
    return 0
