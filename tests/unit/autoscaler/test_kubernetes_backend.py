"""The kubernetes backend against a stand-in API server (tests/kube_api.py).

No Kubernetes API server can run here, so every test drives ``KubernetesBackend`` through the
real ``kubernetes`` client (``AppsV1Api``, its request bodies, content types and
``ApiException``s) against ``StandInApiServer``: the apps/v1 Deployment endpoints the backend
calls, served from memory over HTTP on a free port, with no controllers behind them (no pods
run; a test sets ``status.replicas``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelgate.autoscaler.backends import kubernetes_objects as objects
from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.backends.kubernetes import KubernetesBackend
from tests.kube_api import LAST_APPLIED, StandInApiServer, stand_in_api

NAMESPACE = "serving"
MLP1, MLP2, IRIS1 = PoolRef("mlp", "1"), PoolRef("mlp", "2"), PoolRef("iris", "1")


def template(model: str, args: list[str] | None = None) -> dict[str, Any]:
    """A model's template Deployment as the manifests hold it: zero replicas. Its own labels
    include one its pods lack, as kustomize's `labels:` and kubectl's ApplySets add."""
    labels = {"app.kubernetes.io/component": "worker", "modelgate.pool": model}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"modelgate-worker-{model}",
                     "labels": {**labels, "applyset.kubernetes.io/part-of": "applyset-x"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"terminationGracePeriodSeconds": 45, "containers": [{
                    "name": "worker", "image": "modelgate:1",
                    "args": args or ["worker", "--models", "/models", "--model", model],
                }]},
            },
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kube() -> Iterator[tuple[StandInApiServer, client.AppsV1Api]]:
    with stand_in_api(NAMESPACE) as (server, api):
        server.apply(template("mlp"))
        server.apply(template("iris"))
        yield server, api


@pytest.fixture
def server(kube: tuple[StandInApiServer, client.AppsV1Api]) -> StandInApiServer:
    return kube[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(kube: tuple[StandInApiServer, client.AppsV1Api], clock: Clock) -> KubernetesBackend:
    return KubernetesBackend(NAMESPACE, apps_api=kube[1], resync_s=30.0, clock=clock)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The backend's warnings (not urllib3's about its retries)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name == "modelgate.autoscaler"]


# --------------------------------------------------------------------------- creating


def test_scale_creates_the_pools_deployment_from_the_models_template(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Checks the created Deployment:
    its name, the template's pod spec with the version pinned in the worker's args, the
    version label on it, in its selector and on its pods, the pool annotation, the owner
    reference to the template, the replicas asked for; that none of the template's own
    annotations and tracking labels are copied; and that the template is not written."""
    backend.scale(MLP2, 3)

    made = server.deployments["modelgate-worker-mlp-v2"]
    tpl = server.deployments["modelgate-worker-mlp"]
    pod = made["spec"]["template"]
    assert made["spec"]["replicas"] == 3
    assert pod["spec"]["containers"][0]["args"] == [
        "worker", "--models", "/models", "--model", "mlp", "--version", "2"]
    assert pod["spec"]["containers"][0]["image"] == "modelgate:1"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45
    assert made["spec"]["strategy"] == tpl["spec"]["strategy"]
    version_label = {"modelgate.version": "2"}
    assert made["spec"]["selector"] == {
        "matchLabels": {**tpl["spec"]["selector"]["matchLabels"], **version_label}}
    assert pod["metadata"]["labels"] == {**tpl["spec"]["template"]["metadata"]["labels"],
                                         **version_label}
    assert made["metadata"]["labels"] == {**pod["metadata"]["labels"],
                                          "modelgate.managed": "true"}
    assert made["metadata"]["annotations"]["modelgate.pool"] == "mlp:2"
    assert LAST_APPLIED not in made["metadata"]["annotations"], (
        "kubectl's annotation would make `apply --prune` treat the copy as a manifest")
    assert "applyset.kubernetes.io/part-of" not in made["metadata"]["labels"], (
        "a tool's tracking label would make it prune the copy as missing from its manifests")
    assert made["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "modelgate-worker-mlp",
        "uid": tpl["metadata"]["uid"]}]
    assert server.writes() == [("POST", "")]
    assert tpl["spec"]["replicas"] == 0


def test_each_version_gets_its_own_deployment_and_selector(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Two versions of one model and
    another model: three Deployments whose selectors are pairwise distinct, so no Deployment
    counts another's pods."""
    for ref in (MLP1, MLP2, IRIS1):
        backend.scale(ref, 1)
    names = ["modelgate-worker-mlp-v1", "modelgate-worker-mlp-v2", "modelgate-worker-iris-v1"]
    selectors = [server.deployments[n]["spec"]["selector"]["matchLabels"] for n in names]
    for i, a in enumerate(selectors):
        for b in selectors[i + 1:]:
            assert any(a.get(k) != v for k, v in b.items()), (a, b)


def test_the_version_replaces_one_the_template_names(server: StandInApiServer,
                                                     backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). A template pinned to a version
    (as the KEDA variant's are) still makes a Deployment per version: the pool's version
    replaces it, in either flag form."""
    server.apply(template("mlp", ["worker", "--version", "1", "--models", "/m",
                                  "--model=mlp", "--version=7"]))
    backend.scale(MLP2, 1)
    [worker] = server.deployments["modelgate-worker-mlp-v2"]["spec"]["template"]["spec"][
        "containers"]
    assert worker["args"] == ["worker", "--models", "/m", "--model", "mlp", "--version", "2"]


def test_scale_to_zero_of_a_pool_without_a_deployment_creates_nothing(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here)."""
    backend.scale(MLP2, 0)
    assert server.writes() == []
    assert "modelgate-worker-mlp-v2" not in server.deployments


def test_a_model_without_a_template_gets_no_workers_and_a_warning(
        server: StandInApiServer, backend: KubernetesBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stand-in API server (no Kubernetes API server here). The warning names the missing
    template and says where to add it; it is logged once, not every tick."""
    backend.scale(PoolRef("fraud", "1"), 1)
    backend.scale(PoolRef("fraud", "1"), 1)
    assert server.writes() == []
    [message] = warnings(caplog)
    assert "no template Deployment serving/modelgate-worker-fraud" in message
    assert "workers.yaml" in message


def test_a_template_without_a_worker_container_is_reported(
        server: StandInApiServer, backend: KubernetesBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stand-in API server (no Kubernetes API server here)."""
    server.apply(template("mlp", ["gateway", "--port", "8080"]))
    backend.scale(MLP1, 1)
    assert server.writes() == []
    [message] = warnings(caplog)
    assert "args start with 'worker'" in message


# --------------------------------------------------------------------------- scaling


def test_scale_patches_the_scale_subresource_and_only_when_spec_differs(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Right after a scale-up the pods
    lag behind spec; asking again for the same count writes nothing (the loop may ask every
    tick). The patch is a merge patch of ``spec.replicas`` on ``deployments/scale``."""
    backend.scale(MLP1, 1)
    server.pods("modelgate-worker-mlp-v1", 1)
    backend.scale(MLP1, 4)
    assert backend.running(MLP1) == 1  # status.replicas: the pods are not there yet
    backend.scale(MLP1, 4)
    assert server.writes() == [("POST", ""), ("PATCH", "/modelgate-worker-mlp-v1/scale")]
    [patch] = [c for c in server.calls if c.method == "PATCH"]
    assert patch.body == {"spec": {"replicas": 4}}
    assert server.deployments["modelgate-worker-mlp-v1"]["spec"]["replicas"] == 4
    backend.scale(MLP1, 0)  # a pool at zero keeps its Deployment
    assert server.deployments["modelgate-worker-mlp-v1"]["spec"]["replicas"] == 0


def test_running_is_status_replicas_and_zero_without_a_deployment(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). A missing Deployment is a 404
    from the API: no workers, not an error."""
    assert backend.running(MLP2) == 0
    backend.scale(MLP2, 5)
    assert backend.running(MLP2) == 0  # created: no status yet
    server.pods("modelgate-worker-mlp-v2", 3)
    assert backend.running(MLP2) == 3
    assert server.writes() == [("POST", "")]


def test_the_template_is_never_scaled(server: StandInApiServer,
                                      backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Every call of the backend, for
    every version, leaves the template's replicas at 0 and never writes to it."""
    for ref in (MLP1, MLP2):
        backend.scale(ref, 3)
        backend.running(ref)
        backend.scale(ref, 1)
    backend.remove(MLP1)
    backend.supervise()
    assert server.deployments["modelgate-worker-mlp"]["spec"]["replicas"] == 0
    assert not [w for w in server.writes() if w[1].startswith("/modelgate-worker-mlp/")
                or w[1] == "/modelgate-worker-mlp"]


def test_a_deployment_of_the_pools_name_that_is_not_the_pools_is_left_alone(
        server: StandInApiServer, backend: KubernetesBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stand-in API server (no Kubernetes API server here). Version 2 of ``mlp`` and the
    template of a model named ``mlp-v2`` share a name: the backend neither scales, counts nor
    deletes that template, and says why."""
    server.apply(template("mlp-v2"))
    backend.scale(MLP2, 3)
    assert backend.running(MLP2) == 0
    backend.remove(MLP2)
    assert server.writes() == []
    assert server.deployments["modelgate-worker-mlp-v2"]["spec"]["replicas"] == 0
    assert any("not made for pool mlp:2" in m for m in warnings(caplog))


# --------------------------------------------------------------------------- API errors


def test_a_conflict_on_create_means_someone_made_it_meanwhile(
        server: StandInApiServer, backend: KubernetesBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stand-in API server (no Kubernetes API server here). Another autoscaler (a previous
    pod, say) creates the Deployment between the backend's read and its create: the 409 is
    no error, and the next tick scales the Deployment that is there."""
    theirs = objects.pool_deployment(server.deployments["modelgate-worker-mlp"], MLP2,
                                     "modelgate-worker-mlp-v2", 1)
    server.before_next("POST", "", lambda: server.create(theirs))
    backend.scale(MLP2, 3)
    assert [m for m, _ in server.writes()] == ["POST"]  # the backend's create: a 409
    assert warnings(caplog) == []
    assert server.deployments["modelgate-worker-mlp-v2"]["spec"]["replicas"] == 1
    backend.scale(MLP2, 3)
    assert server.deployments["modelgate-worker-mlp-v2"]["spec"]["replicas"] == 3


def test_other_api_errors_are_logged_once_and_retried_next_tick(
        server: StandInApiServer, backend: KubernetesBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stand-in API server (no Kubernetes API server here). A refused create (403, as from a
    Role without `create`) and a failing patch (500) do not raise; each is logged with the
    API's message, and the next call does the work."""
    caplog.set_level(logging.INFO, "modelgate.autoscaler")
    server.fail_next("POST", "", 403)
    backend.scale(MLP1, 2)
    assert "modelgate-worker-mlp-v1" not in server.deployments
    [message] = warnings(caplog)
    assert "403" in message and "injected 403" in message
    backend.scale(MLP1, 2)
    assert server.deployments["modelgate-worker-mlp-v1"]["spec"]["replicas"] == 2

    server.fail_next("PATCH", "/modelgate-worker-mlp-v1/scale", 500)
    backend.scale(MLP1, 4)
    backend.scale(MLP1, 4)
    assert server.deployments["modelgate-worker-mlp-v1"]["spec"]["replicas"] == 4
    assert len(warnings(caplog)) == 2
    assert "works again" in caplog.records[-1].getMessage()


def test_running_holds_the_last_count_while_the_api_fails(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Without a reading the loop must
    not act on a guess: while reads fail, ``running`` reports the last count it read."""
    backend.scale(MLP1, 2)
    server.pods("modelgate-worker-mlp-v1", 2)
    assert backend.running(MLP1) == 2
    server.fail_next("GET", "/modelgate-worker-mlp-v1", 503)
    assert backend.running(MLP1) == 2
    server.pods("modelgate-worker-mlp-v1", 1)
    assert backend.running(MLP1) == 1


def test_an_api_server_out_of_reach_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """No API server at all (a client pointed at port 1, which refuses connections). Every
    call returns; each failure is logged."""
    with client.ApiClient(client.Configuration(host="http://127.0.0.1:1")) as api_client:
        backend = KubernetesBackend(NAMESPACE, apps_api=client.AppsV1Api(api_client))
        assert backend.running(MLP1) == 0
        backend.scale(MLP1, 2)
        backend.remove(MLP1)
        backend.supervise()
    assert [m.split(":")[0] for m in warnings(caplog)] == [
        "reading deployment serving/modelgate-worker-mlp-v1",
        "scaling deployment serving/modelgate-worker-mlp-v1",
        "deleting deployment serving/modelgate-worker-mlp-v1",
        "listing deployments in serving"]


# --------------------------------------------------------------------------- removing


def test_remove_deletes_the_pools_deployment_in_the_background(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). The delete propagates in the
    background (the pods then drain with their grace period), holds a uid precondition (never
    a Deployment made again meanwhile), and leaves the template and other versions alone."""
    backend.scale(MLP1, 2)
    backend.scale(MLP2, 2)
    uid = server.deployments["modelgate-worker-mlp-v1"]["metadata"]["uid"]
    backend.remove(MLP1)
    assert set(server.deployments) == {"modelgate-worker-mlp", "modelgate-worker-iris",
                                       "modelgate-worker-mlp-v2"}
    [delete] = [c for c in server.calls if c.method == "DELETE"]
    assert delete.path == "/modelgate-worker-mlp-v1"
    assert delete.body["propagationPolicy"] == "Background"
    assert delete.body["preconditions"]["uid"] == uid
    assert backend.running(MLP1) == 0
    backend.remove(MLP1)  # gone already: nothing to do
    assert len([c for c in server.calls if c.method == "DELETE"]) == 1


def test_a_failed_remove_is_retried_by_supervise_unless_the_pool_comes_back(
        server: StandInApiServer, backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). The loop asks to remove a pool
    once, so the backend retries a failed delete itself; scaling the pool again cancels it."""
    backend.scale(MLP1, 2)
    backend.scale(MLP2, 2)
    server.fail_next("DELETE", "/modelgate-worker-mlp-v1", 500)
    server.fail_next("DELETE", "/modelgate-worker-mlp-v2", 500)
    backend.remove(MLP1)
    backend.remove(MLP2)
    backend.scale(MLP2, 1)  # served again before the retry
    backend.supervise()
    assert "modelgate-worker-mlp-v1" not in server.deployments
    assert server.deployments["modelgate-worker-mlp-v2"]["spec"]["replicas"] == 1
    backend.supervise()
    assert [p for m, p in server.writes() if m == "DELETE"] == [
        "/modelgate-worker-mlp-v1", "/modelgate-worker-mlp-v2", "/modelgate-worker-mlp-v1"]


# --------------------------------------------------------------------------- templates


def test_a_changed_template_is_rolled_out_to_its_pools_deployments(
        server: StandInApiServer, backend: KubernetesBackend, clock: Clock) -> None:
    """Stand-in API server (no Kubernetes API server here). `kubectl apply` of a template
    with a new image: at the next resync (every ``resync_s``) the backend replaces the pod
    template of each Deployment made from it, keeping its replicas, selector and version;
    the other model's Deployment and an unchanged template cost no write."""
    backend.scale(MLP1, 2)
    backend.scale(MLP2, 3)
    backend.scale(IRIS1, 1)
    backend.supervise()  # the first resync: nothing changed
    assert [m for m, _ in server.writes()] == ["POST"] * 3
    newer = template("mlp")
    newer["spec"]["template"]["spec"]["containers"][0]["image"] = "modelgate:2"
    server.apply(newer)
    selector = copy.deepcopy(server.deployments["modelgate-worker-mlp-v2"]["spec"]["selector"])

    clock.now = 29.0
    backend.supervise()
    assert [m for m, _ in server.writes()] == ["POST"] * 3  # not due yet
    clock.now = 30.0
    backend.supervise()

    assert sorted(p for m, p in server.writes() if m == "PUT") == [
        "/modelgate-worker-mlp-v1", "/modelgate-worker-mlp-v2"]
    made = server.deployments["modelgate-worker-mlp-v2"]
    [worker] = made["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "modelgate:2"
    assert worker["args"][-2:] == ["--version", "2"]
    assert made["spec"]["replicas"] == 3 and made["spec"]["selector"] == selector
    assert made["metadata"]["generation"] == 2  # a new pod template: the pods roll
    clock.now = 60.0
    backend.supervise()  # in step now: no more writes
    assert len([m for m, _ in server.writes() if m == "PUT"]) == 2


def test_a_conflict_on_update_is_retried_at_the_next_resync(
        server: StandInApiServer, backend: KubernetesBackend, clock: Clock) -> None:
    """Stand-in API server (no Kubernetes API server here). Someone scales the Deployment
    between the backend's list and its update: the stale update gets a 409 and changes
    nothing; the next resync reads it again and succeeds, keeping the new replicas."""
    backend.scale(MLP1, 2)
    newer = template("mlp")
    newer["spec"]["template"]["spec"]["containers"][0]["image"] = "modelgate:2"
    server.apply(newer)
    server.before_next("PUT", "/modelgate-worker-mlp-v1",
                       lambda: server.scale("modelgate-worker-mlp-v1", 5))
    backend.supervise()
    made = server.deployments["modelgate-worker-mlp-v1"]
    assert made["spec"]["template"]["spec"]["containers"][0]["image"] == "modelgate:1"
    clock.now = 30.0
    backend.supervise()
    assert made["spec"]["template"]["spec"]["containers"][0]["image"] == "modelgate:2"
    assert made["spec"]["replicas"] == 5


def test_stop_all_leaves_the_deployments_alone(server: StandInApiServer,
                                               backend: KubernetesBackend) -> None:
    """Stand-in API server (no Kubernetes API server here). Workers outlive the autoscaler:
    a restarted one finds its Deployments by name."""
    backend.scale(MLP1, 2)
    calls = len(server.calls)
    backend.stop_all()
    assert len(server.calls) == calls


# --------------------------------------------------------------------------- names, args


def test_deployment_names_are_dns_safe_and_configurable() -> None:
    """No API involved. Model names may hold `_` and capitals, which Deployment names may
    not."""
    backend = KubernetesBackend("serving", apps_api=object())
    fraud = PoolRef("Fraud_v2", "3")
    assert backend.template(fraud) == "modelgate-worker-fraud-v2"
    assert backend.deployment(fraud) == "modelgate-worker-fraud-v2-v3"
    custom = KubernetesBackend("serving", template_name="{model}-workers",
                               pool_name="{model}-{version}-workers", apps_api=object())
    assert (custom.template(MLP2), custom.deployment(MLP2)) == ("mlp-workers", "mlp-2-workers")


@pytest.mark.parametrize("args, expected", [
    (["worker", "--model", "mlp"], ["worker", "--model", "mlp", "--version", "2"]),
    (["worker", "--models", "/m", "--model", "x", "--version", "1", "--intra-op-threads", "2"],
     ["worker", "--models", "/m", "--intra-op-threads", "2", "--model", "mlp", "--version",
      "2"]),
    (["worker", "--model=x", "--version=1"], ["worker", "--model", "mlp", "--version", "2"]),
])
def test_pin_args_replaces_model_and_version(args: list[str], expected: list[str]) -> None:
    """No API involved."""
    assert objects.pin_args(args, "mlp", "2") == expected
