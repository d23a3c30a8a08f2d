"""Answers recorded by gateways (``--record-answers``) against KServe's published REST
schemas of the Open Inference Protocol (``rest_predict_v2.yaml`` beside this file; README.md
says how answers map to it)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator

DOCUMENT = Path(__file__).with_name("rest_predict_v2.yaml")
MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
# (method, our path) -> (the document's path, the error object of the operation)
OPERATIONS: list[tuple[str, re.Pattern[str], str, str | None]] = [
    ("GET", re.compile(r"^/v2/?$"), "/v2/", "metadata_server_error_response"),
    ("GET", re.compile(r"^/v2/health/live$"), "/v2/health/live", None),
    ("GET", re.compile(r"^/v2/health/ready$"), "/v2/health/ready", None),
    ("GET", re.compile(rf"^{MODEL}/ready$"),
     "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/ready", None),
    ("POST", re.compile(rf"^{MODEL}/infer$"),
     "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer", "inference_error_response"),
    ("GET", re.compile(rf"^{MODEL}$"), "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}",
     "metadata_model_error_response"),
]


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def _validator(schema: dict[str, Any]) -> OAS30Validator:
    return OAS30Validator({**schema, "components": document()["components"]})


def _schema_of(method: str, path: str, status: int) -> dict[str, Any] | None:
    """The schema an answer must meet, or None when the document sets none."""
    for want_method, pattern, spec_path, error in OPERATIONS:
        if method != want_method or not pattern.match(path):
            continue
        responses = document()["paths"][spec_path][method.lower()]["responses"]
        listed = responses.get(str(status))
        if listed is not None:
            content = listed.get("content", {}).get("application/json")
            return content["schema"] if content else None
        if status >= 400 and error is not None:
            return {"$ref": f"#/components/schemas/{error}"}
        return None
    return None


def _outside_the_json(body: Any) -> Any:
    """A body with the ``data`` of outputs carried outside the JSON (binary) or asked for
    outside the schema (ZipMap maps) replaced by an empty list: the rest still validates."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        return body
    for output in body["outputs"]:
        parameters = output.get("parameters") if isinstance(output, dict) else None
        if isinstance(parameters, dict) and (
                "binary_data_size" in parameters or parameters.get("zipmap") is True):
            output["data"] = []
    return body


def violations(answers: Iterable[dict[str, Any]]) -> list[str]:
    """What is wrong with each recorded answer, one line each (none: all conform)."""
    found: list[str] = []
    seen: set[tuple[str, str, int, str]] = set()
    for answer in answers:
        method, path, status = answer["method"], answer["path"], int(answer["status"])
        schema = _schema_of(method, path, status)
        if schema is None:
            continue
        where = f"{method} {path} -> {status}"
        if answer.get("truncated"):
            found.append(f"{where}: the body was too large to record, so it was not checked")
            continue
        shape = re.sub(r"/models/[^/]+", "/models/M", path)
        key = (method, shape, status, answer.get("body", ""))
        if key in seen:
            continue
        seen.add(key)
        if not str(answer.get("content_type", "")).startswith("application/json") and \
                "header_length" not in answer:
            found.append(f"{where}: content type {answer.get('content_type')!r}, not JSON")
            continue
        try:
            body = orjson.loads(answer.get("body", ""))
        except orjson.JSONDecodeError as e:
            found.append(f"{where}: the body is not JSON ({e})")
            continue
        try:
            _validator(schema).validate(_outside_the_json(body))
        except ValidationError as e:
            at = "/".join(str(p) for p in e.absolute_path)
            found.append(f"{where}: {e.message} at '{at}' in {answer.get('body', '')[:300]}")
    return found


def check_recorded(directory: Path) -> list[str]:
    """Violations in every answer recorded under ``directory`` (none when nothing was)."""
    answers = []
    for log in sorted(directory.glob("answers-*.jsonl")):
        answers += [orjson.loads(line) for line in log.read_bytes().splitlines() if line]
    return violations(answers)
