"""A stand-in Kubernetes API server for the kubernetes backend's tests.

No Kubernetes API server can run here, so this one serves, over HTTP on a free port of
127.0.0.1, the apps/v1 Deployment endpoints the backend calls. The tests drive the backend
through the real ``kubernetes`` client (its ``AppsV1Api``, request bodies, content types and
``ApiException``s) against it. It keeps Deployments in memory and does what the backend relies
on the real server to do:

- get, list (``labelSelector`` with ``key=value`` terms only), create (409 when the name is
  taken; 422 when the selector does not match the pod template's labels), replace (409 when
  ``resourceVersion`` is stale; 422 when the selector changed: it is immutable), delete (409
  when a ``uid`` precondition fails; records the propagation policy) and the ``scale``
  subresource (get; patch as a merge or strategic merge patch);
- a uid, a ``resourceVersion`` and a ``generation`` (bumped when the spec changes) per
  Deployment, and ``replicas`` defaulting to 1;
- a namespace of its own: a call for another is refused (403), as the Role would;
- no controllers: no pods run, and ``status.replicas`` is whatever a test sets (``pods``);
  deleting a template does not garbage-collect what it owns.

``apply`` puts an object as ``kubectl apply`` would (with its last-applied annotation),
``create`` as another client would, ``before_next`` runs what another client does between two
calls, and ``fail_next`` answers the next matching call with an error status.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str  # after /apis/apps/v1/namespaces/{namespace}/deployments
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class StandInApiServer:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.deployments: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._next: list[tuple[str, str, Callable[[], object]]] = []
        self._versions = itertools.count(1)
        self._lock = threading.RLock()  # before_next actions run under it
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ for tests

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or update ``doc`` as ``kubectl apply`` would (a changed spec bumps the
        generation; ``status`` and the uid stay)."""
        doc = copy.deepcopy(doc)
        meta = doc.setdefault("metadata", {})
        meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(doc, sort_keys=True)
        with self._lock:
            current = self.deployments.get(meta["name"])
            if current is None:
                return copy.deepcopy(self._create(doc))
            if current["spec"] != doc["spec"]:
                current["metadata"]["generation"] += 1
            current["spec"] = {**doc["spec"], "replicas": doc["spec"].get("replicas", 1)}
            current["metadata"]["labels"] = meta.get("labels", {})
            current["metadata"]["annotations"] = meta["annotations"]
            current["metadata"]["resourceVersion"] = str(next(self._versions))
            return copy.deepcopy(current)

    def scale(self, name: str, replicas: int) -> None:
        """Set ``spec.replicas`` as another client would (``kubectl scale``)."""
        with self._lock:
            deployment = self.deployments[name]
            deployment["spec"]["replicas"] = replicas
            deployment["metadata"]["generation"] += 1
            deployment["metadata"]["resourceVersion"] = str(next(self._versions))

    def pods(self, name: str, replicas: int | None) -> None:
        """What the Deployment controller would report: ``status.replicas``."""
        with self._lock:
            status = self.deployments[name].setdefault("status", {})
            if replicas is None:
                status.pop("replicas", None)
            else:
                status["replicas"] = replicas

    def before_next(self, method: str, path: str, action: Callable[[], object]) -> None:
        """Run ``action`` just before serving the next ``method`` call on ``path`` (``""``
        for the collection, ``"/x"`` or ``"/x/scale"``): what another client did meanwhile.
        It runs on the server's thread: it may call ``create`` or ``scale``, never the API."""
        self._next.append((method, path, action))

    def fail_next(self, method: str, path: str, code: int) -> None:
        """Answer the next ``method`` call on ``path`` with the error status ``code``."""
        def fail() -> None:
            raise ApiError(code, "Injected", f"injected {code}")

        self.before_next(method, path, fail)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create ``doc`` as another client would (no last-applied annotation)."""
        with self._lock:
            return copy.deepcopy(self._create(copy.deepcopy(doc)))

    def writes(self) -> list[tuple[str, str]]:
        return [(c.method, c.path) for c in self.calls if c.method != "GET"]

    # ------------------------------------------------------------------ the API

    def _create(self, doc: dict[str, Any]) -> dict[str, Any]:
        meta = doc["metadata"]
        if meta["name"] in self.deployments:
            raise ApiError(409, "AlreadyExists",
                           f'deployments.apps "{meta["name"]}" already exists')
        self._check_selector(doc)
        meta.update(namespace=self.namespace, uid=str(uuid.uuid4()), generation=1,
                    resourceVersion=str(next(self._versions)))
        doc["spec"].setdefault("replicas", 1)
        doc.setdefault("status", {})
        doc.update(apiVersion="apps/v1", kind="Deployment")
        self.deployments[meta["name"]] = doc
        return doc

    @staticmethod
    def _check_selector(doc: dict[str, Any]) -> None:
        wanted = doc["spec"]["selector"].get("matchLabels", {})
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in wanted.items()):
            raise ApiError(422, "Invalid", "spec.template.metadata.labels: Invalid value: "
                           "`selector` does not match template `labels`")

    def _get(self, name: str) -> dict[str, Any]:
        if name not in self.deployments:
            raise ApiError(404, "NotFound", f'deployments.apps "{name}" not found')
        return self.deployments[name]

    def _scale(self, deployment: dict[str, Any]) -> dict[str, Any]:
        meta = deployment["metadata"]
        selector = deployment["spec"]["selector"].get("matchLabels", {})
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": meta["name"], "namespace": self.namespace,
                             "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
                "spec": {"replicas": deployment["spec"]["replicas"]},
                "status": {"replicas": deployment.get("status", {}).get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in selector.items())}}

    def _serve(self, call: Call) -> tuple[int, dict[str, Any]]:
        for pending in self._next:
            if pending[:2] == (call.method, call.path):
                self._next.remove(pending)
                pending[2]()
                break
        name, _, sub = call.path.lstrip("/").partition("/")
        body = call.body
        if call.method == "GET" and not name:
            terms = [t.partition("=") for t in
                     call.query.get("labelSelector", [""])[0].split(",") if t]
            if any(not sep or t.endswith("!") for t, sep, _ in terms):
                raise ApiError(400, "BadRequest", "the stand-in knows key=value selectors only")
            items = [d for d in self.deployments.values()
                     if all(d["metadata"].get("labels", {}).get(k) == v for k, _, v in terms)]
            return 200, {"apiVersion": "apps/v1", "kind": "DeploymentList",
                         "metadata": {"resourceVersion": str(next(self._versions))},
                         "items": [{k: v for k, v in d.items() if k not in ("apiVersion", "kind")}
                                   for d in items]}
        if call.method == "POST" and not name:
            return 201, self._create(body)
        deployment = self._get(name)
        if sub == "scale":
            if call.method == "PATCH":
                if call.content_type not in MERGE_PATCHES:
                    raise ApiError(415, "UnsupportedMediaType", f"{call.content_type} on scale")
                deployment["spec"]["replicas"] = body["spec"]["replicas"]
                deployment["metadata"]["generation"] += 1
                deployment["metadata"]["resourceVersion"] = str(next(self._versions))
            return 200, self._scale(deployment)
        if call.method == "GET":
            return 200, deployment
        if call.method == "PUT":
            meta = deployment["metadata"]
            if body["metadata"].get("resourceVersion") != meta["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            if body["spec"]["selector"] != deployment["spec"]["selector"]:
                raise ApiError(422, "Invalid", "spec.selector: field is immutable")
            self._check_selector(body)
            if body["spec"] != deployment["spec"]:
                meta["generation"] += 1
            for key in ("labels", "annotations", "ownerReferences"):
                meta[key] = body["metadata"].get(key)
            deployment["spec"] = body["spec"]
            meta["resourceVersion"] = str(next(self._versions))
            return 200, deployment
        if call.method == "DELETE":
            uid = ((body or {}).get("preconditions") or {}).get("uid")
            if uid is not None and uid != deployment["metadata"]["uid"]:
                raise ApiError(409, "Conflict", "Precondition failed: UID in precondition")
            del self.deployments[name]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{call.method} {call.path}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        prefix = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    if not url.path.startswith(prefix):
                        raise ApiError(403, "Forbidden", f"{url.path}: not this namespace")
                    call = Call(self.command, url.path[len(prefix):], parse_qs(url.query),
                                self.headers.get("Content-Type"),
                                json.loads(raw) if raw else None)
                    with server._lock:
                        server.calls.append(call)
                        code, answer = server._serve(call)
                        payload = json.dumps(answer).encode()
                except ApiError as e:
                    code = e.code
                    payload = json.dumps({"kind": "Status", "apiVersion": "v1",
                                          "status": "Failure", "message": e.message,
                                          "reason": e.reason, "code": e.code}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        return Handler


@contextmanager
def stand_in_api(namespace: str) -> Iterator[tuple[StandInApiServer, client.AppsV1Api]]:
    """A running stand-in and a real ``AppsV1Api`` configured for it; both closed after."""
    server = StandInApiServer(namespace)
    server.start()
    api_client = client.ApiClient(client.Configuration(host=server.url))
    try:
        yield server, client.AppsV1Api(api_client)
    finally:
        api_client.close()
        server.close()
