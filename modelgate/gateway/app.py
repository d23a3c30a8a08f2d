"""The Starlette application and the gateway process entry."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelgate.core.errors import ModelgateError
from modelgate.core.redis_checks import check_redis_async
from modelgate.core.settings import GatewaySettings
from modelgate.gateway.auth import check_bearer, has_key
from modelgate.gateway.body import Bodies, BodyBudget, BodyLimits
from modelgate.gateway.connections import ConnectionGuard, connection_budget
from modelgate.gateway.dashboard import Dashboard
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.errors import domain_error_response, error_response
from modelgate.gateway.metrics import SERVED, Metrics
from modelgate.gateway.parsing import Parsers
from modelgate.gateway.recorder import AnswerRecorder
from modelgate.gateway.routes import (
    dashboard,
    docs,
    feedback,
    health,
    jobs,
    repository,
    traffic,
    v1,
    v2,
)
from modelgate.gateway.rpc import server as grpc_server
from modelgate.gateway.versions import FolderScans

log = logging.getLogger("modelgate.gateway")

Endpoint = Callable[[Request], Awaitable[Response]]
# Open even with API keys unless --protect-probes: the health probes, whose status codes
# Kubernetes probes and Docker's HEALTHCHECK read without a key (without a valid key their
# bodies name no model), and the API description, the same for every server. /metrics names
# every model and drift feature: it needs the key like any data.
PROBE_PATHS = {"/v2/health/live", "/v2/health/ready", "/openapi.json"}
# Always open: the dashboard's static page and scripts, the same for every server and holding
# no data; a browser cannot send a key on a page load. Its data calls need the key.
PUBLIC_PATHS = dashboard.STATIC_PATHS
# (path, method) of the calls that change what is served: with an admin key set, only it.
CONTROL = repository.CONTROL | traffic.CONTROL


def _wrap(endpoint: Endpoint, settings: GatewaySettings, probe: bool,
          public: bool = False, control: bool = False) -> Endpoint:
    """Auth, domain errors -> JSON, and per-model request metrics around one endpoint.

    Admin keys work everywhere; with any admin key set, calls that change what is served
    (``control``) take nothing else.
    """
    admin_keys = tuple(k.encode() for k in settings.admin_api_keys)
    api_keys = tuple(k.encode() for k in settings.api_keys) + admin_keys
    if control and admin_keys:
        api_keys = admin_keys
    needs_key = bool(api_keys) and not public and (not probe or settings.protect_probes)
    # An open probe answers everyone; its endpoint says more to a caller with a key.
    tells_key = bool(api_keys) and probe and not needs_key

    async def handler(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if needs_key:
                check_bearer(request.headers.get("authorization"), api_keys)
            elif tells_key:
                request.state.authorized = has_key(request.headers.get("authorization"),
                                                   api_keys)
            response = await endpoint(request)
        except ModelgateError as e:
            response = domain_error_response(e)
        served = request.scope.get(SERVED)
        if served is not None:
            # Counted once the response is written (the rest of this step), not before it.
            metrics: Metrics = request.app.state.plane.metrics
            model, version, route = served
            metrics.later(metrics.count_request, model, version, "http", route,
                          response.status_code, time.perf_counter() - started)
        return response

    return handler


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {404: "no such route; see GET /v2 and /v2/models/NAME",
            405: "method not allowed on this route"}.get(exc.status_code, exc.detail)
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {hint}")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); it has been logged")


def redis_clients(settings: GatewaySettings) -> tuple[aioredis.Redis, aioredis.Redis]:
    """The gateway's Redis clients: one for commands, one for the reply reader.

    Commands time out fast so an unreachable Redis turns into 503s, not hangs; the reply
    reader blocks up to 1 s per BLPOP and gets its own, more patient connection pool.
    A dropped connection is retried once, at once: after Redis restarts, every idle pooled
    connection is dead and would fail its next command (a 503 with Redis up); while Redis is
    down the retry is refused at once. Timeouts are not retried.
    """
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s, max_connections=64, retry=retry)
    reader = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s + 2.0, max_connections=2, retry=retry)
    return client, reader


def build_app(settings: GatewaySettings, metrics: Metrics | None = None) -> Starlette:
    gateway_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client, reader = redis_clients(settings)
        plane = DataPlane(settings, client, reader, gateway_id, metrics or Metrics())
        app.state.plane = plane
        app.state.dashboard = Dashboard(plane)
        app.state.folder_scans = FolderScans(settings.models_dir)
        parsers = Parsers(settings.large_body_bytes, settings.parse_processes,
                          settings.default_timeout_ms / 1000.0, plane.metrics)
        app.state.bodies = Bodies(
            BodyLimits(settings.max_body_bytes, settings.body_timeout_s),
            BodyBudget(settings.max_inflight_bytes, plane.metrics), parsers)
        await plane.start()
        # gRPC in this process and loop, on the same data plane, before HTTP takes calls.
        rpc = await grpc_server.start(settings, plane) if settings.grpc_port else None
        await check_redis_async(client, log)
        # Everything loaded so far (modules, the repository, clients) lives as long as the
        # process: keep it out of the collector's full passes, whose pauses every request in
        # flight would wait for.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if rpc is not None:
                await grpc_server.stop(rpc)
            await plane.stop()
            await parsers.close()
            plane.metrics.close()
            await client.aclose()
            await reader.aclose()

    routes = [
        Route(route.path, _wrap(route.endpoint, settings, route.path in PROBE_PATHS,
                                route.path in PUBLIC_PATHS
                                or route.path in repository.SELF_AUTHENTICATED,
                                any((route.path, m) in CONTROL for m in route.methods or ())),
              methods=route.methods)
        for route in (*health.routes, *docs.routes, *v2.routes, *v1.routes, *dashboard.routes,
                      *repository.routes, *traffic.routes, *jobs.routes, *feedback.routes)
        if isinstance(route, Route)
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    infer = next(r.endpoint for r in routes if r.path == "/v2/models/{name}/infer")
    front = InferFastPath(app, infer)
    if settings.record_answers is not None:
        return AnswerRecorder(front, settings.record_answers)  # type: ignore[return-value]
    return front  # type: ignore[return-value]


# Idle keep-alive connections stay open this long. uvicorn's default (5 s) equals the idle
# expiry of common clients (httpx's 5 s): a call sent on a connection just as the server closes
# it fails with a read error on the client. Longer than clients and load balancers keep idle
# connections (60 s on AWS's), so the client is always the one that closes.
KEEP_ALIVE_S = 75

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


class CallHeaders(Mapping[str, str]):
    """A request's headers, read case-insensitively, as a dict built once (the first of a
    repeated header wins, as with Starlette's ``Headers``): an infer call reads half a dozen
    of them, and ``Headers`` scans the whole list on every read."""

    __slots__ = ("_values",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        values: dict[str, str] = {}
        for key, value in raw:  # the server gives names in lower case
            values.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        self._values = values

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._values[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class CallRequest(Request):
    """The Starlette request of an infer call, with :class:`CallHeaders`."""

    _call_headers: CallHeaders | None = None

    @property
    def headers(self) -> CallHeaders:  # type: ignore[override]
        if self._call_headers is None:
            self._call_headers = CallHeaders(self.scope["headers"])
        return self._call_headers


class InferFastPath:
    """ASGI front for the hot path: V2 infer calls go straight to their (wrapped) endpoint.

    Starlette's error middlewares and router cost a noticeable share of a tiny model's
    request; the endpoint, auth, metrics and error mapping are the very same as through the
    router. Everything else, lifespan included, goes to the Starlette app.
    """

    def __init__(self, app: Starlette, infer: Endpoint) -> None:
        self.app = app
        self.infer = infer

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def routes(self) -> list[Any]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            params = self.direct_params(scope["path"])
            if params is not None:
                scope["path_params"] = params
                response = await self.respond(scope, receive)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def direct_params(path: str) -> dict[str, str] | None:
        """The path parameters of an infer call's path, else None."""
        match = INFER_PATH.match(path)
        return None if match is None else {k: v for k, v in match.groupdict().items() if v}

    async def respond(self, scope: Scope, receive: Receive) -> Response:
        """The response to the infer call of ``scope`` (with its ``path_params``): what the
        router would give, from the same endpoint, never an exception. The gateway's
        connections call it directly for small bodies (``connections.DirectCall``)."""
        scope["app"] = self.app
        request = CallRequest(scope, receive)
        try:
            return await self.infer(request)
        except Exception as e:  # the same last resort the router path has
            return await _unexpected(request, e)


def server_config(settings: GatewaySettings) -> uvicorn.Config:
    """The uvicorn configuration of a gateway process: the app, and every connection held to
    the header and body deadlines and the connection limit (``gateway/connections.py``),
    whichever way the process gets its listening socket."""
    metrics = Metrics()
    app = build_app(settings, metrics)
    guard = ConnectionGuard(settings.header_timeout_s, settings.body_timeout_s,
                            connection_budget(settings.max_connections), metrics,
                            direct=app if isinstance(app, InferFastPath) else None)
    return uvicorn.Config(app, host=settings.host, port=settings.port,
                          log_level="warning", access_log=False, loop="uvloop",
                          http=guard.protocol(), timeout_graceful_shutdown=5,
                          timeout_keep_alive=KEEP_ALIVE_S,
                          # No "server: uvicorn" on every answer: it says nothing a caller
                          # needs, and costs a header per call.
                          server_header=False,
                          # No access log means nothing reads X-Forwarded-For: skip the
                          # middleware that would parse it on every call.
                          proxy_headers=False)


def serve(settings: GatewaySettings) -> None:
    """Serve until stopped: on an inherited listening socket (``fd``, from ``modelgate up``),
    on a port shared with other gateway processes (``reuse_port``: the kernel spreads
    connections across them), or on a port of its own -- with the same configuration."""
    server = uvicorn.Server(server_config(settings))
    if settings.fd is not None:
        server.run(sockets=[socket.socket(fileno=settings.fd)])
        return
    if not settings.reuse_port:
        server.run()
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    server.run(sockets=[sock])
