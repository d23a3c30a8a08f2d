"""Triton's model repository extension over HTTP (the logic: ``gateway/repository.py``).

``POST /v2/repository/index`` lists every version on disk and every version loaded with its
state (READY, LOADING, UNLOADING, UNAVAILABLE) and why. ``load`` and ``unload`` answer 200 once
done, 400 with the reason when a version failed, 202 with where to look when the caller's
``timeout_ms`` (default 120 s) passed first; outside explicit mode 400, with no decider 503.
Files come as Triton's HTTP client sends them: ``parameters`` of ``"file:<version>/model.onnx"``
to base64 content.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import InvalidInput
from modelgate.gateway import protocol
from modelgate.gateway.body import Bodies, json_body
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


async def load(request: Request) -> Response:
    return await _command(request, "load")


async def unload(request: Request) -> Response:
    return await _command(request, "unload")


routes = [
    Route("/v2/repository/index", index, methods=["POST"]),
    Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
]

# Calls that change what is served: they need an admin key when the server has any.
CONTROL = {("/v2/repository/models/{name}/load", "POST"),
           ("/v2/repository/models/{name}/unload", "POST")}
