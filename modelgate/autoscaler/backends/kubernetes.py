"""Kubernetes backend: each model's workers are one Deployment, sized by its scale subresource.

The autoscaler only reads and patches ``deployments/scale`` in its own namespace (see
deploy/kubernetes/autoscaler.yaml for the Role). The Deployment controller does the rest:
it starts pods, replaces dead ones, and on scale-down sends SIGTERM, which makes a worker
drain (answer what it holds) within the pod's ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from modelgate.autoscaler.backends.base import PoolRef

log = logging.getLogger("modelgate.autoscaler")

DEFAULT_DEPLOYMENT = "modelgate-worker-{model}"


def _dns_label(model: str) -> str:
    """``model`` as it may appear in a Deployment name: lower case, ``_`` becomes ``-``."""
    return re.sub(r"[^a-z0-9.-]", "-", model.lower())


def _load_apps_api() -> Any:
    """An AppsV1Api from the pod's service account, else from ~/.kube/config (or KUBECONFIG)."""
    from kubernetes import client, config  # optional dependency: 'modelgate[kubernetes]'

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()


class KubernetesBackend:
    """Scales ``deployment_template.format(model=...)`` Deployments in ``namespace``.

    ``apps_api`` is a ``kubernetes.client.AppsV1Api``; by default one configured from inside
    the cluster, falling back to the local kubeconfig.
    """

    name = "kubernetes"

    def __init__(self, namespace: str = "modelgate", *,
                 deployment_template: str = DEFAULT_DEPLOYMENT, apps_api: Any = None) -> None:
        self.namespace = namespace
        self.deployment_template = deployment_template
        self.api = apps_api if apps_api is not None else _load_apps_api()

    def deployment(self, ref: PoolRef) -> str:
        return self.deployment_template.format(model=_dns_label(ref.model), version=ref.version)

    def _read_scale(self, ref: PoolRef) -> Any:
        return self.api.read_namespaced_deployment_scale(self.deployment(ref), self.namespace)

    def scale(self, ref: PoolRef, desired: int) -> None:
        """Set the Deployment's replicas to ``desired``; no write when it already is."""
        current = self._read_scale(ref).spec.replicas
        if current == desired:
            return
        log.info("scaling deployment %s/%s from %s to %d replicas", self.namespace,
                 self.deployment(ref), current, desired)
        self.api.patch_namespaced_deployment_scale(
            self.deployment(ref), self.namespace, {"spec": {"replicas": desired}})

    def running(self, ref: PoolRef) -> int:
        """Pods the Deployment has now (``status.replicas``; terminating ones do not count)."""
        scale = self._read_scale(ref)
        if scale.status is not None and scale.status.replicas is not None:
            return int(scale.status.replicas)
        return int(scale.spec.replicas or 0)

    def supervise(self) -> None:
        """Nothing to do: the Deployment controller replaces pods that die."""

    def stop_all(self) -> None:
        """Nothing to do: the workers belong to their Deployments and outlive the autoscaler."""
