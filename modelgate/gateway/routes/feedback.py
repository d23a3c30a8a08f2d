"""Feedback and quality: ``POST /v2/models/{m}/feedback`` joins labels to stored answers (one
``{"id", "label", "row"?}`` or a list of them; every item is counted, none fails the others),
``GET /v2/models/{m}/quality`` answers each version's live quality (``gateway/feedback.py``).
Both are data-plane calls: an application key when keys are configured."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import BackendUnavailable, InvalidInput, ModelNotFound
from modelgate.gateway import protocol
from modelgate.gateway.body import Bodies, json_body
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.feedback import MAX_LABELS

JSON = "application/json"
EXAMPLE = '[{"id": "<the call\'s id>", "label": 1}, {"id": "...", "label": "cat", "row": 2}]'


def _served(plane: DataPlane, name: str) -> None:
    if name not in plane.models:
        plane.table.resolve(name)  # raises the not-found error that says what is served
        raise ModelNotFound(f"model {name!r} is not served")


async def feedback(request: Request) -> Response:
    plane: DataPlane = request.app.state.plane
    name = request.path_params["name"]
    _served(plane, name)
    bodies: Bodies = request.app.state.bodies
    async with json_body(request, bodies.limits, bodies.budget) as raw:
        if not raw.strip():
            raise InvalidInput(f"the body is empty; send labels like {EXAMPLE}")
        body = protocol.loads(raw)
    if not isinstance(body, dict | list):
        raise InvalidInput(f"the body must be a label object or a list of them, like {EXAMPLE}")
    if isinstance(body, list) and not body:
        raise InvalidInput(f"the list of labels is empty; send labels like {EXAMPLE}")
    if isinstance(body, list) and len(body) > MAX_LABELS:
        raise InvalidInput(f"{len(body)} labels in one call; send at most {MAX_LABELS} per "
                           "call (`modelgate feedback FILE` splits a file for you)")
    try:
        answer = await plane.feedback.label(name, body)
    except (RedisError, OSError) as e:
        raise BackendUnavailable(f"the labels could not be joined, Redis did not answer "
                                 f"({e}); none was counted, send them again") from e
    return Response(protocol.dumps(answer), media_type=JSON)


async def quality(request: Request) -> Response:
    plane: DataPlane = request.app.state.plane
    name = request.path_params["name"]
    _served(plane, name)
    versions = sorted(plane.versions_of(name), key=int)
    try:
        body = await plane.feedback.quality(name, versions)
    except (RedisError, OSError) as e:
        raise BackendUnavailable(f"quality is unreadable now, Redis did not answer ({e}); "
                                 "retry shortly") from e
    return Response(protocol.dumps(body), media_type=JSON)


routes = [
    Route("/v2/models/{name}/feedback", feedback, methods=["POST"]),
    Route("/v2/models/{name}/quality", quality, methods=["GET"]),
]
