"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.gateway import protocol
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.metrics import CONTENT_TYPE
from modelgate.gateway.serving import ServedModel


async def live(request: Request) -> Response:
    return Response(protocol.dumps({"live": True}), media_type="application/json")


async def ready(request: Request) -> Response:
    """Ready only when Redis answers, every model has a live worker and no critical background
    task is down; says which are not, to a caller allowed to know (see app.PROBE_PATHS)."""
    plane: DataPlane = request.app.state.plane
    is_ready = plane.ready()
    if not getattr(request.state, "authorized", True):
        # API keys are on and this caller has none: the status, and nothing that names a
        # model or a task.
        return Response(protocol.dumps({"ready": is_ready}),
                        status_code=200 if is_ready else 503, media_type="application/json")
    body = {
        "ready": is_ready,
        "redis": plane.redis_ok,
        # Background tasks down or crash-looping; only the critical ones fail readiness.
        "failing_tasks": plane.background.restarting(),
        "models": {name: _model_health(plane, m) for name, m in plane.models.items()},
    }
    return Response(protocol.dumps(body), status_code=200 if is_ready else 503,
                    media_type="application/json")


def _model_health(plane: DataPlane, model: ServedModel) -> dict[str, object]:
    default = model.default
    if default is None:
        return {"ready": False, "version": None, "workers": 0,
                "versions": {v: sv.state.status.value for v, sv in model.versions.items()}}
    view = plane.pools.get(default.pool)
    return {"ready": plane.model_ready(default), "version": default.version,
            "workers": view.live_workers if view is not None else 0}


async def metrics(request: Request) -> Response:
    plane: DataPlane = request.app.state.plane
    return Response(plane.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
