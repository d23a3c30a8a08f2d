"""The OpenAPI document: valid OpenAPI, and in step with the routes the gateway really has."""

from __future__ import annotations

from pathlib import Path

import onnx
import orjson
import pytest
import schemathesis
from starlette.routing import Match, Route

from modelgate.core import errors
from modelgate.core.repository import MODEL_NAME
from modelgate.core.settings import GatewaySettings
from modelgate.gateway.app import PROBE_PATHS, build_app
from modelgate.gateway.errors import STATUS_OF
from modelgate.gateway.openapi import openapi_document
from tests.models import write_repository

DOCUMENT = openapi_document()
OPERATIONS = [(path, method.upper()) for path, item in DOCUMENT["paths"].items()
              for method in item]


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory,
           onnx_models: dict[str, onnx.ModelProto]) -> list[Route]:
    """The app's routes (building the app touches no Redis; only its lifespan does)."""
    repo = write_repository(tmp_path_factory.mktemp("openapi-models"),
                            {"int64": onnx_models["int64"]})
    app = build_app(GatewaySettings(models_dir=Path(repo), redis_url="redis://127.0.0.1:1/0"))
    return [r for r in app.routes if isinstance(r, Route)]


def _concrete(path: str) -> str:
    return path.replace("{name}", "int64").replace("{version}", "1")


def _route_for(routes: list[Route], path: str, method: str) -> Route | None:
    scope = {"type": "http", "path": _concrete(path), "method": method}
    return next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)


def test_document_is_valid_openapi() -> None:
    schemathesis.openapi.from_dict(DOCUMENT).validate()
    assert orjson.loads(orjson.dumps(DOCUMENT)) == DOCUMENT  # plain JSON, nothing lost


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_documented_operation_is_routed(routes: list[Route], path: str,
                                              method: str) -> None:
    assert _route_for(routes, path, method) is not None, f"{method} {path} has no route"


def test_every_route_is_documented(routes: list[Route]) -> None:
    documented = {id(_route_for(routes, path, method)) for path, method in OPERATIONS}
    missing = [f"{sorted(r.methods or ())} {r.path}" for r in routes if id(r) not in documented]
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_every_mapped_error_status_is_documented_on_infer() -> None:
    """Each status in the gateway's error table that an infer call can get is listed (paths
    outside the jobs folder and state conflicts belong to jobs and the repository)."""
    never_infer = {errors.Forbidden, errors.Conflict}
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict"):
        responses = DOCUMENT["paths"][path]["post"]["responses"]
        assert {str(s) for e, s in STATUS_OF.items() if e not in never_infer} \
            <= set(responses), path


def test_retry_after_and_www_authenticate_are_documented() -> None:
    responses = DOCUMENT["components"]["responses"]
    assert "Retry-After" in responses["TooManyRequests"]["headers"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]


def test_probe_paths_are_documented_as_such() -> None:
    """The paths that stay open with API keys are exactly the documented probes."""
    probes = {path for path, item in DOCUMENT["paths"].items()
              if "probes" in item.get("get", {}).get("tags", ())}
    assert probes == PROBE_PATHS


def test_model_name_parameter_is_the_repository_rule() -> None:
    name = next(p for p in DOCUMENT["paths"]["/v2/models/{name}"]["get"]["parameters"]
                if p["name"] == "name")
    assert name["schema"]["pattern"] == MODEL_NAME.pattern
