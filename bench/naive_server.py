"""The naive baseline: one process, Starlette and an in-process ONNX Runtime session.

It serves the same ``POST /v2/models/{name}/infer`` JSON contract as modelgate for one model and
does the least work that contract allows: parse with orjson, ``np.asarray``, ``session.run`` on
the event loop (no queue, no batching, no other process), answer with orjson. It is what a user
would write in an afternoon, and what modelgate's per-request overhead is measured against.

    python -m bench.naive_server --model MODELS/mlp/1/model.onnx --port 8001

It deliberately does not import modelgate: the baseline must not share the code under test.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JSON = "application/json"
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
DATATYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=JSON)


def build_app(model_path: Path, name: str) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        if request.path_params["name"] != name:
            return _error(404, f"unknown model {request.path_params['name']!r}; serving {name!r}")
        try:
            body = orjson.loads(await request.body())
            feeds = {
                item["name"]: np.asarray(item["data"], dtype=DTYPES[item["datatype"]])
                .reshape(item["shape"])
                for item in body["inputs"]
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            return _error(400, f"bad request body: {e!r}")
        try:
            results = session.run(output_names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
            return _error(400, f"inference failed: {e}")
        answer: dict[str, Any] = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {"name": out, "datatype": DATATYPES.get(r.dtype, str(r.dtype)),
                 "shape": list(r.shape), "data": r.reshape(-1)}
                for out, r in zip(output_names, results, strict=True)
            ],
        }
        if "id" in body:
            answer["id"] = body["id"]
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type=JSON)

    return Starlette(routes=[
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="path of the .onnx file")
    parser.add_argument("--name", default=None,
                        help="model name in the URL (default: MODELS/{name}/{version}/model.onnx)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    name = args.name or args.model.resolve().parent.parent.name
    uvicorn.run(build_app(args.model, name), host=args.host, port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
