"""The API description: ``GET /openapi.json``."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.gateway import protocol
from modelgate.gateway.openapi import openapi_document


@functools.cache
def _document() -> bytes:
    return protocol.dumps(openapi_document())


async def openapi(request: Request) -> Response:
    return Response(_document(), media_type="application/json")


routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
]
