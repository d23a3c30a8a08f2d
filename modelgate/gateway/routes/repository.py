"""Triton's model repository extension over HTTP (the logic, shared with gRPC:
``gateway/repository.py``), and MLflow's registry webhooks.

``POST /v2/repository/index`` lists every version on disk and every version loaded with its
state (READY, LOADING, UNLOADING, UNAVAILABLE) and why, and, for a version whose folder says
where it came from, its run, registry entry, params and training metrics (``lineage``).
``load`` and ``unload`` answer 200 once done, 400 with the reason when a version failed, 202
with where to look when the caller's ``timeout_ms`` (default 120 s) passed first; outside
explicit mode 400, with no decider 503. Files come as Triton's HTTP client sends them:
``parameters`` of ``"file:<version>/model.onnx"`` to base64 content.

``POST /v2/repository/mlflow/webhook`` takes MLflow's model-registry webhooks (a new model
version, an alias set or deleted): it only asks the decider to ask the registry about that
registered model now, instead of at its next poll; what serves is always what the registry's
API says, never what a webhook body claims. It is accepted with a valid ``X-MLflow-Signature``
made with ``--mlflow-webhook-secret`` (MLflow cannot send an API key), else like load: with
an admin key when the server has keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import BackendUnavailable, InvalidInput, Unauthorized
from modelgate.core.store import models as model_store
from modelgate.core.store.models import ControlCommand
from modelgate.gateway import protocol
from modelgate.gateway.auth import check_bearer
from modelgate.gateway.body import Bodies, BodyLimits, json_body
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.repository import (
    CommandDone,
    index_rows,
    run_command,
    wait_for_result,
)
from modelgate.gateway.repository import key_id as key_id_of

__all__ = ["key_id", "object_body", "routes", "wait_for_result"]

JSON = "application/json"


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


def key_id(request: Request) -> str:
    """Who asked, for the record: a short hash of the key used, never the key."""
    return key_id_of(request.headers.get("authorization"))


async def index(request: Request) -> Response:
    plane = _plane(request)
    body = await object_body(request)
    ready_only = body.get("ready") is True
    rows = await asyncio.to_thread(index_rows, plane.settings.models_dir, plane, ready_only)
    return Response(protocol.dumps(rows), media_type=JSON)


async def _command(request: Request, op: str) -> Response:
    name = request.path_params["name"]
    body = await object_body(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    outcome = await run_command(_plane(request), op, name, parameters,
                                request.headers.get("authorization"))
    if outcome is CommandDone.PENDING:
        return Response(protocol.dumps({
            "status": "pending", "message": f"the {op} of {name!r} is still under way; "
            "follow it with POST /v2/repository/index", "location": "/v2/repository/index"}),
            status_code=202, media_type=JSON, headers={"Location": "/v2/repository/index"})
    return Response(protocol.dumps({}), media_type=JSON)


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
