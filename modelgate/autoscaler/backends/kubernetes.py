"""Kubernetes backend: each pool's workers are a Deployment made from its model's template.

A model's template is the Deployment ``modelgate-worker-<model>`` of the manifests, kept at zero
replicas; this backend never scales it. A pool (one version of the model) gets a Deployment of
its own, ``modelgate-worker-<model>-v<version>``, copied from the template with the version
pinned (``kubernetes_objects.py`` says exactly what is copied and added). The Deployment
controller does the rest: it starts pods, replaces dead ones, and on scale-down or deletion
sends SIGTERM, which makes a worker drain (answer what it holds) within the pod's
``terminationGracePeriodSeconds``.

What it asks of the API, all in its own namespace (deploy/kubernetes/autoscaler.yaml's Role
allows exactly these verbs):

- ``scale``: get the pool's Deployment; when there is none and workers are wanted, get the
  template and create the copy with that many replicas; else patch ``deployments/scale``,
  and only when ``spec.replicas`` differs.
- ``running``: ``status.replicas`` of the pool's Deployment (0 when there is none).
- ``remove``: delete it (background propagation: its pods drain with their grace period).
- ``supervise``: every ``resync_s``, list the Deployments it made and update those whose
  template changed since (a new image, say), which rolls their pods; retry failed removals.

Deployments are read as the API's JSON, not as the client's models, so a copy never silently
drops a field the installed client does not know (kubernetes >= 37 refuses such a body when
it is sent instead: an error like any other). Nothing here raises to the control loop: an API
error, or an API server out of reach, is logged (once, until it changes) and the call is made
again on the next tick. A Deployment of the pool's name that the backend did not make (a
template of a model named ``<model>-v<n>``) is never scaled, changed or deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s  # optional dependency: 'modelgate[kubernetes]'
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from modelgate.autoscaler.backends import kubernetes_objects as objects
from modelgate.autoscaler.backends.base import PoolRef

log = logging.getLogger("modelgate.autoscaler")

TEMPLATE_NAME = "modelgate-worker-{model}"
POOL_NAME = "modelgate-worker-{model}-v{version}"
REQUEST_TIMEOUT_S = 10.0  # per API call: a stalled API server must not stall the loop
RESYNC_S = 30.0  # how often templates are compared with the Deployments made from them

# What a call to the API may raise that is the cluster's doing, not a bug here: an error
# status, or the API server out of reach.
API_ERRORS = (ApiException, HTTPError)
# Any of those, and the ValueErrors of this side: a template that cannot make a worker
# (TemplateError), a Deployment of the pool's name that is not the pool's (ForeignDeployment),
# a body the client's models refuse
# (kubernetes >= 37 validates with pydantic: ValidationError), an answer that is not JSON.
FAILURES = (*API_ERRORS, ValueError)


def _dns_label(model: str) -> str:
    """``model`` as it may appear in a Deployment name: lower case, ``_`` becomes ``-``."""
    return re.sub(r"[^a-z0-9.-]", "-", model.lower())


def _load_apps_api() -> Any:
    """An AppsV1Api from the pod's service account, else from ~/.kube/config (or KUBECONFIG)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return k8s.AppsV1Api()


class ForeignDeployment(ValueError):
    """A Deployment has the pool's name but the backend did not make it for that pool."""


def _status(error: Exception) -> int | None:
    return error.status if isinstance(error, ApiException) else None


def _describe(error: Exception) -> str:
    """An error in one line: the API's status and message (RBAC says which verb it lacks)."""
    if isinstance(error, ValueError):  # ours, or the client's validation (several lines)
        return " ".join(str(error).split())
    if not isinstance(error, ApiException):
        return f"{type(error).__name__}: {error}"
    message = None
    with contextlib.suppress(ValueError, AttributeError):  # a body that is not a Status
        message = json.loads(error.body or "{}").get("message")
    return f"{error.status} {error.reason}" + (f": {message}" if message else "")


class KubernetesBackend:
    """Runs each pool as a Deployment in ``namespace``, copied from its model's template.

    ``template_name`` and ``pool_name`` are the Deployment names, formatted with ``model``
    (DNS-safe: lower case, ``_`` as ``-``) and ``version``. ``apps_api`` is a
    ``kubernetes.client.AppsV1Api``; by default one configured from inside the cluster,
    falling back to the local kubeconfig. ``clock`` times the resyncs.
    """

    name = "kubernetes"

    def __init__(self, namespace: str = "modelgate", *, template_name: str = TEMPLATE_NAME,
                 pool_name: str = POOL_NAME, apps_api: Any = None, resync_s: float = RESYNC_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace = namespace
        self.template_name = template_name
        self.pool_name = pool_name
        self.api = apps_api if apps_api is not None else _load_apps_api()
        self.resync_s = resync_s
        self.clock = clock
        self._synced_at: float | None = None
        self._removing: set[PoolRef] = set()  # removals that failed, retried by supervise
        self._running: dict[PoolRef, int] = {}  # last count read, reported while the API fails
        self._failing: dict[str, str] = {}  # what -> the error last logged for it

    # ------------------------------------------------------------------ names

    def template(self, ref: PoolRef) -> str:
        """The name of the pool's model's template Deployment."""
        return self.template_name.format(model=_dns_label(ref.model), version=ref.version)

    def deployment(self, ref: PoolRef) -> str:
        """The name of the pool's own Deployment."""
        return self.pool_name.format(model=_dns_label(ref.model), version=ref.version)

    # ------------------------------------------------------------------ errors

    def _failed(self, what: str, message: str) -> None:
        """Log a failure once, until it changes or ``what`` succeeds (the loop retries every
        tick, and one line a second says nothing new)."""
        if self._failing.get(what) != message:
            log.warning("%s: %s; trying again next tick", what, message)
        self._failing[what] = message

    def _succeeded(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            log.info("%s: works again", what)

    # ------------------------------------------------------------------ reads

    def _read(self, name: str) -> objects.Object | None:
        """The Deployment as the API's JSON; None when there is none. Raises API_ERRORS."""
        try:
            response = self.api.read_namespaced_deployment(
                name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        try:
            found: objects.Object = json.loads(response.data)
        finally:
            response.release_conn()
        return found

    def _read_own(self, ref: PoolRef) -> objects.Object | None:
        """The pool's Deployment if the backend made it for this pool; None when there is none.
        Raises API_ERRORS, and ForeignDeployment for a Deployment of that name it did not make
        for the pool."""
        name = self.deployment(ref)
        deployment = self._read(name)
        if deployment is not None and objects.pool_of(deployment) != ref.pool:
            raise ForeignDeployment(
                f"Deployment {name} exists but was not made for pool {ref.pool} (a template of "
                "another model of that name?); rename that model or its template")
        return deployment

    def running(self, ref: PoolRef) -> int:
        """Pods the pool's Deployment has now (``status.replicas``; terminating ones do not
        count), 0 when it has none. While the API fails: the last count read."""
        what = f"reading deployment {self.namespace}/{self.deployment(ref)}"
        try:
            deployment = self._read_own(ref)
        except FAILURES as e:
            self._failed(what, _describe(e))
            return self._running.get(ref, 0)
        self._succeeded(what)
        count = 0
        if deployment is not None:
            status = deployment.get("status") or {}
            count = int(status.get("replicas") or 0)
        self._running[ref] = count
        return count

    # ------------------------------------------------------------------ writes

    def scale(self, ref: PoolRef, desired: int) -> None:
        """Make the pool's Deployment want ``desired`` replicas, creating it from the template
        when there is none (and ``desired`` > 0); no write when it already wants that many."""
        self._removing.discard(ref)
        name = self.deployment(ref)
        what = f"scaling deployment {self.namespace}/{name}"
        try:
            deployment = self._read_own(ref)
            if deployment is None:
                if desired > 0:
                    self._create(ref, desired)
            else:
                current = (deployment.get("spec") or {}).get("replicas")
                if current != desired:
                    log.info("scaling deployment %s/%s from %s to %d replicas", self.namespace,
                             name, current, desired)
                    self.api.patch_namespaced_deployment_scale(
                        name, self.namespace, {"spec": {"replicas": desired}},
                        _request_timeout=REQUEST_TIMEOUT_S)
        except FAILURES as e:
            self._failed(what, _describe(e))
            return
        self._succeeded(what)

    def _create(self, ref: PoolRef, replicas: int) -> None:
        template_name = self.template(ref)
        template = self._read(template_name)
        if template is None:
            raise objects.TemplateError(
                f"no template Deployment {self.namespace}/{template_name} for model "
                f"{ref.model!r}: add one to the manifests (deploy/kubernetes/base/workers.yaml)")
        body = objects.pool_deployment(template, ref, self.deployment(ref), replicas)
        log.info("creating deployment %s/%s for %s from %s with %d replicas", self.namespace,
                 self.deployment(ref), ref.pool, template_name, replicas)
        try:
            self.api.create_namespaced_deployment(self.namespace, body,
                                                  _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as e:
            if e.status != 409:
                raise
            # Made meanwhile (by a previous autoscaler, say): the next tick reads and scales it.
            log.info("deployment %s/%s already exists", self.namespace, self.deployment(ref))

    def remove(self, ref: PoolRef) -> None:
        """The pool is gone for good: delete its Deployment. Its pods get SIGTERM and drain
        within their grace period; a failure is retried by ``supervise``."""
        self._running.pop(ref, None)
        name = self.deployment(ref)
        what = f"deleting deployment {self.namespace}/{name}"
        try:
            deployment = self._read_own(ref)
            if deployment is not None:
                log.info("deleting deployment %s/%s: %s is no longer served", self.namespace,
                         name, ref.pool)
                # The uid precondition: never a Deployment made again under that name meanwhile.
                self.api.delete_namespaced_deployment(
                    name, self.namespace, body=k8s.V1DeleteOptions(
                        propagation_policy="Background",
                        preconditions=k8s.V1Preconditions(uid=deployment["metadata"]["uid"])),
                    _request_timeout=REQUEST_TIMEOUT_S)
        except ForeignDeployment as e:
            self._removing.discard(ref)  # not ours: nothing to remove, nothing to retry
            self._failed(what, _describe(e))
            return
        except FAILURES as e:
            if _status(e) != 404:  # 404: gone between the read and the delete
                self._removing.add(ref)
                self._failed(what, _describe(e))
                return
        self._removing.discard(ref)
        self._succeeded(what)

    # ------------------------------------------------------------------ upkeep

    def supervise(self) -> None:
        """Retry failed removals; every ``resync_s``, roll template changes out to the pools'
        Deployments. Dead pods need nothing: the Deployment controller replaces them."""
        for ref in sorted(self._removing, key=lambda r: r.pool):
            self.remove(ref)
        now = self.clock()
        if self._synced_at is None or now - self._synced_at >= self.resync_s:
            self._synced_at = now
            self.follow_templates()

    def follow_templates(self) -> None:
        """Update every Deployment made from a template that changed since (kubectl apply of
        a new image, resources, env; ``kubectl rollout restart`` of the template): the
        Deployment controller then rolls its pods. A template that is gone changes nothing."""
        what = f"listing deployments in {self.namespace}"
        try:
            response = self.api.list_namespaced_deployment(
                self.namespace, label_selector=f"{objects.MANAGED_LABEL}=true",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
            try:
                made = json.loads(response.data).get("items") or []
            finally:
                response.release_conn()
        except FAILURES as e:
            self._failed(what, _describe(e))
            return
        self._succeeded(what)
        templates: dict[str, objects.Object | None] = {}
        for deployment in made:
            pool = objects.pool_of(deployment)
            if pool is None:
                continue
            model, _, version = pool.rpartition(":")
            ref = PoolRef(model, version)
            if deployment["metadata"].get("name") == self.deployment(ref):
                self._follow(deployment, ref, templates)

    def _follow(self, deployment: objects.Object, ref: PoolRef,
                templates: dict[str, objects.Object | None]) -> None:
        name = self.deployment(ref)
        what = f"updating deployment {self.namespace}/{name} from its template"
        try:
            template_name = self.template(ref)
            if template_name not in templates:
                templates[template_name] = self._read(template_name)
            template = templates[template_name]
            updated = (objects.follow_template(deployment, template, ref)
                       if template is not None else None)
            if updated is not None:
                log.info("template %s changed: updating deployment %s/%s (its pods roll)",
                         template_name, self.namespace, name)
                self.api.replace_namespaced_deployment(name, self.namespace, updated,
                                                       _request_timeout=REQUEST_TIMEOUT_S)
        except FAILURES as e:
            # 409: changed meanwhile (resourceVersion); the next resync reads it again.
            self._failed(what, _describe(e))
            return
        self._succeeded(what)

    def stop_all(self) -> None:
        """Nothing to do: the workers belong to their Deployments and outlive the autoscaler."""
