"""KServe Open Inference Protocol V2: server, model metadata and inference."""

from __future__ import annotations

from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate import __version__
from modelgate.core.errors import ModelNotFound
from modelgate.core.repository import ModelVersion, RepositoryError
from modelgate.core.trace import Tracer, now_ns
from modelgate.gateway import protocol, versions
from modelgate.gateway.binary import HEADER, split_body
from modelgate.gateway.body import Bodies, json_body
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.feedback import REQUEST_ID_HEADER, call_id, id_headers
from modelgate.gateway.metrics import SERVED
from modelgate.gateway.parsing import V2

JSON = "application/json"


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


def _model(request: Request) -> ModelVersion:
    return _plane(request).resolve(request.path_params["name"],
                                   request.path_params.get("version"))


async def server_metadata(request: Request) -> Response:
    return Response(protocol.dumps({
        "name": "modelgate",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }), media_type=JSON)


async def model_metadata(request: Request) -> Response:
    """The model (its default version's signature) or one version; ``versions`` lists the
    READY ones, ``parameters.versions`` every version with its state, ``parameters.lineage``
    where this version came from (``null`` when its folder says nothing)."""
    plane = _plane(request)
    model = _model(request)
    served = plane.models[model.name]
    return Response(protocol.dumps({
        "name": model.name,
        "versions": served.state.ready(),
        "platform": "onnxruntime_onnx",
        "inputs": [i.metadata() for i in model.inputs],
        "outputs": [o.metadata() for o in model.outputs],
        "parameters": {
            "version": model.version,
            "default_version": served.state.default,
            "sha256": model.sha256,
            "max_batch_size": model.max_batch_size,
            "batching": _batching(plane, model),
            "version_policy": model.config.version_policy.describe(),
            "source": model.config.source,
            "versions": {v: sv.state.body() for v, sv in
                         sorted(served.versions.items(), key=lambda kv: int(kv[0]))},
            "lineage": None if model.lineage.empty else model.lineage.body(),
            "run_url": model.lineage.run_url(plane.settings.mlflow_tracking_uri),
        },
    }), media_type=JSON)


def _batching(plane: DataPlane, model: ModelVersion) -> dict[str, Any] | None:
    """The batch sizes the version's workers tuned and the curve behind them (null until a
    worker of this content has loaded)."""
    view = plane.pools.get(model.pool)
    plan = view.plan if view is not None else None
    return plan.body() if plan is not None and plan.sha256 == model.sha256 else None


async def model_versions(request: Request) -> Response:
    """Every version side by side: lineage beside live figures (``gateway/versions.py``)."""
    plane = _plane(request)
    name = request.path_params["name"]
    scans: versions.FolderScans = request.app.state.folder_scans
    try:
        scan = await scans.get(name)
    except RepositoryError as e:
        raise ModelNotFound(str(e)) from e
    body = await versions.versions_view(plane.client, plane.models.get(name), scan,
                                        plane.drift, plane.settings.mlflow_tracking_uri, name)
    return Response(protocol.dumps(body), media_type=JSON)


async def model_ready(request: Request) -> Response:
    model = _model(request)
    ready = _plane(request).model_ready(model)
    return Response(protocol.dumps({"name": model.name, "ready": ready}),
                    status_code=200 if ready else 503, media_type=JSON)


async def drift(request: Request) -> Response:
    """Per-feature drift statistics, thresholds, windows, reference vs current summaries."""
    plane = _plane(request)
    model = _model(request)
    return Response(protocol.dumps(plane.drift.report(model.name, model.pool)),
                    media_type=JSON)


async def infer(request: Request) -> Response:
    plane = _plane(request)
    marks: dict[str, object] | None = {"start": now_ns()} if plane.tracer is not None else None
    routed = plane.route(request.path_params["name"], request.path_params.get("version"),
                         request.headers)
    model = routed.version
    request.scope[SERVED] = (model.name, model.version, routed.route)
    bodies: Bodies = request.app.state.bodies
    async with json_body(request, bodies.limits, bodies.budget, binary_ok=True) as raw:
        if marks is not None:
            marks["read"] = now_ns()
        header, binary = split_body(raw, request.headers.get(HEADER))
        parsed = await bodies.parsers.parse(V2, model, header, binary)
        deadline = protocol.timeout_ms(parsed.request.parameters, model,
                              plane.settings.default_timeout_ms)
        # Every answer carries its call's id (the caller's, else a new one) for feedback later.
        call = call_id(parsed.request_id, request.headers.get(REQUEST_ID_HEADER))
        store = plane.feedback.keep(model, call)
        if marks is not None:
            marks["parsed"] = now_ns()
        reply = await plane.infer(model, parsed.request, deadline, marks, store)
    if marks is not None:
        marks["resumed"] = now_ns()
    if routed.shadow is not None:
        plane.mirror(model, routed.shadow, parsed.request, reply)
    plane.feedback.record(model, store, reply)
    content, header_length = protocol.format_v2_binary(
        model, reply, call, set(parsed.binary_outputs), protocol.wants_maps(parsed.request))
    response = Answer(content, model.version, call, header_length)
    if marks is not None and plane.tracer is not None:
        marks["formatted"] = now_ns()
        marks["request_id"] = call
        # Runs once the answer is sent: when, then the line (outside every stage).
        response.background = BackgroundTask(_traced, plane.tracer, marks)
    return response


class Answer(Response):
    """An infer call's response, its headers written as bytes at once (Starlette's Response
    lower-cases and encodes each header of each call): the model version that answered, the
    call's id when a header can carry it (``feedback.id_headers``), and for a binary answer
    the length of its JSON part."""

    def __init__(self, content: bytes, version: str, call: str,
                 header_length: int | None) -> None:
        self.status_code = 200
        self.body = content
        self.background = None
        headers = [(b"content-length", str(len(content)).encode()),
                   (b"content-type", b"application/json" if header_length is None
                    else b"application/octet-stream"),
                   (VERSION_HEADER, version.encode())]
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
        for name, value in id_headers(call).items():
            headers.append((name.lower().encode(), value.encode()))
        self.raw_headers = headers


VERSION_HEADER = protocol.MODEL_VERSION_HEADER.lower().encode()


def _traced(tracer: Tracer, marks: dict[str, object]) -> None:
    marks["sent"] = now_ns()
    tracer.write(marks)


routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    # The path as the protocol's REST document writes it; without it the router answers 307.
    Route("/v2/", server_metadata, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/versions", model_versions, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/drift", drift, methods=["GET"]),
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
]
