"""Batch prediction jobs over HTTP (the logic: ``gateway/jobs.py``).

``POST /v2/jobs`` takes either a JSON body naming files under the jobs folder::

    {"model": "m", "version": "2",
     "input": {"path": "x.parquet", "format": "parquet", "id_column": "id"},
     "output": {"path": "scores.jsonl", "format": "jsonl"}}

or the input file itself as the body (any content type but JSON; at most 64 MiB) with the rest
in the query: ``POST /v2/jobs?model=m&format=csv&id_column=id&output_format=jsonl``; its output
is then kept in the job store, for ``GET /v2/jobs/{id}/output``. Answered ``201`` with the job.

``GET /v2/jobs`` (``?state=running``), ``GET /v2/jobs/{id}``, ``POST /v2/jobs/{id}/cancel``,
``POST /v2/jobs/{id}/retry`` (the failed rows again), ``GET /v2/jobs/{id}/output`` (streamed).
Submitting and reading need an application key when keys are configured; cancelling or
retrying another key's job needs an admin key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from modelgate.core.errors import InvalidInput
from modelgate.core.settings import GatewaySettings
from modelgate.gateway import jobs, protocol
from modelgate.gateway.auth import has_key
from modelgate.gateway.body import JSON_TYPES, Bodies, json_body
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.repository import key_id

JSON = "application/json"
UPLOAD_PARAMETERS = ("model", "version", "format", "id_column", "output_format")


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


def _jobs_dir(request: Request) -> Path | None:
    settings: GatewaySettings = _plane(request).settings
    return settings.jobs_dir


def _caller(request: Request) -> jobs.Caller:
    settings: GatewaySettings = _plane(request).settings
    authorization = request.headers.get("authorization")
    admin_keys = tuple(k.encode() for k in settings.admin_api_keys)
    return jobs.Caller(key_id(authorization),
                       not admin_keys or has_key(authorization, admin_keys))


def _answer(body: object, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status_code=status, media_type=JSON)


async def submit(request: Request) -> Response:
    bodies: Bodies = request.app.state.bodies
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    upload = content_type not in JSON_TYPES and not content_type.endswith("+json")
    async with json_body(request, bodies.limits, bodies.budget, any_type=True) as raw:
        if upload:
            unknown = sorted(set(request.query_params) - set(UPLOAD_PARAMETERS))
            if unknown:
                raise InvalidInput(f"unknown query parameter(s) {unknown}; an upload takes "
                                   f"{list(UPLOAD_PARAMETERS)}")
            if not raw:
                raise InvalidInput("the upload is empty: send the input file as the body, or "
                                   "a JSON body naming files under the jobs folder")
            body: Any = dict(request.query_params)
            data: bytes | None = bytes(raw)
        else:
            body = protocol.loads(raw) if raw.strip() else None
            if not isinstance(body, dict):
                raise InvalidInput("the body must be a JSON object like {\"model\": \"m\", "
                                   "\"input\": {\"path\": \"x.csv\"}, \"output\": {\"path\": "
                                   "\"scores.jsonl\"}}, or the input file itself")
            data = None
    found = await jobs.submit(_plane(request), _jobs_dir(request), body, data, _caller(request))
    return _answer(found, 201)


async def list_jobs(request: Request) -> Response:
    return _answer(await jobs.listing(_plane(request), request.query_params.get("state")))


async def get_job(request: Request) -> Response:
    return _answer(await jobs.status(_plane(request), request.path_params["id"]))


async def cancel(request: Request) -> Response:
    return _answer(await jobs.cancel(_plane(request), request.path_params["id"],
                                     _caller(request)))


async def retry(request: Request) -> Response:
    return _answer(await jobs.retry(_plane(request), request.path_params["id"],
                                    _caller(request)))


async def get_output(request: Request) -> Response:
    found = await jobs.output(_plane(request), _jobs_dir(request), request.path_params["id"])
    return StreamingResponse(found.blocks, media_type=found.media_type, headers={
        "Content-Disposition": f'attachment; filename="{found.filename}"'})


routes = [
    Route("/v2/jobs", submit, methods=["POST"]),
    Route("/v2/jobs", list_jobs, methods=["GET"]),
    Route("/v2/jobs/{id}", get_job, methods=["GET"]),
    Route("/v2/jobs/{id}/cancel", cancel, methods=["POST"]),
    Route("/v2/jobs/{id}/retry", retry, methods=["POST"]),
    Route("/v2/jobs/{id}/output", get_output, methods=["GET"]),
]
