"""KServe V1 prediction: ``POST /v1/models/{name}:predict`` with ``instances``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import ModelNotFound
from modelgate.gateway import protocol
from modelgate.gateway.body import Bodies, json_body
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.feedback import REQUEST_ID_HEADER, call_id, id_headers
from modelgate.gateway.metrics import SERVED
from modelgate.gateway.parsing import V1
from modelgate.gateway.protocol import MODEL_VERSION_HEADER


async def predict(request: Request) -> Response:
    plane: DataPlane = request.app.state.plane
    if "target" in request.path_params:
        target: str = request.path_params["target"]
        name, sep, verb = target.rpartition(":")
        if not sep or verb != "predict":
            raise ModelNotFound(f"unknown V1 route {target!r}; use /v1/models/NAME:predict")
    else:
        name = request.path_params["name"]
    routed = plane.route(name, request.path_params.get("version"), request.headers)
    model = routed.version
    request.scope[SERVED] = (model.name, model.version, routed.route)
    bodies: Bodies = request.app.state.bodies
    async with json_body(request, bodies.limits, bodies.budget) as raw:
        parsed = await bodies.parsers.parse(V1, model, raw, None)
        # V1 has no field for them: the version that computed the answer and the call's id
        # (for feedback later) go in headers.
        call = call_id(None, request.headers.get(REQUEST_ID_HEADER))
        store = plane.feedback.keep(model, call)
        reply = await plane.infer(model, parsed.request,
                                  model.config.timeout_ms or plane.settings.default_timeout_ms,
                                  store=store)
    if routed.shadow is not None:
        plane.mirror(model, routed.shadow, parsed.request, reply)
    plane.feedback.record(model, store, reply)
    return Response(protocol.format_v1(reply, model), media_type="application/json",
                    headers={MODEL_VERSION_HEADER: model.version, **id_headers(call)})


async def model_status(request: Request) -> Response:
    plane: DataPlane = request.app.state.plane
    model = plane.resolve(request.path_params["target"])
    return Response(protocol.dumps({"name": model.name, "ready": plane.model_ready(model)}),
                    media_type="application/json")


routes = [
    Route("/v1/models/{target}", predict, methods=["POST"]),
    Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
    Route("/v1/models/{target}", model_status, methods=["GET"]),
]
