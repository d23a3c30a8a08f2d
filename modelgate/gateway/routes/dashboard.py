"""The live dashboard: its static page and ``GET /dashboard/data`` (see gateway.dashboard).

The page and its scripts (``STATIC_PATHS``) are served without a key even when API keys are
on: they hold no data. ``/dashboard/data`` is wrapped like every other endpoint, so with keys
on it answers 401 without ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelgate.gateway.dashboard import Dashboard

DRIFT_PATH = "/v2/models/{name}/drift"
_ASSETS = {  # path -> (file in gateway/dashboard, media type)
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
STATIC_PATHS = frozenset(_ASSETS)
# Only this server's own scripts, styles and API: an injected string can neither run script
# nor send the key anywhere else. The favicon is an empty data: URL (no request, no 404).
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files("modelgate.gateway.dashboard").joinpath(name).read_bytes()


async def asset(request: Request) -> Response:
    name, media_type = _ASSETS[request.url.path]
    return Response(_asset(name), media_type=media_type, headers=_HEADERS)


def _has_drift(routes: list[BaseRoute]) -> bool:
    return any(isinstance(r, Route) and r.path == DRIFT_PATH for r in routes)


async def data(request: Request) -> Response:
    """The snapshot the page polls: every model's last minutes (see Dashboard)."""
    dashboard: Dashboard = request.app.state.dashboard
    body = await dashboard.snapshot(drift=_has_drift(request.app.routes))
    return Response(body, media_type="application/json",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


routes = [
    *(Route(path, asset, methods=["GET"]) for path in _ASSETS),
    Route("/dashboard/data", data, methods=["GET"]),
]
