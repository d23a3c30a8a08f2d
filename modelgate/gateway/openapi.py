"""The OpenAPI 3.0 description of the HTTP API, written by hand to match the routes.

Served at ``GET /openapi.json``. It states the external contract (KServe Open Inference
Protocol V2 REST, KServe V1 ``:predict``, health, metrics) and every status a route can answer
with, so clients can be generated from it and the fuzz test (tests/integration/test_fuzz.py)
can check that the server keeps to it. When a route, a field or a status changes, change this
document in the same commit.
"""

from __future__ import annotations

from typing import Any

from modelgate import __version__
from modelgate.core import wire
from modelgate.core.repository import MODEL_NAME, VERSION

JSON = "application/json"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _json(_schema("Error"), description)
    if headers:
        response["headers"] = headers
    return response


# One reusable response per error status; the body is always {"error": "..."}.
_ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _error("The request does not fit the protocol or the model's signature; "
                         "the message names the field and what was expected."),
    "Unauthorized": _error(
        "API keys are on and the request carries none that matches.",
        {"WWW-Authenticate": {"description": "Always 'Bearer realm=\"modelgate\"'.",
                              "schema": {"type": "string"}}}),
    "NotFound": _error("No such model, no such version of it, or no such route."),
    "RequestTimeout": _error(
        "The request's headers or body did not arrive within --header-timeout-s or "
        "--body-timeout-s; the connection is closed.",
        {"Connection": {"description": "Always 'close'.", "schema": {"type": "string"}}}),
    "PayloadTooLarge": _error("The body is over the gateway's --max-body-bytes."),
    "UnsupportedMediaType": _error("The body is not sent as application/json."),
    "TooManyRequests": _error(
        "The model's backlog or this gateway's in-flight requests are at their limit.",
        {"Retry-After": {"description": "Seconds after which a retry is likely to be admitted.",
                         "schema": {"type": "integer", "minimum": 1}}}),
    "InternalError": _error("The model failed on input it accepted, the request was parked as "
                            "a poison pill, or the gateway hit an unexpected error."),
    "Unavailable": _error("No live worker serves the model, Redis is unreachable, or the "
                          "gateway holds --max-connections connections and none is idle (then "
                          "with Retry-After)."),
    "DeadlineExceeded": _error("No answer arrived before the request's deadline "
                               "(parameters.timeout_ms, else the model's, else the server's)."),
    "Forbidden": _error("A path outside the jobs folder (or through a symlink out of it, or "
                        "any path without --jobs-dir), or another key's job without the admin "
                        "key."),
    "Conflict": _error("The job or model is in a state that refuses the call: a job that has "
                       "ended already, an output not ready yet, a model with running jobs."),
}

_STATUS_OF_RESPONSE = {
    "BadRequest": "400", "Unauthorized": "401", "NotFound": "404", "RequestTimeout": "408",
    "Forbidden": "403", "Conflict": "409", "PayloadTooLarge": "413",
    "UnsupportedMediaType": "415", "TooManyRequests": "429", "InternalError": "500",
    "Unavailable": "503", "DeadlineExceeded": "504",
}


def _errors(*names: str) -> dict[str, Any]:
    """Error responses by name; 401 and 500 apply to every route and are always added."""
    return {_STATUS_OF_RESPONSE[n]: _ref("responses", n)
            for n in ("Unauthorized", *names, "InternalError")}


_INFER_ERRORS = ("BadRequest", "NotFound", "RequestTimeout", "PayloadTooLarge",
                 "UnsupportedMediaType", "TooManyRequests", "Unavailable", "DeadlineExceeded")

_NAME = {"name": "name", "in": "path", "required": True,
         "description": "Model name, as in the repository folder.",
         "schema": {"type": "string", "pattern": MODEL_NAME.pattern}}
_VERSION = {"name": "version", "in": "path", "required": True,
            "description": "Model version (a version folder's number) that is loaded; without "
                           "it, the model's default version answers.",
            "schema": {"type": "string", "pattern": VERSION.pattern}}


def _model_paths(suffix: str, operation: dict[str, Any], verb: str = "get",
                 prefix: str = "/v2/models/{name}") -> dict[str, Any]:
    """The same operation on the default version and on an explicit one."""
    default_id = operation["operationId"]
    own = operation.get("parameters", [])
    return {
        f"{prefix}{suffix}": {verb: {**operation, "parameters": [_NAME, *own]}},
        f"{prefix}/versions/{{version}}{suffix}": {verb: {
            **operation, "operationId": f"{default_id}_version",
            "parameters": [_NAME, _VERSION, *own]}},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string",
                                 "description": "What is wrong and how to fix it."}},
    },
    "Datatype": {"type": "string", "enum": list(wire.DATATYPES)},
    "Parameters": {
        "type": "object", "additionalProperties": True,
        "description": "Request parameters; unknown ones are passed to the worker untouched.",
        "properties": {
            "timeout_ms": {
                "type": "number", "minimum": 1, "maximum": 3_600_000,
                "description": "Deadline of this call in milliseconds; past it, 504."},
            "binary_data_output": {
                "type": "boolean",
                "description": "Return every tensor output as binary data after the JSON."},
            "zipmap": {
                "type": "boolean",
                "description": "Answer a classifier's ZipMap outputs as one {class: "
                               "probability} map per row (datatype JSON, outside the "
                               "protocol's tensor data) instead of FP32 [N, C] with "
                               "parameters.classes."},
        },
    },
    "RequestInput": {
        "type": "object", "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _schema("Datatype"),
            "data": {"description": "The values, flat or nested, row-major: numbers (booleans "
                                    "for BOOL) or, for BYTES, strings. Required unless "
                                    "parameters.binary_data_size is set."},
            "parameters": {"type": "object", "properties": {"binary_data_size": {
                "type": "integer", "minimum": 0,
                "description": "Binary tensor extension: the input's data is this many bytes "
                               "of the binary part of the body (little-endian, row-major; "
                               "BYTES items as a 4-byte length and the bytes)."}}},
        },
    },
    "RequestOutput": {
        "type": "object", "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data": {
                "type": "boolean",
                "description": "Return this output as binary data after the JSON."}}},
        },
    },
    "InferenceRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": "Echoed in the response."},
            "parameters": _schema("Parameters"),
            "inputs": {"type": "array", "minItems": 1, "items": _schema("RequestInput")},
            "outputs": {"type": "array", "items": _schema("RequestOutput"),
                        "description": "Outputs to return; all of them when absent."},
        },
    },
    "ResponseOutput": {
        "type": "object", "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": [*wire.DATATYPES, wire.JSON],
                         "description": "JSON marks a non-tensor output served as JSON: a "
                                        "ZipMap output asked for as maps (parameters.zipmap), "
                                        "or another sequence or map."},
            "data": {"description": "Flat, row-major values of a tensor; any JSON value for "
                                    "datatype JSON. Absent for a binary output."},
            "parameters": {"type": "object", "properties": {
                "binary_data_size": {
                    "type": "integer", "minimum": 0,
                    "description": "A binary output: its bytes in the binary part of the "
                                   "body."},
                "classes": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "description": "A classifier's ZipMap output (FP32 [N, C]): the class "
                                   "label of each column, in order."},
                "zipmap": {
                    "type": "boolean",
                    "description": "The ZipMap output is answered as maps (datatype JSON), "
                                   "as the call asked with parameters.zipmap."}}},
        },
    },
    "InferenceResponse": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _schema("ResponseOutput")},
        },
    },
    "TensorMetadata": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": [*wire.DATATYPES, wire.JSON]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1},
                      "description": "-1 marks a variable dimension."},
            "parameters": {"type": "object", "properties": {"classes": {
                "type": "array",
                "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "description": "A classifier's ZipMap output: the class label of each column "
                               "of its FP32 [N, C] tensor."}}},
        },
    },
    "ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string", "enum": ["onnxruntime_onnx"]},
            "inputs": {"type": "array", "items": _schema("TensorMetadata")},
            "outputs": {"type": "array", "items": _schema("TensorMetadata")},
            "parameters": {"type": "object", "properties": {
                "max_batch_size": {"type": "integer", "minimum": 0},
                "batching": {
                    "type": "object", "nullable": True,
                    "description": "The batch sizes the version's workers tuned at load: "
                                   "max_batch_size (the run size cap gateways bundle to), "
                                   "preferred_batch_sizes, source (tuned, config, default), "
                                   "curve (rows_per_s by batch on this host), curve_from "
                                   "(measured, cached), host, measured_at",
                    "properties": {
                        "max_batch_size": {"type": "integer", "minimum": 0},
                        "preferred_batch_sizes": {"type": "array",
                                                  "items": {"type": "integer"}},
                        "source": {"type": "string",
                                   "enum": ["tuned", "config", "default"]},
                        "curve": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "batch": {"type": "integer"},
                                "rows_per_s": {"type": "number"}}}},
                        "curve_from": {"type": "string"},
                        "host": {"type": "string"},
                        "measured_at": {"type": "number"}}},
                "lineage": {"type": "object", "nullable": True,
                            "description": "Where this version came from: run_id, params, "
                                           "metrics, registry (name, version, alias), from "
                                           "MLmodel and metadata.json beside model.onnx"},
                "run_url": {"type": "string", "nullable": True}}},
        },
    },
    "TrafficPolicy": {
        "type": "object", "description": "How unpinned calls are shared; PUT replaces all.",
        "properties": {
            "weights": {"type": "object", "additionalProperties": {"type": "integer",
                                                                    "minimum": 0},
                        "description": "version -> weight, e.g. {\"1\": 90, \"2\": 10}"},
            "shadow": {"type": "object", "nullable": True, "required": ["version"],
                       "properties": {"version": {"type": "string"},
                                      "percent": {"type": "number", "minimum": 0,
                                                  "maximum": 100}}},
            "sticky_header": {"type": "string", "nullable": True},
            "default": {"type": "string", "nullable": True},
            "reason": {"type": "string"}}},
    "Traffic": {
        "type": "object", "required": ["model", "default", "policy", "versions", "agreement",
                                       "gate"],
        "properties": {
            "model": {"type": "string"}, "default": {"type": "string", "nullable": True},
            "policy": {"type": "object", "nullable": True},
            "versions": {"type": "array", "items": {"type": "object"}},
            "agreement": {"type": "array", "items": {
                "type": "object", "required": ["serving", "candidate", "n"],
                "properties": {"serving": {"type": "string"}, "candidate": {"type": "string"},
                               "n": {"type": "integer"},
                               "top1": {"type": "number", "nullable": True},
                               "mean_abs_delta": {"type": "number", "nullable": True},
                               "p99_abs_delta": {"type": "number", "nullable": True}}}},
            "gate": {"type": "object", "nullable": True}}},
    "RepositoryIndexRequest": {
        "type": "object", "properties": {"ready": {
            "type": "boolean", "description": "Only versions that are READY."}}},
    "RepositoryIndex": {
        "type": "array", "items": {
            "type": "object", "required": ["name", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"type": "string",
                          "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
                "reason": {"type": "string"},
                "lineage": {"type": "object",
                            "description": "run_id, registry, params, metrics: where the "
                                           "version came from (absent when unknown)"}}}},
    "RepositoryRequest": {
        "type": "object", "properties": {"parameters": {
            "type": "object", "additionalProperties": True,
            "description": "timeout_ms: how long to wait for the change (default 120000); "
                           "file:<version>/model.onnx: a new version's file in base64 (load)."}},
    },
    "RepositoryPending": {
        "type": "object", "required": ["status", "message", "location"],
        "properties": {"status": {"type": "string"}, "message": {"type": "string"},
                       "location": {"type": "string"}}},
    "ModelReady": {
        "type": "object", "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Live": {"type": "object", "required": ["live"],
             "properties": {"live": {"type": "boolean"}}},
    "Ready": {
        "type": "object", "required": ["ready"],
        "description": "With API keys on and no valid key sent, only 'ready': the other "
                       "fields name models and tasks.",
        "properties": {
            "ready": {"type": "boolean"},
            "redis": {"type": "boolean", "description": "Redis answers."},
            "failing_tasks": {"type": "array", "items": {"type": "string"},
                              "description": "Background tasks down or crash-looping; the "
                                             "critical ones make the gateway not ready."},
            "models": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["ready", "workers"],
                "properties": {"ready": {"type": "boolean"},
                               "workers": {"type": "integer", "minimum": 0}}}},
        },
    },
    "DriftReport": {
        "type": "object", "required": ["model", "profile", "message", "features", "alerts"],
        "properties": {
            "model": {"type": "string"},
            "profile": {"type": "boolean",
                        "description": "Whether the model has a reference profile."},
            "message": {"type": "string"},
            "features": {"type": "array", "items": {"type": "object"},
                         "description": "Per feature or label output: score, alert, "
                                        "statistics, thresholds, reference and current."},
            "alerts": {"type": "array"},
        },
    },
    "PredictRequest": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {
            "type": "array", "minItems": 1,
            "description": "Rows of the model's single input, or objects keyed by input "
                           "name (every instance names every input)."}},
    },
    "PredictResponse": {
        "type": "object", "required": ["predictions"],
        "properties": {"predictions": {
            "type": "array", "description": "One prediction per instance: the row of the single "
                                            "output, or an object of all outputs."}},
    },
}

# Triton's binary tensor extension: the JSON request (or response) of
# Inference-Header-Content-Length bytes, then the raw data of the binary tensors in order.
_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
_HEADER_LENGTH = "Inference-Header-Content-Length"
_INFER = {
    "operationId": "model_infer",
    "summary": "Run the model (KServe V2, with Triton's binary tensor extension).",
    "parameters": [{
        "name": _HEADER_LENGTH, "in": "header", "required": False,
        "description": "Length of the JSON part of a body that carries binary tensor data; "
                       "with it any content type is taken.",
        "schema": {"type": "integer", "minimum": 0}}],
    "requestBody": {
        "required": True,
        "description": "An InferenceRequest as JSON; or, with Inference-Header-Content-Length, "
                       "that many bytes of it followed by the binary tensor data.",
        "content": {JSON: {"schema": _schema("InferenceRequest")},
                    "application/octet-stream": _BINARY_BODY}},
    "responses": {
        "200": {"description": "The requested outputs: an InferenceResponse as JSON, or, when "
                               "some output was asked for as binary, the JSON of "
                               "Inference-Header-Content-Length bytes and then their data.",
                "headers": {_HEADER_LENGTH: {
                    "description": "Present with a binary body: the JSON part's length.",
                    "schema": {"type": "integer", "minimum": 0}}},
                "content": {JSON: {"schema": _schema("InferenceResponse")},
                            "application/octet-stream": _BINARY_BODY}},
        **_errors(*_INFER_ERRORS)},
}
_PREDICT = {
    "operationId": "model_predict_v1",
    "summary": "Run the model (KServe V1).",
    "requestBody": {"required": True, "content": {JSON: {"schema": _schema("PredictRequest")}}},
    "responses": {"200": _json(_schema("PredictResponse"), "One prediction per instance."),
                  **_errors(*_INFER_ERRORS)},
}
_METADATA = {
    "operationId": "model_metadata",
    "summary": "A model's signature (variable dims are -1) and versions.",
    "responses": {"200": _json(_schema("ModelMetadata"), "The model's metadata."),
                  **_errors("NotFound")},
}
_MODEL_READY = {
    "operationId": "model_ready",
    "summary": "Whether a live worker serves this model version.",
    "responses": {"200": _json(_schema("ModelReady"), "Ready."),
                  "503": _json(_schema("ModelReady"), "Known, but no live worker serves it."),
                  **_errors("NotFound")},
}


def _repository_change(operation_id: str, summary: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id, "summary": summary, "tags": ["repository"],
        "parameters": [_NAME],
        "requestBody": {"required": False,
                        "content": {JSON: {"schema": _schema("RepositoryRequest")}}},
        "responses": {
            "200": _json({"type": "object"}, "Done: every version the policy serves is READY "
                                             "(load), or the model is gone (unload)."),
            "202": _json(_schema("RepositoryPending"), "Still under way at the timeout."),
            **_errors("BadRequest", "NotFound", "Conflict", "PayloadTooLarge",
                      "UnsupportedMediaType", "Unavailable")}}}


_JOB_STATES = ["queued", "running", "succeeded", "completed_with_failures",
               "failed", "cancelled"]
_JOB_ID = {"name": "id", "in": "path", "required": True,
           "description": "The job's id, as POST /v2/jobs answered it.",
           "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_FILE = {"type": "object", "properties": {
    "path": {"type": "string", "description": "Under the jobs folder (relative to it, or "
                                              "absolute inside it)."},
    "format": {"type": "string"},
    "id_column": {"type": "string", "description": "Input only: the column (or NPZ array) "
                                                   "holding each row's id."}}}
_JOB_SCHEMAS: dict[str, Any] = {
    "JobRequest": {
        "type": "object", "required": ["model", "input"],
        "properties": {"model": {"type": "string"}, "version": {"type": "string"},
                       "input": {**_FILE, "required": ["path"]}, "output": _FILE}},
    "Job": {
        "type": "object",
        "required": ["id", "state", "model", "version", "rows", "rows_per_s", "eta_s"],
        "properties": {
            "id": {"type": "string"}, "state": {"type": "string", "enum": _JOB_STATES},
            "model": {"type": "string"}, "version": {"type": "string"},
            "rows": {"type": "object", "required": ["total", "done", "failed"],
                     "properties": {"total": {"type": "integer", "nullable": True},
                                    "done": {"type": "integer"},
                                    "failed": {"type": "integer"}}},
            "rows_per_s": {"type": "number"},
            "eta_s": {"type": "number", "nullable": True},
            "attempt": {"type": "integer"},
            "error": {"type": "string", "nullable": True}}},
    "JobList": {"type": "object", "required": ["jobs"],
                "properties": {"jobs": {"type": "array", "items": _schema("Job")}}},
}


def _job_action(operation_id: str, summary: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id, "tags": ["jobs"], "summary": summary,
        "parameters": [_JOB_ID],
        "responses": {"200": _json(_schema("Job"), "The job now."),
                      **_errors("Forbidden", "NotFound", "Conflict", "Unavailable")}}}


_JOB_PATHS = {
    "/v2/jobs": {
        "post": {
            "operationId": "job_submit", "tags": ["jobs"],
            "summary": "Submit a batch job: a JSON body naming files under the jobs folder, or "
                       "the input file itself as the body with the rest in the query (its "
                       "output is then kept in the job store for 24 h).",
            "parameters": [
                {"name": name, "in": "query", "required": False, "schema": {"type": "string"},
                 "description": text}
                for name, text in (("model", "Uploads: the model."),
                                   ("version", "Uploads: the version (default: the default)."),
                                   ("format", "Uploads: csv, jsonl, parquet, npy or npz."),
                                   ("id_column", "Uploads: the id column."),
                                   ("output_format", "Uploads: jsonl (default) or parquet."))],
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _schema("JobRequest")},
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
            "responses": {"201": _json(_schema("Job"), "Queued."),
                          **_errors("BadRequest", "Forbidden", "NotFound", "PayloadTooLarge",
                                    "TooManyRequests", "Unavailable")}},
        "get": {
            "operationId": "job_list", "tags": ["jobs"],
            "summary": "The newest jobs (at most 100), optionally in one state.",
            "parameters": [{"name": "state", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": _JOB_STATES}}],
            "responses": {"200": _json(_schema("JobList"), "The jobs."),
                          **_errors("BadRequest", "Unavailable")}}},
    "/v2/jobs/{id}": {"get": {
        "operationId": "job_status", "tags": ["jobs"],
        "summary": "A job's state, rows {total, done, failed}, rows/s, time left, version.",
        "parameters": [_JOB_ID],
        "responses": {"200": _json(_schema("Job"), "The job."),
                      **_errors("NotFound", "Unavailable")}}},
    "/v2/jobs/{id}/cancel": _job_action(
        "job_cancel", "Cancel a queued or running job (another key's: admin key)."),
    "/v2/jobs/{id}/retry": _job_action(
        "job_retry", "Run the failed rows of a job that completed_with_failures again."),
    "/v2/jobs/{id}/output": {"get": {
        "operationId": "job_output", "tags": ["jobs"],
        "summary": "A finished job's output, streamed: JSONL, one record per input row in "
                   "input order, or Parquet.",
        "parameters": [_JOB_ID],
        "responses": {
            "200": {"description": "The output.", "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
            **_errors("Forbidden", "NotFound", "Conflict", "Unavailable")}}},
}


_TRAFFIC_PATHS = {
    "/v2/models/{name}/traffic": {
        "get": {"operationId": "model_traffic", "tags": ["traffic"],
                "summary": "The traffic policy, each version's share and figures, agreement "
                           "between versions, the promotion gate.",
                "parameters": [_NAME],
                "responses": {"200": _json(_schema("Traffic"), "The model's traffic."),
                              **_errors("NotFound", "Unavailable")}},
        "put": {"operationId": "model_traffic_set", "tags": ["traffic"],
                "summary": "Replace the traffic policy (admin key when set).",
                "parameters": [_NAME],
                "requestBody": {"required": True,
                                "content": {JSON: {"schema": _schema("TrafficPolicy")}}},
                "responses": {"200": _json(_schema("Traffic"), "Applied."),
                              **_errors("BadRequest", "NotFound", "PayloadTooLarge",
                                        "UnsupportedMediaType", "Unavailable")}}},
    "/v2/models/{name}/traffic/{action}": {"post": {
        "operationId": "model_traffic_action", "tags": ["traffic"],
        "summary": "Override the promotion gate: promote, rollback, pause, resume (admin key).",
        "parameters": [_NAME, {"name": "action", "in": "path", "required": True,
                               "schema": {"type": "string", "enum": ["promote", "rollback",
                                                                     "pause", "resume"]}}],
        "responses": {"200": _json(_schema("Traffic"), "Done, and the traffic now."),
                      **_errors("BadRequest", "NotFound", "Unavailable")}}},
}


_LABEL = {"type": "object", "required": ["id", "label"],
          "properties": {"id": {"type": "string", "description": "The call's id (its answer's "
                                                                 "`id` or X-Request-Id)."},
                         "label": {"oneOf": [{"type": "string"}, {"type": "number"}],
                                   "description": "The true class, or the true value of a "
                                                  "regressor."},
                         "row": {"type": "integer", "minimum": 0,
                                 "description": "The row of a multi-row call (default 0)."}}}
_FIGURES = {"type": "object", "description": "rows (window), accuracy, log_loss, ece, "
                                             "per_class {precision, recall, support} for "
                                             "classifiers; mae, rmse for regressors."}
_ALARM = {"type": "object", "nullable": True,
          "required": ["statistic", "value", "threshold", "reference_accuracy"],
          "properties": {"statistic": {"type": "string"}, "value": {"type": "number"},
                         "threshold": {"type": "number"},
                         "reference_accuracy": {"type": "number", "nullable": True},
                         "reference": {"type": "string", "nullable": True},
                         "rows_judged": {"type": "integer"},
                         "fired_after_rows": {"type": "integer", "nullable": True}}}
_QUALITY = {
    "type": "object", "required": ["model", "stored", "labels", "versions", "alerts"],
    "description": "Live quality per version on labelled rows: since it loaded and over its "
                   "window of last labelled rows; `alert` while the CUSUM says accuracy "
                   "dropped below its reference, `alarm` the statistic behind it (else null), "
                   "`test` the same statistic whenever it runs.",
    "properties": {
        "model": {"type": "string"}, "stored": {"type": "object"},
        "labels": {"type": "object"},
        "versions": {"type": "array", "items": {
            "type": "object",
            "required": ["version", "labelled", "unmatched", "label_delay_p50_s", "since_load",
                         "window", "alert", "alarm"],
            "properties": {
                "version": {"type": "string"}, "labelled": {"type": "integer"},
                "unmatched": {"type": "integer"},
                "label_delay_p50_s": {"type": "number", "nullable": True},
                "since_load": _FIGURES, "window": _FIGURES, "alert": {"type": "boolean"},
                "alarm": _ALARM, "test": _ALARM}}},
        "alerts": {"type": "array", "description": "The last alarm changes (raised, "
                                                    "cleared) of any version, newest first.",
                   "items": {"type": "object", "required": ["version", "change"]}}}}
_FEEDBACK_PATHS = {
    "/v2/models/{name}/feedback": {"post": {
        "operationId": "model_feedback", "tags": ["quality"],
        "summary": "Labels for answered calls, joined by the call's id; every item is counted "
                   "(matched, unknown, expired, already_labelled, invalid), none fails the "
                   "others.",
        "parameters": [_NAME],
        "requestBody": {"required": True, "content": {JSON: {"schema": {
            "oneOf": [_LABEL, {"type": "array", "items": _LABEL, "minItems": 1,
                               "maxItems": 10_000}]}}}},
        "responses": {"200": _json({"type": "object", "required": [
            "model", "received", "matched", "unknown", "expired", "already_labelled",
            "invalid", "errors"]}, "What became of the labels."),
            **_errors("BadRequest", "NotFound", "PayloadTooLarge", "UnsupportedMediaType",
                      "Unavailable")}}},
    "/v2/models/{name}/quality": {"get": {
        "operationId": "model_quality", "tags": ["quality"],
        "summary": "Live quality per version from the labels fed back.",
        "parameters": [_NAME],
        "responses": {"200": _json(_QUALITY, "Quality per version."),
                      **_errors("NotFound", "Unavailable")}}},
}


_REPOSITORY_PATHS = {
    "/v2/repository/index": {"post": {
        "operationId": "repository_index", "tags": ["repository"],
        "summary": "Every version on disk or loaded, with its state and why.",
        "requestBody": {"required": False,
                        "content": {JSON: {"schema": _schema("RepositoryIndexRequest")}}},
        "responses": {"200": _json(_schema("RepositoryIndex"), "The index."),
                      **_errors("BadRequest", "PayloadTooLarge", "UnsupportedMediaType")}}},
    "/v2/repository/models/{name}/load": _repository_change(
        "repository_model_load", "Load a model (explicit mode; admin key when set)."),
    "/v2/repository/models/{name}/unload": _repository_change(
        "repository_model_unload", "Unload a model, draining its versions (explicit mode; "
                                   "admin key when set)."),
    "/v2/repository/mlflow/webhook": {"post": {
        "operationId": "repository_mlflow_webhook", "tags": ["repository"],
        "summary": "An MLflow model-registry webhook: the decider asks the registry about that "
                   "registered model now. Signed with --mlflow-webhook-secret "
                   "(X-MLflow-Signature), else an admin key when the server has keys.",
        "requestBody": {"required": True, "content": {JSON: {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"entity": {"type": "string"}, "action": {"type": "string"},
                           "data": {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string"}}}}}}}},
        "responses": {"200": _json({"type": "object", "required": ["status"],
                                    "properties": {"status": {"type": "string"},
                                                   "registered_model": {"type": "string"}}},
                                   "The decider was asked."),
                      **_errors("BadRequest", "PayloadTooLarge", "UnsupportedMediaType",
                                "Unavailable")}}},
}

_VERSIONS_VIEW = {
    "type": "object", "required": ["name", "default_version", "versions"],
    "description": "Every version the model serves or has on disk, highest first: its state, "
                   "its lineage (run id, params, training metrics, registry entry; null when "
                   "its folder says nothing), a link to its run in MLflow when the tracking "
                   "server is known, and live figures since it loaded (null when it has no "
                   "pool), agreement with the serving version among them (null without "
                   "shadowed calls).",
    "properties": {
        "name": {"type": "string"}, "default_version": {"type": "string", "nullable": True},
        "source": {"type": "string", "nullable": True},
        "registry": {"type": "object", "nullable": True},
        "agreement": {"type": "string"},
        "versions": {"type": "array", "items": {
            "type": "object",
            "required": ["version", "state", "reason", "sha256", "default", "lineage",
                         "run_url", "warnings", "live", "drift"],
            "properties": {
                "version": {"type": "string"}, "state": {"type": "string"},
                "reason": {"type": "string"}, "sha256": {"type": "string"},
                "default": {"type": "boolean"},
                "lineage": {"type": "object", "nullable": True},
                "run_url": {"type": "string", "nullable": True},
                "warnings": {"type": "array", "items": {"type": "string"}},
                "live": {"type": "object", "nullable": True},
                "drift": {"type": "object", "nullable": True}}}},
    },
}


_DASHBOARD_DATA = {
    "type": "object",
    "required": ["time", "start", "end", "window_s", "drift", "autoscaler", "models"],
    "description": "Per model (default version): one value per second from `start` to `end` "
                   "(epoch seconds) in `series`, the current figures in `now`, and the scaling "
                   "decisions; `autoscaler` holds the cost rate, its series and the budget.",
    "properties": {
        "time": {"type": "number"}, "start": {"type": "integer"}, "end": {"type": "integer"},
        "window_s": {"type": "integer"}, "drift": {"type": "boolean"},
        "autoscaler": {"type": "object",
                       "required": ["running", "cost_per_hour", "budget_per_hour", "cost"]},
        "models": {"type": "array", "items": {
            "type": "object", "required": ["name", "version", "pool", "now", "series",
                                           "decisions"]}},
    },
}


def _static(operation_id: str, summary: str, media_type: str) -> dict[str, Any]:
    """A file of the dashboard page: served without a key (it holds no data)."""
    return {"get": {
        "operationId": operation_id, "summary": summary, "tags": ["dashboard"], "security": [],
        "responses": {"200": {"description": "The file.",
                              "content": {media_type: {"schema": {"type": "string"}}}},
                      "500": _ref("responses", "InternalError")}}}


_DASHBOARD_PATHS = {
    "/dashboard": _static("dashboard", "The live dashboard page (open #key=KEY with API keys).",
                          "text/html"),
    "/dashboard/dashboard.js": _static("dashboard_script", "The dashboard's script.",
                                       "text/javascript"),
    "/dashboard/charts.js": _static("dashboard_charts", "The dashboard's SVG charts.",
                                    "text/javascript"),
    "/dashboard/dashboard.css": _static("dashboard_style", "The dashboard's style sheet.",
                                        "text/css"),
    "/dashboard/data": {"get": {
        "operationId": "dashboard_data", "tags": ["dashboard"],
        "summary": "What the dashboard draws: every model's last minutes, from Redis.",
        "responses": {"200": _json(_DASHBOARD_DATA, "The snapshot (at most 0.5 s old)."),
                      **_errors("Unavailable")}}},
}


def _probe(operation_id: str, summary: str, ok: dict[str, Any],
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "tags": ["probes"],
                    "responses": {"200": ok, **(extra or {}), **_errors()}}}


def openapi_document() -> dict[str, Any]:
    """The whole document, as a plain dict ready for JSON."""
    paths: dict[str, Any] = {
        "/v2": {"get": {"operationId": "server_metadata", "summary": "Server name and version.",
                        "responses": {"200": _json(_schema("ServerMetadata"), "Metadata."),
                                      **_errors()}}},
        # The path as KServe's REST document writes it.
        "/v2/": {"get": {"operationId": "server_metadata_slash",
                         "summary": "Server name and version (as GET /v2).",
                         "responses": {"200": _json(_schema("ServerMetadata"), "Metadata."),
                                       **_errors()}}},
        "/v2/health/live": _probe("server_live", "The gateway process answers.",
                                  _json(_schema("Live"), "Live.")),
        "/v2/health/ready": _probe(
            "server_ready", "Redis answers and every model has a live worker.",
            _json(_schema("Ready"), "Ready, with the state of every model."),
            {"503": _json(_schema("Ready"), "Not ready; the body says what is missing.")}),
        **_model_paths("", _METADATA),
        **_model_paths("/ready", _MODEL_READY),
        **_model_paths("/infer", _INFER, verb="post"),
        "/v2/models/{name}/versions": {"get": {
            "operationId": "model_versions",
            "summary": "Every version side by side: where it came from beside how it does.",
            "parameters": [_NAME],
            "responses": {"200": _json(_VERSIONS_VIEW, "The versions."),
                          **_errors("NotFound")}}},
        "/v2/models/{name}/drift": {"get": {
            "operationId": "model_drift",
            "summary": "Input and prediction drift against the model's reference profile.",
            "parameters": [_NAME],
            "responses": {"200": _json(_schema("DriftReport"), "Per-feature statistics."),
                          **_errors("NotFound")}}},
        **_model_paths(":predict", _PREDICT, verb="post", prefix="/v1/models/{name}"),
        "/v1/models/{name}": {"get": {
            "operationId": "model_status_v1", "summary": "Whether the model is ready (KServe V1).",
            "parameters": [_NAME],
            "responses": {"200": _json(_schema("ModelReady"), "The model's readiness."),
                          **_errors("NotFound")}}},
        **_REPOSITORY_PATHS,
        **_TRAFFIC_PATHS,
        **_JOB_PATHS,
        **_FEEDBACK_PATHS,
        **_DASHBOARD_PATHS,
        # Not a probe: it names every model and drift feature, so it needs the key when
        # keys are on.
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics, worker-side figures "
                                                 "included.",
            "responses": {"200": {"description": "Prometheus text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors()}}},
        "/openapi.json": _probe("openapi", "This document.", {
            "description": "The OpenAPI document.",
            "content": {JSON: {"schema": {"type": "object"}}}}),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "modelgate",
            "version": __version__,
            "description": "Model-serving gateway for ONNX models: KServe Open Inference "
                           "Protocol V2 REST and V1. Every error is JSON {\"error\": \"...\"} "
                           "saying what is wrong and how to fix it. With API keys on, send "
                           "'Authorization: Bearer KEY'; the health probes and this document "
                           "stay open unless the server runs with --protect-probes, and "
                           "without a valid key the probes' bodies name no model.",
        },
        # Authentication is optional: it applies only when the server has API keys.
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {**_SCHEMAS, **_JOB_SCHEMAS},
            "responses": _ERROR_RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
