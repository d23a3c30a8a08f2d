"""The Starlette application and the gateway process entry."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dataplane import DataPlane
from gateway.errors import error_response, status_of
from gateway.metrics import Metrics
from gateway.routes import health, v1, v2
from modelgate.errors import ModelgateError
from modelgate.repository import load_repository
from modelgate.settings import GatewaySettings

log = logging.getLogger("modelgate.gateway")

INFER_PATHS = ("/infer", ":predict")


def _timed(endpoint):  # type: ignore[no-untyped-def]
    """Wrap an inference endpoint: count and time every answer, map domain errors to JSON."""

    async def handler(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await endpoint(request)
        except ModelgateError as e:
            response = error_response(status_of(e), str(e))
        model = getattr(request.state, "model", None)
        if model is not None:
            metrics: Metrics = request.app.state.plane.metrics
            metrics.requests.labels(model, str(response.status_code)).inc()
            metrics.request_duration.labels(model).observe(time.perf_counter() - started)
        return response

    return handler


def _with_errors(endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        try:
            return await endpoint(request)  # type: ignore[no-any-return]
        except ModelgateError as e:
            return error_response(status_of(e), str(e))

    return handler


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {404: "no such route; see GET /v2 and /v2/models/NAME",
            405: "method not allowed on this route"}.get(exc.status_code, exc.detail)
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {hint}")


def build_app(settings: GatewaySettings) -> Starlette:
    models = load_repository(settings.models_dir)
    gateway_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, max_connections=64)
        plane = DataPlane(settings, models, client, gateway_id, Metrics())
        app.state.plane = plane
        await plane.start()
        try:
            yield
        finally:
            await plane.stop()
            await client.aclose()

    routes = []
    for route in (*health.routes, *v2.routes, *v1.routes):
        assert isinstance(route, Route)
        wrap = _timed if route.path.endswith(INFER_PATHS) or "{target}" in route.path else \
            _with_errors
        routes.append(Route(route.path, wrap(route.endpoint), methods=route.methods))
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error})


def serve(settings: GatewaySettings) -> None:
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=5)
