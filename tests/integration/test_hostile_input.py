"""Hostile and malformed input, over HTTP and straight onto the queue, with real processes.

Every bad call gets a 4xx whose JSON ``error`` says what is wrong. Entries put on a model's
stream by something other than a gateway (anything that reaches Redis can) are refused
without being executed, answered with ``wire_error`` when they name a reply list, and never
stop the worker.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import onnx
import pytest
import redis

from modelgate.core import wire
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from modelgate.core.store import pools, replies
from tests.models import write_repository
from tests.procs import Processes, entry_fields, wait_until

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 64 * 1024
MODELS = ["int64", "add2", "bytes"]  # INT64 [-1, -1]; FP32 a, b [-1, 3]; BYTES [-1]
POOL = pools.pool_id("int64", "1")


@dataclass
class Server:
    base_url: str
    redis: redis.Redis
    processes: Processes

    def worker_alive(self) -> bool:
        return all(p.poll() is None for label, p, _ in self.processes.started
                   if label.startswith("worker-"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           onnx_models: dict[str, onnx.ModelProto]) -> Iterator[Server]:
    """A gateway with a 64 KiB body limit and one worker per model, on a Redis of its own
    (the queue tests write to it directly)."""
    repo = write_repository(tmp_path_factory.mktemp("hostile-models"),
                            {name: onnx_models[name] for name in MODELS})
    redis_process, redis_url = start_redis()
    processes = Processes(tmp_path_factory.mktemp("hostile-logs"))
    port = free_port()
    client = redis.Redis.from_url(redis_url, socket_timeout=30)  # over the BLPOP waits
    try:
        for name in MODELS:
            processes.spawn(f"worker-{name}", [
                "worker", "--models", str(repo), "--model", name, "--redis-url", redis_url])
        processes.spawn("gateway", [
            "gateway", "--models", str(repo), "--redis-url", redis_url, "--port", str(port),
            "--max-body-bytes", str(MAX_BODY_BYTES)])
        base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base_url), 60, f"{base_url} ready", processes.check_alive,
                   processes.logs)
        yield Server(base_url, client, processes)
    finally:
        processes.stop(labels_first=("gateway",))
        client.close()
        stop_process(redis_process, timeout_s=5)
        if redis_process.stderr is not None:
            redis_process.stderr.close()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as c:
        yield c


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """``status`` with a JSON ``{"error": ...}`` mentioning every fragment (case-insensitive)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment.lower() in body["error"].lower(), (fragment, body["error"])
    return str(body["error"])


def v2_body(shape: Any, data: Any, datatype: str = "INT64", name: str = "ids",
            **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data}], **extra}).encode()


JSON_HEADERS = {"content-type": "application/json"}
INT64_INFER = "/v2/models/int64/infer"


def post(client: httpx.Client, content: Any, path: str = INT64_INFER,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(path, content=content, headers=JSON_HEADERS if headers is None else headers)


# --------------------------------------------------------------------------- size limits


def test_body_over_the_limit_with_content_length_is_413(client: httpx.Client) -> None:
    body = v2_body([1, 30_000], [7] * 30_000)
    assert len(body) > MAX_BODY_BYTES
    assert_error(post(client, body), 413, f"limit of {MAX_BODY_BYTES}", "--max-body-bytes")


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    """No Content-Length: the gateway counts while reading and stops at the limit."""
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": ['
        for _ in range(200):  # 200 x 1 KiB, far past the limit
            yield b"1," * 512
        yield b"1]}]}"

    response = post(client, chunks())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, f"limit of {MAX_BODY_BYTES}")


def test_json_nested_ten_thousand_deep_is_400(client: httpx.Client) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    assert_error(post(client, deep), 400, "not valid JSON", "depth")
    inside = b'{"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": ' + \
        b"[" * 10_000 + b"1" + b"]" * 10_000 + b"}]}"
    assert_error(post(client, inside), 400, "not valid JSON", "depth")


# --------------------------------------------------------------------------- V2 bodies

BAD_V2 = [
    pytest.param(v2_body([2**62, 2**62], [1]), "shape [4611686018427387904, 4611686018427387904]",
                 id="shape-product-overflows-int64"),
    pytest.param(v2_body([2**62, 0], []), "too large", id="empty-tensor-with-huge-dim"),
    pytest.param(v2_body([2**64 - 1, 0], []), "too large", id="dim-past-uint64"),
    pytest.param(v2_body([2, 2], [1, 2, 3]), "needs 4 values, got 3", id="shape-data-mismatch"),
    pytest.param(b'{"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", '
                 b'"data": [NaN]}]}', "not valid JSON", id="NaN-literal"),
    pytest.param(b'{"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", '
                 b'"data": [Infinity]}]}', "not valid JSON", id="Infinity-literal"),
    pytest.param(b'{"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", '
                 b'"data": [1e400]}]}', "infinity", id="1e400"),
    pytest.param(v2_body([1, 2], [1, 1.5]), "whole numbers", id="fraction-in-INT64"),
    pytest.param(v2_body([1, 1], [2**63]), "must lie in", id="INT64-overflow"),
    pytest.param(v2_body([1, 2], ["1", "2"]), "must be numbers", id="strings-in-INT64"),
    pytest.param(v2_body([1, 2], [1, None]), "must be numbers", id="null-in-INT64"),
    pytest.param(v2_body([1, 2], ["a", "b"], datatype="BYTES"), "datatype 'BYTES'",
                 id="BYTES-to-numeric-model"),
    pytest.param(v2_body([-1, 2], [1, 2]), "negative dimension", id="negative-dim"),
    pytest.param(v2_body("1,2", [1, 2]), "'shape' must be a list of integers",
                 id="shape-not-a-list"),
    pytest.param(v2_body([1.0, 2], [1, 2]), "'shape' must be a list of integers",
                 id="shape-of-floats"),
    pytest.param(json.dumps({"inputs": {"name": "ids"}}).encode(), "'inputs' must be a",
                 id="inputs-not-a-list"),
    pytest.param(json.dumps({"inputs": []}).encode(), "'inputs' must be a non-empty list",
                 id="inputs-empty"),
    pytest.param(b"", "empty", id="empty-body"),
    pytest.param(b'{"inputs": [{"name": "\xff\xfe", "shape": [1], "datatype": "INT64", '
                 b'"data": [1]}]}', "UTF-8", id="invalid-utf8"),
    pytest.param(b"\xef\xbb\xbf" + v2_body([1, 1], [1]), "not valid JSON", id="utf8-BOM"),
    pytest.param(b'[1, 2]', "JSON object", id="body-is-a-list"),
    pytest.param(v2_body([1, 1], [1], id=json.loads("[" * 500 + "]" * 500)),
                 "'id' must be a string", id="id-nested-500-deep"),
    pytest.param(v2_body([1, 1], [1], parameters={"timeout_ms": 1e-300}), "timeout_ms",
                 id="timeout-rounds-to-zero"),
    pytest.param(v2_body([1, 1], [1], outputs=[{"name": {"$ne": 1}}]), "unknown output",
                 id="output-name-not-a-string"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_V2)
def test_bad_v2_body_is_400_saying_what_is_wrong(client: httpx.Client, body: bytes,
                                                 fragment: str) -> None:
    assert_error(post(client, body), 400, fragment)


def test_fp32_value_past_its_range_is_400_not_infinity(client: httpx.Client) -> None:
    """1e39 fits JSON and FP64 but not FP32; it must not silently become Infinity."""
    body = json.dumps({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 1e39]},
        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
    assert_error(post(client, body, "/v2/models/add2/infer"), 400, "'a'", "FP32", "must lie in")


def _binary_call(client: httpx.Client, header: dict[str, Any], tail: bytes,
                 length: str | None = None, path: str = INT64_INFER) -> httpx.Response:
    """A body in Triton's binary tensor extension: JSON header, then raw tensor data."""
    head = json.dumps(header).encode()
    return client.post(path, content=head + tail, headers={
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)) if length is None else length})


def _binary_input(size: int, shape: list[int], datatype: str = "INT64",
                  name: str = "ids") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": size}}]}


BAD_BINARY = [
    pytest.param(_binary_input(16, [1, 2]), b"\0" * 16, "x1", "Inference-Header-Content-Length",
                 id="length-not-a-number"),
    pytest.param(_binary_input(16, [1, 2]), b"\0" * 16, "99999", "Inference-Header-Content-Length",
                 id="length-past-the-body"),
    pytest.param(_binary_input(16, [1, 2]), b"\0" * 8, None, "binary", id="data-runs-short"),
    pytest.param(_binary_input(8, [1, 2]), b"\0" * 8, None, "16 bytes",
                 id="size-does-not-fit-shape"),
    pytest.param(_binary_input(16, [1, 2]), b"\0" * 24, None, "binary", id="bytes-left-over"),
    pytest.param(_binary_input(2**62, [1, 2]), b"\0" * 16, None, "binary",
                 id="size-past-any-body"),
    pytest.param(_binary_input(16, [2**62, 0]), b"\0" * 16, None, "too large",
                 id="huge-empty-shape"),
]


@pytest.mark.parametrize(("header", "tail", "length", "fragment"), BAD_BINARY)
def test_bad_binary_extension_body_is_400(client: httpx.Client, header: dict[str, Any],
                                          tail: bytes, length: str | None,
                                          fragment: str) -> None:
    assert_error(_binary_call(client, header, tail, length), 400, fragment)


def test_bytes_length_prefix_past_the_data_is_400(client: httpx.Client) -> None:
    """A BYTES element whose 4-byte length claims more than the body holds."""
    tail = (2**32 - 1).to_bytes(4, "little") + b"abc"
    response = _binary_call(client, _binary_input(len(tail), [1], "BYTES", "text"), tail,
                            path="/v2/models/bytes/infer")
    assert_error(response, 400, "'text'")


def test_text_plain_is_415(client: httpx.Client) -> None:
    response = post(client, v2_body([1, 1], [1]), headers={"content-type": "text/plain"})
    assert_error(response, 415, "text/plain", "application/json")


def test_unknown_version_is_404(client: httpx.Client) -> None:
    response = post(client, v2_body([1, 1], [1]), "/v2/models/int64/versions/7/infer")
    assert_error(response, 404, "no version '7'")
    assert_error(client.get("/v2/models/int64/versions/99999999999999999999"), 404, "version")


def test_v1_ragged_instances_are_400(client: httpx.Client) -> None:
    response = post(client, json.dumps({"instances": [[1, 2], [3]]}),
                    "/v1/models/int64:predict")
    assert_error(response, 400, "not rectangular")
    response = post(client, json.dumps({"instances": [{"a": [1, 2, 3], "b": [1, 2, 3]},
                                                      {"a": [1, 2, 3], "b": [1, 2]}]}),
                    "/v1/models/add2:predict")
    assert_error(response, 400, "'b'", "not rectangular")


def assert_serving(client: httpx.Client) -> None:
    response = post(client, v2_body([1, 2], [1, 2], id="control"))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2, 3]


def test_a_good_call_still_works(client: httpx.Client) -> None:
    """The control: the same gateway answers a valid call."""
    assert_serving(client)


# --------------------------------------------------------------------------- the queue


class _Touch:
    """Unpickling this creates ``path``: proof that a payload was unpickled (i.e. executed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _enqueue(server: Server, correlation: str, payload: bytes, reply_to: str) -> None:
    server.redis.xadd(pools.requests_stream(POOL), entry_fields(
        pools.RequestEntry((correlation,), reply_to, 600_000, 1, payload)))


def _reply(server: Server, reply_to: str) -> wire.Reply:
    popped = server.redis.blpop([reply_to], timeout=10)
    assert popped is not None, f"no reply on {reply_to}\n{server.processes.logs()}"
    raw = popped[1]
    assert isinstance(raw, bytes)
    return wire.decode_reply(raw)


def _stream_drained(server: Server) -> bool:
    return int(server.redis.xlen(pools.requests_stream(POOL))) == 0


def test_pickle_on_the_queue_is_refused_not_executed(
        server: Server, client: httpx.Client, tmp_path: Path) -> None:
    control, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(pickle.dumps(_Touch(control)))
    assert control.exists(), "the trap must fire when unpickled, or this test proves nothing"

    reply_to = replies.reply_list("test")
    payload = pickle.dumps({"v": wire.WIRE_VERSION, "inputs": {"ids": _Touch(marker)}})
    _enqueue(server, "hostile-pickle", payload, reply_to)
    reply = _reply(server, reply_to)
    assert (reply.id, reply.status) == ("hostile-pickle", wire.ReplyStatus.WIRE)
    assert "msgpack" in reply.error
    assert not marker.exists(), "the worker unpickled the payload"
    wait_until(lambda: _stream_drained(server), 10, "the entry to be acknowledged and deleted")
    assert server.worker_alive()
    assert_serving(client)


def test_tensor_shape_numpy_cannot_hold_is_refused_on_the_queue(
        server: Server, client: httpx.Client) -> None:
    """Empty but with a dim past numpy's limit: decoding must fail as wire_error, not crash."""
    reply_to = replies.reply_list("test")
    cases = [("huge-empty", [2**62, 0], b""), ("too-many-dims", [1] * 70, b"\0" * 8)]
    for correlation, shape, data in cases:
        payload = msgpack.packb({"v": wire.WIRE_VERSION, "rows": [1],
                                 "inputs": {"ids": ["INT64", shape, data]}})
        _enqueue(server, correlation, payload, reply_to)
        reply = _reply(server, reply_to)
        assert (reply.id, reply.status) == (correlation, wire.ReplyStatus.WIRE), reply
        assert "cannot take shape" in reply.error, reply.error  # refused for its shape
    assert server.worker_alive()
    assert_serving(client)


@pytest.mark.parametrize("reply_to", [pools.requests_stream(POOL), "victim", ""])
def test_entry_whose_reply_to_is_no_reply_list_is_dropped_silently(
        server: Server, client: httpx.Client, reply_to: str) -> None:
    """A valid request naming some other key as its reply list: nothing is written there."""
    stream = pools.requests_stream(POOL)
    payload = wire.encode_bundle(wire.Bundle.single("hostile-reply-to", wire.Request(
        {"ids": wire.tensor(np.ones((1, 1), np.int64))})))
    existed = server.redis.exists(reply_to)
    _enqueue(server, "hostile-reply-to", payload, reply_to)
    wait_until(lambda: _stream_drained(server), 10, "the entry to be acknowledged and deleted")
    assert server.redis.type(stream) == b"stream"
    if not existed:
        assert not server.redis.exists(reply_to), "the worker wrote to a key it was named"
    assert server.worker_alive()
    assert_serving(client)
