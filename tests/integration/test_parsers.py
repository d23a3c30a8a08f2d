"""Parser processes: a large body parsed apart gives exactly what the event loop would have, its
errors are worded the same, and a parser that dies is replaced.

Real child processes (``python -m modelgate.gateway.parsing``); no Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest

from modelgate.core.errors import InvalidInput
from modelgate.core.repository import Model, load_repository
from modelgate.gateway.binary import split_body
from modelgate.gateway.metrics import Metrics
from modelgate.gateway.parsing import V1, V2, Parsed, Parsers, parse_body
from tests.models import write_repository
from tests.procs import wait_until
from tests.tensors import assert_same_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("parser-models"),
                            {"mlp": onnx_models["mlp"], "bytes": onnx_models["bytes"]})


@pytest.fixture(scope="module")
def models(repo: Path) -> dict[str, Model]:
    return load_repository(repo)


def parsers(repo: Path) -> Parsers:
    """Every body goes to a parser process (large_body_bytes=1)."""
    return Parsers(large_body_bytes=1, processes=1, timeout_s=30.0, metrics=Metrics())


def assert_same(apart: Parsed, here: Parsed) -> None:
    assert (apart.request_id, apart.binary_outputs) == (here.request_id, here.binary_outputs)
    assert_same_request(apart.request, here.request)


def test_a_body_parsed_apart_is_what_the_event_loop_would_have_parsed(
        repo: Path, models: dict[str, Model]) -> None:
    mlp, text = models["mlp"].default, models["bytes"].default
    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    header = orjson.dumps({"id": "call-7", "parameters": {"timeout_ms": 900, "k": [1, "a"]},
                           "inputs": [{"name": "input", "shape": [50, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "probabilities",
                                        "parameters": {"binary_data": True}}]})
    with_binary = header + x.tobytes()
    words = orjson.dumps({"inputs": [{"name": text.inputs[0].name, "shape": [3],
                                      "datatype": "BYTES", "data": ["a", "bé", ""]}]})
    v1 = orjson.dumps({"instances": x[:3].tolist()})

    async def scenario() -> None:
        pool = parsers(repo)
        try:
            json_part, binary = split_body(with_binary, str(len(header)))
            here_json, here_binary = split_body(with_binary, str(len(header)))
            assert_same(await pool.parse(V2, mlp, json_part, binary),
                        parse_body(V2, here_json, here_binary, mlp))
            assert_same(await pool.parse(V2, text, words, None),
                        parse_body(V2, words, None, text))
            assert_same(await pool.parse(V1, mlp, v1, None), parse_body(V1, v1, None, mlp))
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("body", [
    b"{not json",
    b'{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1e39, 0, 0,'
    b' 0]}]}',
], ids=["not-json", "shape", "range"])
def test_a_bad_body_parsed_apart_is_refused_in_the_same_words(
        repo: Path, models: dict[str, Model], body: bytes) -> None:
    mlp = models["mlp"].default
    with pytest.raises(InvalidInput) as here:
        parse_body(V2, body, None, mlp)

    async def scenario() -> None:
        pool = parsers(repo)
        try:
            with pytest.raises(InvalidInput) as apart:
                await pool.parse(V2, mlp, body, None)
            assert str(apart.value) == str(here.value)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_parser_that_died_is_replaced(repo: Path, models: dict[str, Model]) -> None:
    mlp = models["mlp"].default
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                     "data": [1, 2, 3, 4]}]})
    metrics = Metrics()

    async def scenario() -> None:
        pool = Parsers(large_body_bytes=1, processes=1, timeout_s=30.0, metrics=metrics)
        try:
            await pool.parse(V2, mlp, body, None)
            (first,) = pool.running()
            os.kill(first, signal.SIGKILL)
            deadline = asyncio.get_running_loop().time() + 5
            while pool.running():  # until the loop has seen it exit
                assert asyncio.get_running_loop().time() < deadline, "the parser did not exit"
                await asyncio.sleep(0.01)
            parsed = await pool.parse(V2, mlp, body, None)
            assert parsed.request.inputs["input"].shape == (1, 4)
            (second,) = pool.running()
            assert second != first
        finally:
            await pool.close()

    asyncio.run(scenario())
    assert metrics.registry.get_sample_value("modelgate_background_errors_total",
                                             {"task": "parser"}) == 1


def test_small_bodies_stay_on_the_event_loop(repo: Path, models: dict[str, Model]) -> None:
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                     "data": [1, 2, 3, 4]}]})

    async def scenario() -> None:
        pool = Parsers(large_body_bytes=len(body) + 1, processes=1, timeout_s=30.0,
                       metrics=Metrics())
        await pool.parse(V2, models["mlp"].default, body, None)
        assert pool.running() == []  # no parser process was started
        await pool.close()

    asyncio.run(scenario())


def test_a_parser_ends_when_its_gateway_does(repo: Path, models: dict[str, Model]) -> None:
    """Closing its input (the gateway stopping or dying) ends a parser process."""
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                     "data": [1, 2, 3, 4]}]})

    async def scenario() -> int:
        pool = parsers(repo)
        await pool.parse(V2, models["mlp"].default, body, None)
        (pid,) = pool.running()
        await pool.close()
        return pid

    pid = asyncio.run(scenario())
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5, "the parser to exit")

