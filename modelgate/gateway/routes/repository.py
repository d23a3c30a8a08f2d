"""Triton's model repository extension: the index, and load and unload in explicit mode.

``POST /v2/repository/index`` lists every version on disk and every version loaded with its
state (READY, LOADING, UNLOADING, UNAVAILABLE) and why, and, for a version whose folder says
where it came from, its run, registry entry, params and training metrics (``lineage``).
``load`` and ``unload`` ask the decider (the holder of the control lease) and answer when it is
done: 200 once every version the model's policy serves is READY (or it is unloaded), 400 with
the reason when a version failed, 202 with where to look when the caller's ``timeout_ms``
(default 120 s) passed first. Outside explicit mode they are refused with 400 (Triton's
semantics), and with no decider running, 503. A load may carry files as Triton's client sends
them (``parameters`` of ``"file:<version>/model.onnx"`` to base64 content): they are written
into the repository first, atomically, then loaded.

``POST /v2/repository/mlflow/webhook`` takes MLflow's model-registry webhooks (a new model
version, an alias set or deleted): it only asks the decider to ask the registry about that
registered model now, instead of at its next poll; what serves is always what the registry's
API says, never what a webhook body claims. It is accepted with a valid ``X-MLflow-Signature``
made with ``--mlflow-webhook-secret`` (MLflow cannot send an API key), else like load: with
an admin key when the server has keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
import uuid
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import BackendUnavailable, InvalidInput, ModelNotFound, Unauthorized
from modelgate.core.lineage import Lineage
from modelgate.core.repository import RepositoryError, check_name, scan_repository
from modelgate.core.store import models as model_store
from modelgate.core.store.models import CommandResult, ControlCommand
from modelgate.gateway import protocol
from modelgate.gateway.auth import check_bearer
from modelgate.gateway.body import Bodies, BodyLimits, json_body
from modelgate.gateway.dataplane import DataPlane

JSON = "application/json"
DEFAULT_TIMEOUT_MS = 120_000
POLL_S = 0.1


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


async def object_body(request: Request) -> dict[str, Any]:
    bodies: Bodies = request.app.state.bodies
    async with json_body(request, bodies.limits, bodies.budget) as raw:
        if not raw.strip():
            return {}
        # One large base64 string at most (a model file): quick to parse on the event loop.
        body = protocol.loads(raw)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object, e.g. {\"parameters\": {}}")
    return body


def _lineage(lineage: Lineage) -> dict[str, Any]:
    """The index's short form of a version's lineage: the run and the registry entry, the
    params and the training metrics (the rest: the version's metadata)."""
    return {"run_id": lineage.run_id, "registry": dict(lineage.registry),
            "params": dict(lineage.params), "metrics": dict(lineage.metrics)}


def _index(root: Path, plane: DataPlane, ready_only: bool) -> list[dict[str, Any]]:
    """Every version loaded (its state) and every version on disk that is not (UNAVAILABLE,
    with why), by model name and version; those with a lineage carry it (``lineage``)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    lineages: dict[tuple[str, str], Lineage] = {}
    for name, scan in scan_repository(root).items():
        served = set(scan.served())
        for version, found in scan.versions.items():
            reason = found.error or (scan.unserved_reason(version) if version not in served
                                     else "not loaded")
            rows[name, version] = {"name": name, "version": version, "state": "UNAVAILABLE",
                                   "reason": reason}
            if found.loaded is not None:
                lineages[name, version] = found.loaded.lineage
        if scan.error:
            rows[name, ""] = {"name": name, "version": "", "state": "UNAVAILABLE",
                              "reason": scan.error}
    for name, model in plane.models.items():
        for version, served_version in model.versions.items():
            state = served_version.state
            warnings = (served_version.version.lineage.warnings
                        if served_version.version is not None else ())
            # A signature its MLmodel disagrees with is served by the graph, and said here.
            reason = "; ".join([state.reason] * bool(state.reason) + [
                f"warning: {w}; serving by the ONNX graph" for w in warnings])
            rows[name, version] = {"name": name, "version": version,
                                   "state": state.status.value, "reason": reason}
            if served_version.version is not None:
                lineages[name, version] = served_version.version.lineage
    for key, lineage in lineages.items():
        if not lineage.empty:
            rows[key]["lineage"] = _lineage(lineage)
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[0], int(k[1] or 0)))]
    return [row for row in ordered if row["state"] == "READY"] if ready_only else ordered


async def index(request: Request) -> Response:
    plane = _plane(request)
    body = await object_body(request)
    ready_only = body.get("ready") is True
    rows = await asyncio.to_thread(_index, plane.settings.models_dir, plane, ready_only)
    return Response(protocol.dumps(rows), media_type=JSON)


def key_id(request: Request) -> str:
    """Who asked, for the record: a short hash of the key used, never the key."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "anonymous"
    return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:8]


def _write_files(root: Path, model: str, parameters: dict[str, Any]) -> list[str]:
    """Triton's ``file:<version>/model.onnx`` parameters, written atomically (to a temporary
    name, then renamed) into the model's folder; returns the paths written."""
    written = []
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        relative = key.removeprefix("file:")
        version, _, filename = relative.partition("/")
        try:
            check_name(version, "version")
        except RepositoryError as e:
            raise InvalidInput(f"parameter {key!r}: {e}") from e
        if filename != "model.onnx":
            raise InvalidInput(f"parameter {key!r}: only <version>/model.onnx can be uploaded")
        if not isinstance(value, str):
            raise InvalidInput(f"parameter {key!r} must be the file's content in base64")
        try:
            content = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"parameter {key!r} is not valid base64: {e}") from e
        folder = root / model / version
        if (folder / filename).exists():
            raise InvalidInput(f"version {version} of {model!r} exists already and versions "
                               "are immutable: upload it as a new version")
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{filename}.{uuid.uuid4().hex}.part"
        temporary.write_bytes(content)
        os.replace(temporary, folder / filename)
        written.append(f"{model}/{version}/{filename}")
    return written


async def _command(request: Request, op: str) -> Response:
    plane = _plane(request)
    name = request.path_params["name"]
    try:
        check_name(name)
    except RepositoryError as e:
        raise ModelNotFound(str(e)) from e
    body = await object_body(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    timeout_ms = parameters.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or not (
            1 <= timeout_ms <= 3_600_000):
        raise InvalidInput(f"parameters.timeout_ms must be milliseconds in [1, 3600000], got "
                           f"{timeout_ms!r}")
    if plane.decider_mode is None:
        raise BackendUnavailable(
            f"no model control loop runs to {op} models: run `modelgate autoscaler` (or "
            "`modelgate up`) against this Redis")
    if plane.decider_mode != "explicit":
        raise InvalidInput(f"the model control mode is {plane.decider_mode}: {op} works in "
                           "explicit mode only (--model-control-mode explicit); change the "
                           "repository folder instead")
    if op == "load":
        await asyncio.to_thread(_write_files, plane.settings.models_dir, name, parameters)
    command = ControlCommand(uuid.uuid4().hex, op, name, key_id(request), time.time())
    await plane.client.xadd(model_store.COMMANDS, command.fields(),
                            maxlen=model_store.COMMANDS_MAXLEN, approximate=True)
    result = await wait_for_result(plane, command.id, time.monotonic() + timeout_ms / 1000.0)
    if result is None or result.status == "pending":
        return Response(protocol.dumps({
            "status": "pending", "message": f"the {op} of {name!r} is still under way; "
            "follow it with POST /v2/repository/index", "location": "/v2/repository/index"}),
            status_code=202, media_type=JSON, headers={"Location": "/v2/repository/index"})
    if result.status == "done":
        # Read your writes: this gateway serves the new state before it says it is done.
        await plane.refresh()
        return Response(protocol.dumps({}), media_type=JSON)
    if result.status == "failed" and "no model" in result.message:
        raise ModelNotFound(result.message)
    raise InvalidInput(f"{op} of {name!r} failed: {result.message}")


async def wait_for_result(plane: DataPlane, command_id: str, until: float) -> CommandResult | None:
    result: CommandResult | None = None
    while time.monotonic() < until:
        raw = await plane.client.get(model_store.command_result(command_id))
        if raw is not None:
            result = CommandResult.decode(raw)
            if result.status != "pending":
                return result
        await asyncio.sleep(POLL_S)
    return result


# A signed webhook older (or newer) than this is refused: a replayed delivery does nothing.
WEBHOOK_MAX_AGE_S = 300


def signed_by(secret: str, headers: Any, body: bytes, now: float) -> bool:
    """MLflow's webhook signature: ``v1,`` + base64 of HMAC-SHA256 over
    ``{delivery id}.{timestamp}.{body}``, with a timestamp within WEBHOOK_MAX_AGE_S."""
    signature = headers.get("x-mlflow-signature") or ""
    delivery = headers.get("x-mlflow-delivery-id") or ""
    stamp = headers.get("x-mlflow-timestamp") or ""
    try:
        if abs(now - int(stamp)) > WEBHOOK_MAX_AGE_S:
            return False
    except ValueError:
        return False
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body,
                      hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    return hmac.compare_digest(expected.encode(), signature.encode())


async def mlflow_webhook(request: Request) -> Response:
    plane = _plane(request)
    settings = plane.settings
    bodies: Bodies = request.app.state.bodies
    # A webhook is small: a megabyte at most, whatever the server's limit for calls.
    limits = BodyLimits(min(bodies.limits.max_bytes, 1 << 20), bodies.limits.timeout_s)
    async with json_body(request, limits, bodies.budget) as raw:
        body = bytes(raw)
    secret = settings.mlflow_webhook_secret
    if not (secret and signed_by(secret, request.headers, body, time.time())):
        keys = tuple(k.encode() for k in settings.admin_api_keys or settings.api_keys)
        if keys:
            check_bearer(request.headers.get("authorization"), keys)
        elif secret:
            raise Unauthorized("the webhook's X-MLflow-Signature is missing or does not match "
                               "--mlflow-webhook-secret (or is over 5 minutes old)")
    payload = protocol.loads(body) if body.strip() else {}
    data = payload.get("data") if isinstance(payload, dict) else None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidInput("not an MLflow model-registry webhook: expected {\"data\": "
                           "{\"name\": REGISTERED_MODEL, ...}}")
    if plane.decider_mode is None:
        raise BackendUnavailable("no decider runs to follow the registry: run `modelgate "
                                 "autoscaler` (or `modelgate up`) against this Redis")
    command = ControlCommand(uuid.uuid4().hex, "sync", name[:256], "mlflow-webhook",
                             time.time())
    await plane.client.xadd(model_store.COMMANDS, command.fields(),
                            maxlen=model_store.COMMANDS_MAXLEN, approximate=True)
    return Response(protocol.dumps({"status": "asked", "registered_model": name[:256]}),
                    media_type=JSON)


async def load(request: Request) -> Response:
    return await _command(request, "load")


async def unload(request: Request) -> Response:
    return await _command(request, "unload")


routes = [
    Route("/v2/repository/index", index, methods=["POST"]),
    Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
    Route("/v2/repository/mlflow/webhook", mlflow_webhook, methods=["POST"]),
]

# Authenticated by the endpoint itself: by MLflow's signature, else by an admin key.
SELF_AUTHENTICATED = {"/v2/repository/mlflow/webhook"}

# Calls that change what is served: they need an admin key when the server has any.
CONTROL = {("/v2/repository/models/{name}/load", "POST"),
           ("/v2/repository/models/{name}/unload", "POST")}
