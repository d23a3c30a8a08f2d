"""A pool's worker Deployment, built from its model's template Deployment. Pure: no API calls.

A model's *template* is a Deployment of the manifests (``modelgate-worker-<model>``) kept at
zero replicas. For each pool (one version of the model) the kubernetes backend creates a
Deployment of its own from it (``modelgate-worker-<model>-v<version>``), which carries:

- the template's pod template, ``strategy``, ``minReadySeconds``, ``revisionHistoryLimit`` and
  ``progressDeadlineSeconds``; the worker container (the one whose ``args`` start with
  ``worker``) runs ``--model M --version V``, replacing whatever the template says;
- the labels of the template's pods plus ``modelgate.version=V`` on the Deployment, in its
  selector and on its pods, so each version's Deployment selects its own pods only. Selectors
  are immutable, so the label is there from the start. ``modelgate.managed=true`` marks the
  Deployments the backend made (it lists them by it). Not the template's own labels: tools
  that track what they applied by label (kubectl's ApplySets, Argo CD's instance label) would
  count the copy as theirs, find it missing from the manifests and prune it;
- annotations ``modelgate.pool`` (the pool id ``<model>:<version>``: label values may not
  hold a colon) and ``modelgate.template-hash`` (what the copy was made from, so a changed
  template is rolled out to it), but none of the template's own: kubectl's
  ``last-applied-configuration`` would make ``kubectl apply --prune`` treat the copy as a
  manifest of its own;
- an owner reference to the template, so deleting the template (``kubectl delete -k``)
  garbage-collects its pools' Deployments and their pods.

Objects are plain dicts as the API serves them (camelCase), so nothing the client's models do
not know is lost in a copy.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from modelgate.autoscaler.backends.base import PoolRef

VERSION_LABEL = "modelgate.version"  # the version a pool's Deployment and its pods serve
MANAGED_LABEL = "modelgate.managed"  # "true" on the Deployments the backend created
POOL_ANNOTATION = "modelgate.pool"  # "<model>:<version>", the pool a Deployment serves
HASH_ANNOTATION = "modelgate.template-hash"  # digest of what the template gave it
# The parts of a template's spec a pool's Deployment copies (never replicas or selector).
COPIED_SPEC = ("template", "strategy", "minReadySeconds", "revisionHistoryLimit",
               "progressDeadlineSeconds")
WORKER_COMMAND = "worker"  # args[0] of the container that runs `modelgate worker`

Object = dict[str, Any]


class TemplateError(ValueError):
    """The template Deployment cannot make a pool's Deployment (the message says why)."""


def pin_args(args: list[str], model: str, version: str) -> list[str]:
    """``args`` without any ``--model``/``--version`` (either form), then ``--model M
    --version V``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--model", "--version"):
            skip = True
        elif not arg.startswith(("--model=", "--version=")):
            kept.append(arg)
    return [*kept, "--model", model, "--version", version]


def _worker(pod_spec: Object, template: str) -> Object:
    workers = [c for c in pod_spec.get("containers", [])
               if (c.get("args") or [None])[0] == WORKER_COMMAND]
    if len(workers) != 1:
        raise TemplateError(
            f"template Deployment {template} needs exactly one container whose args start with "
            f"{WORKER_COMMAND!r} (it has {len(workers)}): that container is the pool's worker")
    return workers[0]


def pool_spec(template: Object, ref: PoolRef) -> Object:
    """The spec fields a pool's Deployment takes from ``template``, its version pinned."""
    name = template["metadata"]["name"]
    spec = {k: copy.deepcopy(v) for k, v in template["spec"].items() if k in COPIED_SPEC}
    pod = spec.get("template")
    if not pod or "spec" not in pod:
        raise TemplateError(f"template Deployment {name} has no pod template")
    pod.setdefault("metadata", {})
    pod["metadata"]["labels"] = {**(pod["metadata"].get("labels") or {}),
                                 VERSION_LABEL: ref.version}
    worker = _worker(pod["spec"], name)
    worker["args"] = pin_args(worker["args"], ref.model, ref.version)
    return spec


def spec_hash(spec: Object) -> str:
    """A short digest of ``spec``, independent of key order."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_deployment(template: Object, ref: PoolRef, name: str, replicas: int) -> Object:
    """The body that creates pool ``ref``'s Deployment ``name`` from ``template`` (as read
    from the API: it needs the template's uid for the owner reference)."""
    meta = template["metadata"]
    spec = pool_spec(template, ref)
    labels = spec["template"]["metadata"]["labels"]  # the version label included
    selector = copy.deepcopy(template["spec"].get("selector") or {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}),
                               VERSION_LABEL: ref.version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {**labels, MANAGED_LABEL: "true"},
            "annotations": {POOL_ANNOTATION: ref.pool, HASH_ANNOTATION: spec_hash(spec)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": meta["name"], "uid": meta["uid"]}],
        },
        "spec": {**spec, "replicas": replicas, "selector": selector},
    }


def pool_of(deployment: Object) -> str | None:
    """The pool a Deployment the backend made serves; None for any other Deployment."""
    meta = deployment.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_LABEL) != "true":
        return None
    pool = (meta.get("annotations") or {}).get(POOL_ANNOTATION)
    return pool if isinstance(pool, str) else None


def follow_template(deployment: Object, template: Object, ref: PoolRef) -> Object | None:
    """``deployment`` (pool ``ref``'s, as read) with the spec ``template`` gives now, for a
    replace; None when it already has it. Replicas, selector and labels stay as they are."""
    spec = pool_spec(template, ref)
    digest = spec_hash(spec)
    annotations = deployment["metadata"].get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) == digest:
        return None
    # Not status (an update ignores it) nor managedFields (left out, the server keeps them).
    updated = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {k: copy.deepcopy(v) for k, v in deployment["metadata"].items()
                            if k != "managedFields"},
               "spec": copy.deepcopy(deployment["spec"])}
    updated["metadata"]["annotations"] = {**annotations, HASH_ANNOTATION: digest}
    for key in COPIED_SPEC:
        if key in spec:
            updated["spec"][key] = spec[key]
        else:
            updated["spec"].pop(key, None)
    return updated
