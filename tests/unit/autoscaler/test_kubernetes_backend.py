"""The kubernetes backend against a stand-in AppsV1Api.

No Kubernetes API server runs here, so every test drives ``KubernetesBackend`` with
``FakeAppsV1Api``: the two scale-subresource calls of ``kubernetes.client.AppsV1Api`` the
backend uses, over an in-memory set of Deployments, recording each call. Its scale objects
have the shape of ``V1Scale`` (``spec.replicas``, ``status.replicas``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.backends.kubernetes import KubernetesBackend

MLP, IRIS = PoolRef("mlp", "1"), PoolRef("iris", "1")


class FakeAppsV1Api:
    """Stand-in for ``kubernetes.client.AppsV1Api`` (no API server here)."""

    def __init__(self, namespace: str, deployments: dict[str, tuple[int, int]]) -> None:
        self.namespace = namespace
        self.deployments = {name: list(counts) for name, counts in deployments.items()}
        self.calls: list[tuple[Any, ...]] = []

    def read_namespaced_deployment_scale(self, name: str, namespace: str) -> SimpleNamespace:
        self.calls.append(("read", name, namespace))
        assert namespace == self.namespace, "the backend must stay in its namespace"
        spec_replicas, status_replicas = self.deployments[name]
        return SimpleNamespace(spec=SimpleNamespace(replicas=spec_replicas),
                               status=SimpleNamespace(replicas=status_replicas))

    def patch_namespaced_deployment_scale(self, name: str, namespace: str,
                                          body: dict[str, Any]) -> None:
        self.calls.append(("patch", name, namespace, body))
        assert namespace == self.namespace
        self.deployments[name][0] = body["spec"]["replicas"]

    def patches(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "patch"]


@pytest.fixture
def api() -> FakeAppsV1Api:
    return FakeAppsV1Api("serving", {"modelgate-worker-mlp": (1, 1),
                                     "modelgate-worker-iris": (2, 2),
                                     "modelgate-worker-fraud-v2": (1, 1)})


def test_scale_patches_the_scale_subresource_of_the_models_deployment(
        api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). Checks the deployment name
    (modelgate-worker-<model>), the namespace and the patch body."""
    backend = KubernetesBackend("serving", apps_api=api)
    backend.scale(MLP, 4)
    assert api.patches() == [("patch", "modelgate-worker-mlp", "serving",
                              {"spec": {"replicas": 4}})]
    assert api.deployments["modelgate-worker-mlp"][0] == 4


def test_scale_writes_nothing_when_the_count_is_already_desired(api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). Checks that an unchanged count costs one
    read and no patch (the loop may ask every tick)."""
    backend = KubernetesBackend("serving", apps_api=api)
    backend.scale(IRIS, 2)
    assert api.calls == [("read", "modelgate-worker-iris", "serving")]


def test_scale_compares_with_spec_not_with_pods_still_starting(api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). Right after a scale-up the pods lag behind
    spec; checks that asking again for the same count does not patch again."""
    backend = KubernetesBackend("serving", apps_api=api)
    backend.scale(MLP, 3)
    assert backend.running(MLP) == 1  # status.replicas: the pods are not there yet
    backend.scale(MLP, 3)
    assert len(api.patches()) == 1


def test_running_reports_status_replicas_else_spec(api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). Checks that `running` reads
    `status.replicas` of the scale subresource, and `spec.replicas` when there is no status."""
    api.deployments["modelgate-worker-iris"] = [5, 3]
    backend = KubernetesBackend("serving", apps_api=api)
    assert backend.running(IRIS) == 3
    api.deployments["modelgate-worker-iris"] = [5, None]  # type: ignore[list-item]
    assert backend.running(IRIS) == 5
    assert not api.patches()


def test_deployment_name_template_is_configurable_and_dns_safe(api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). Model names may hold `_` and capitals,
    which Deployment names may not; checks the mapping and a custom template."""
    backend = KubernetesBackend("serving", apps_api=api)
    assert backend.deployment(PoolRef("Fraud_v2", "1")) == "modelgate-worker-fraud-v2"
    backend.scale(PoolRef("Fraud_v2", "1"), 2)
    assert api.patches()[0][1] == "modelgate-worker-fraud-v2"
    custom = KubernetesBackend("serving", deployment_template="{model}-workers", apps_api=api)
    assert custom.deployment(MLP) == "mlp-workers"


def test_supervise_and_stop_all_leave_the_deployments_alone(api: FakeAppsV1Api) -> None:
    """Stand-in AppsV1Api (no API server here). The Deployment controller replaces dead pods,
    and workers outlive the autoscaler: checks that neither call touches the API."""
    backend = KubernetesBackend("serving", apps_api=api)
    backend.supervise()
    backend.stop_all()
    assert api.calls == []
