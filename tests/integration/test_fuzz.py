"""Schemathesis against a real gateway and real workers, driven by the served OpenAPI document.

Every operation in ``GET /openapi.json`` is called with data generated from the document:
free path parameters (mostly unknown models), then each served model pinned, in positive and
negative generation modes. Infer bodies for a pinned model are also *aimed*: with some
probability their inputs get the model's real names, datatypes and shapes with data of a
matching (or nearly matching) size, so the calls get past the first checks and reach the
numeric validation, the queue, the worker and ONNX Runtime.

With workers up, only 2xx and 4xx are acceptable: a 5xx (503 and 504 included) fails. Every
4xx body must be JSON with an ``error`` string, and every response must conform to the
document (status code, content type, headers, body schema). Generation is derandomized so a
run is reproducible; a failure prints the curl command that reproduces it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import onnx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelgate.gateway.openapi import openapi_document
from tests.conftest import ServeFactory
from tests.models import write_repository

pytestmark = pytest.mark.integration

# int64: INT64 [-1, -1]; add2: two FP32 inputs; bytes: BYTES; scalar: a shape-[] input, so it
# never batches; iris: a ZipMap output from skl2onnx (FP32 with its classes; maps on request).
SERVED = ["int64", "add2", "bytes", "scalar", "iris"]
# Schemathesis' not_a_server_error is left out: _check asserts that, with one exception.
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
REQUEST_TIMEOUT_S = 10.0
SHORT_MS = 1_000  # a generated parameters.timeout_ms below this may end in 504

# Examples per (operation, path parameters, mode); 0 skips that combination.
FREE_EXAMPLES = 25  # path parameters generated too: nearly always an unknown model -> 404
PINNED_EXAMPLES = {  # by (method, has a body), mode
    ("POST", GenerationMode.POSITIVE): 40,
    ("POST", GenerationMode.NEGATIVE): 15,
    ("GET", GenerationMode.POSITIVE): 1,  # nothing left to generate once name/version are set
    ("GET", GenerationMode.NEGATIVE): 0,
}

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
# Load and unload change what the stack serves for every other test here (and need a decider,
# which this stack does not run: they answer 503): tests/integration/test_versions.py covers
# them on a stack of their own.
DESTRUCTIVE = {"POST /v2/repository/models/{name}/load", "POST /v2/repository/models/{name}/unload",
               # Traffic changes move every other test's calls (and the gate's overrides need a
               # decider): tests/integration/test_rollouts.py covers them on stacks of their own.
               "PUT /v2/models/{name}/traffic", "POST /v2/models/{name}/traffic/{action}",
               # The MLflow webhook needs a decider too (503 here): test_mlflow.py covers it.
               "POST /v2/repository/mlflow/webhook",
               # Batch jobs: cancel and retry change other callers' jobs (DECISIONS 9), a
               # submission needs a jobs folder or an upload this stack does not set up, and the
               # path parameter is a job id, not a model: tests/integration/test_jobs.py covers
               # them on a stack of its own. GET /v2/jobs stays in.
               "POST /v2/jobs", "GET /v2/jobs/{id}", "POST /v2/jobs/{id}/cancel",
               "POST /v2/jobs/{id}/retry", "GET /v2/jobs/{id}/output"}
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations()
                                      if isinstance(result, Ok))
              if op.label not in DESTRUCTIVE}


@pytest.fixture(scope="module")
def base_url(serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory,
             onnx_models: dict[str, onnx.ModelProto]) -> Iterator[str]:
    repo = write_repository(tmp_path_factory.mktemp("fuzz-models"),
                            {name: onnx_models[name] for name in SERVED})
    with serve(repo, [(name, 1) for name in SERVED]) as url:
        yield url


@pytest.fixture(scope="module")
def signatures(base_url: str) -> dict[str, dict[str, Any]]:
    """Each served model's metadata as the gateway describes it (GET /v2/models/NAME)."""
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        return {name: client.get(f"/v2/models/{name}").json() for name in SERVED}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


HUGE_DIMS = [2**62, 2**60, 2**63 - 1, 2**64 - 1, 2**60 - 1, 2**31]


def _values(datatype: str, edgy: bool) -> st.SearchStrategy[Any]:
    """JSON values for a datatype: well inside its range, or around and past its edges."""
    if datatype == "BYTES":
        return st.text(max_size=8)
    if datatype == "BOOL":
        return st.booleans()
    if datatype.startswith(("INT", "UINT")):
        bits = int(datatype.removeprefix("U").removeprefix("INT"))
        return st.integers(-(2**bits), 2**bits) if edgy else st.integers(0, 100)
    if edgy:  # JSON has no NaN or Infinity
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64)
    return st.floats(-1e3, 1e3)


@st.composite
def _tensor(draw: st.DrawFn, spec: dict[str, Any], rows: int) -> dict[str, Any]:
    """A V2 input for ``spec``: a fitting shape, data whose size is right or off by one.

    Now and then a variable dim is huge: with a 0 elsewhere the tensor is empty, but its
    shape is past what numpy and the wire can hold.
    """
    shape = [d if d != -1 else rows if i == 0 else draw(st.integers(0, 3))
             for i, d in enumerate(spec["shape"])]
    variable = [i for i, d in enumerate(spec["shape"]) if d == -1]
    if variable and draw(st.integers(0, 4)) == 0:
        huge = draw(st.sampled_from(variable))
        shape[huge] = draw(st.sampled_from(HUGE_DIMS))
        others = [i for i in variable if i != huge]
        if len(others) > 0 and draw(st.booleans()):  # an empty tensor all the same
            shape[draw(st.sampled_from(others))] = 0
    count = max(0, min(math.prod(shape), 16) + draw(st.sampled_from([0, 0, 0, 0, -1, 1])))
    values = _values(spec["datatype"], edgy=draw(st.integers(0, 3)) == 0)
    data = draw(st.lists(values, min_size=count, max_size=count))
    return {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data}


def _nest(flat: list[Any], shape: list[int]) -> Any:
    """Row-major ``flat`` as nested lists of ``shape``."""
    if not shape:
        return flat[0]
    step = math.prod(shape[1:])
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def _instances(draw: st.DrawFn, inputs: list[dict[str, Any]], rows: int) -> list[Any]:
    """V1 instances: rows of the single input, or objects keyed by input name."""
    columns = {}
    for spec in inputs:
        rest = [draw(st.integers(1, 3)) if d == -1 else d for d in spec["shape"][1:]]
        values = _values(spec["datatype"], edgy=draw(st.integers(0, 3)) == 0)
        count = math.prod(rest)
        columns[spec["name"]] = [
            _nest(draw(st.lists(values, min_size=count, max_size=count)), rest)
            for _ in range(rows)]
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


@st.composite
def _aimed(draw: st.DrawFn, cases: st.SearchStrategy[schemathesis.Case],
           metadata: dict[str, Any]) -> schemathesis.Case:
    """A generated call, often with its inputs (and outputs) replaced by near-valid ones."""
    case = draw(cases)
    body: Any = case.body  # edited in place: schemathesis sends what the case holds
    if not isinstance(body, dict) or not draw(st.integers(0, 3)):
        return case
    rows = draw(st.integers(1, 3))
    if "instances" in body:  # V1
        body["instances"] = draw(_instances(metadata["inputs"], rows))
        return case
    if case.headers:  # a generated binary-extension header would cut the JSON short
        case.headers.pop("Inference-Header-Content-Length", None)
    tensors = [draw(_tensor(spec, rows)) for spec in metadata["inputs"]]
    if len(tensors) > 1 and draw(st.integers(0, 9)) == 0:
        tensors.pop()  # a missing input
    body["inputs"] = tensors
    names = [o["name"] for o in metadata["outputs"]]
    outputs = draw(st.one_of(st.none(), st.lists(st.sampled_from(names), max_size=len(names))))
    if outputs is None:
        body.pop("outputs", None)
    elif draw(st.booleans()):
        body["outputs"] = [{"name": name} for name in outputs]
    if draw(st.integers(0, 3)) == 0:  # the answer as Triton binary tensor data
        body["parameters"] = {"binary_data_output": True}
    return case


def _asked_deadline_ms(case: schemathesis.Case) -> float | None:
    parameters = case.body.get("parameters") if isinstance(case.body, dict) else None
    raw = parameters.get("timeout_ms") if isinstance(parameters, dict) else None
    return raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def _check(case: schemathesis.Case, response: schemathesis.Response) -> None:
    where = f"\nreproduce with: {case.as_curl_command()}"
    asked_ms = _asked_deadline_ms(case)
    # A call that asks for a deadline of a few milliseconds may rightly get its 504.
    if not (response.status_code == 504 and asked_ms is not None and asked_ms < SHORT_MS):
        assert response.status_code < 500, (
            f"{response.status_code} with workers up: {response.content[:500]!r}{where}")
    if response.status_code >= 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            pytest.fail(f"{response.status_code} body is not JSON: {response.content[:300]!r}"
                        f"{where}")
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
            f"{response.status_code} body has no 'error' string: {body!r}{where}")
    case.validate_response(response, checks=CHECKS)


def _fuzz(operation: schemathesis.APIOperation, path_parameters: dict[str, str] | None,
          mode: GenerationMode, examples: int, base_url: str, session: requests.Session,
          aim: dict[str, Any] | None = None) -> dict[int, int]:
    """Run ``examples`` generated calls; returns how many got each status code."""
    statuses: dict[int, int] = {}
    cases = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
    if aim is not None:
        cases = _aimed(cases, aim)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        _check(case, response)

    run()
    return statuses


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation_never_fails_on_generated_calls(
        label: str, base_url: str, session: requests.Session,
        signatures: dict[str, dict[str, Any]]) -> None:
    operation = OPERATIONS[label]
    names = {p.name for p in operation.path_parameters}
    has_body = operation.method.upper() == "POST"
    statuses: dict[int, int] = {}

    def tally(found: dict[int, int]) -> None:
        for status, count in found.items():
            statuses[status] = statuses.get(status, 0) + count

    if not names:
        tally(_fuzz(operation, None, GenerationMode.POSITIVE, 5, base_url, session))
        assert set(statuses) == {200}, statuses
        return
    for mode in GenerationMode:
        tally(_fuzz(operation, None, mode, FREE_EXAMPLES, base_url, session))
    for model in SERVED:
        pinned = {"name": model, **({"version": "1"} if "version" in names else {})}
        aim = signatures[model] if has_body else None
        for mode in GenerationMode:
            examples = PINNED_EXAMPLES[(operation.method.upper(), mode)]
            if examples:
                tally(_fuzz(operation, pinned, mode, examples, base_url, session, aim))
    assert statuses.get(404), f"no unknown model was tried: {statuses}"
    if has_body:
        assert statuses.get(400), f"no call was refused as bad input: {statuses}"
    assert statuses.get(200), f"no generated call succeeded: {statuses}"


def test_served_document_is_the_one_fuzzed(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(json.dumps(openapi_document()))
