"""KServe's Python SDK gRPC client (``kserve.InferenceGRPCClient``), unchanged, against a
modelgate gateway. Run by tests/integration/test_grpc.py with the interpreter of an isolated
venv holding the SDK (it cannot share a process with tritonclient.grpc: both register the
protocol's messages in protobuf's default pool), it prints one JSON object of what it saw.

    KSERVE_PYTHON tests/integration/kserve_client.py ADDRESS [SLOW_MODEL] [API_KEY]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def _failure(error: BaseException) -> dict[str, str]:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    return {"code": code().name if callable(code) else type(error).__name__,
            "message": details() if callable(details) else str(error)}


async def _attempt(coroutine: Any) -> Any:
    try:
        return {"ok": await coroutine}
    except Exception as e:  # the client raises grpc's AioRpcError, or its own wrapping
        return {"failed": _failure(e)}


async def main(address: str, slow: str, key: str) -> dict[str, Any]:
    headers = [("authorization", f"Bearer {key}")] if key else None
    client = InferenceGRPCClient(address, retries=0, timeout=30)
    seen: dict[str, Any] = {}
    seen["live"] = await client.is_server_live(headers=headers)
    if key:
        request = InferRequest("mlp", [InferInput("input", [1, 4], "FP32",
                                                  np.zeros((1, 4), np.float32))])
        seen["without_key"] = await _attempt(client.infer(request))
        answer = await client.infer(request, headers=headers)
        seen["with_key"] = answer.outputs[0].as_numpy().tolist()
        await client.close()
        return seen
    seen["ready"] = await client.is_server_ready()
    seen["model_ready"] = await client.is_model_ready("add2")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, np.float32)
    request = InferRequest("add2", [InferInput("a", [2, 3], "FP32", a),
                                    InferInput("b", [2, 3], "FP32", b)], request_id="k-1")
    answer = await client.infer(request)
    seen["add2"] = {"id": answer.id, "model_name": answer.model_name,
                    "outputs": {o.name: o.as_numpy().tolist() for o in answer.outputs}}
    text = np.array([b"hello", "gr\u00fc\u00df".encode()], dtype=np.object_)
    answer = await client.infer(InferRequest("bytes", [InferInput("text", [2], "BYTES",
                                                                  text)]))
    seen["bytes"] = [v.decode() if isinstance(v, bytes) else v
                     for v in answer.outputs[0].as_numpy().tolist()]
    seen["unknown_model"] = await _attempt(client.infer(InferRequest(
        "nope", [InferInput("input", [1, 4], "FP32", np.zeros((1, 4), np.float32))])))
    seen["bad_shape"] = await _attempt(client.infer(InferRequest(
        "mlp", [InferInput("input", [1, 3], "FP32", np.zeros((1, 3), np.float32))])))
    seen["deadline"] = await _attempt(client.infer(InferRequest(
        slow, [InferInput("input", [1, 1024], "FP32", np.ones((1, 1024), np.float32))]),
        timeout=0.03))
    await client.close()
    return seen


if __name__ == "__main__":
    arguments = [*sys.argv[1:], "", ""]
    print(json.dumps(asyncio.run(main(arguments[0], arguments[1] or "slow", arguments[2]))))
