"""``make trace`` in small: a traced deployment's gateway and worker write each call's stage
timestamps, which join with the client's into every stage of the call, in order."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bench import cpu
from bench.targets import TARGETS, LoadedTwoHopFloor, two_hop_floor_target
from bench.trace import STAGES, median_ms, run_trace
from bench.workloads import CNN_SIZE, binary_body, cnn, mlp
from modelgate.core import arena

pytestmark = pytest.mark.integration


def test_every_stage_of_a_call_is_timed_and_they_add_up_to_the_call(tmp_path: Path) -> None:
    table, references = run_trace(mlp(), calls=40, warmup=10, log_dir=tmp_path, references=())

    stages = dict(table)
    assert list(stages) == [name for name, _, _ in STAGES] + ["end to end (median)"]
    assert references == {}
    assert all(ms >= 0 for name, ms in table), table
    assert stages["ORT (session.run)"] > 0 and stages["Redis hop"] > 0
    # The stages partition the call: their medians add up to about its median.
    total = stages.pop("end to end (median)")
    assert 0.5 * total < sum(stages.values()) < 1.5 * total, table


def test_the_two_hop_floor_answers_the_calls_correctly_and_is_timed(tmp_path: Path) -> None:
    """The floor is a server of its own (a front, Redis, a worker): it is only a floor if it
    answers the same calls with the model's own outputs, which its start checks."""
    workload = mlp()
    workload.write(tmp_path / "models")
    median = median_ms(two_hop_floor_target(), workload, tmp_path / "models", tmp_path, calls=30,
                       warmup=5)
    assert 0 < median < 1000


def test_the_floor_takes_binary_tensors_and_a_large_one_through_shared_memory(
        tmp_path: Path) -> None:
    """With ``make trace --binary`` the floor gets the same binary calls as modelgate, and a
    large input goes to its worker as modelgate up's do (shared memory, not Redis): else
    modelgate would be measured against a floor of another design."""
    workload = cnn()
    workload.write(tmp_path / "models")
    expected = workload.expected(tmp_path / "models" / "cnn" / "1" / "model.onnx")
    target = two_hop_floor_target()
    started = target.start(workload, tmp_path / "models", tmp_path, expected)
    try:
        front = target.pids()[0]
        assert list(arena.ARENA_DIR.glob(f"{arena.PREFIX}{front}-*"))
        # Its CPU is read beside modelgate's in the bench: front, Redis and worker by name.
        assert sorted(cpu.roles(target.pids()).values()) == ["gateway", "redis", "workers"]
        body, header_length = binary_body(workload.body)
        for _ in range(3):
            answer = httpx.post(f"{started.base_url}{workload.infer_path}", content=body,
                                headers={"Inference-Header-Content-Length": str(header_length)},
                                timeout=10)
            assert answer.status_code == 200
            target.check(answer.content, expected)
    finally:
        target.stop()
    assert not list(arena.ARENA_DIR.glob(f"{arena.PREFIX}{front}-*"))  # removed at its stop


def test_the_throughput_floor_batches_concurrent_calls_across_its_workers_and_answers_each(
        tmp_path: Path) -> None:
    """``make bench`` runs the floor on the CNN's binary calls at concurrency: each call must
    get its own answer however the workers batch them, or its rows/s would mean nothing."""
    workload = cnn()
    model = workload.write(tmp_path / "models")
    expected = workload.expected(model)
    target = LoadedTwoHopFloor()
    started = target.start(workload, tmp_path / "models", tmp_path, expected)
    try:
        assert sorted(cpu.roles(target.pids()).values()) == [
            "gateway", "redis", *["workers"] * workload.workers]
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        images = np.random.default_rng(7).random((24, 3, CNN_SIZE, CNN_SIZE), np.float32)
        wanted = session.run(None, {"input": images})[0]

        def call(index: int) -> np.ndarray:
            body = {"inputs": [{"name": "input", "datatype": "FP32",
                                "shape": [1, 3, CNN_SIZE, CNN_SIZE],
                                "data": images[index].ravel().tolist()}]}
            content, header_length = binary_body(body)
            answer = httpx.post(f"{started.base_url}{workload.infer_path}", content=content,
                                headers={"Inference-Header-Content-Length": str(header_length)},
                                timeout=30)
            assert answer.status_code == 200, answer.text
            return np.asarray(answer.json()["outputs"][0]["data"], np.float32)

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(call, range(len(images))))
        np.testing.assert_allclose(np.stack(got), wanted.reshape(len(images), -1), rtol=1e-4,
                                   atol=1e-6)
        assert "batches of up to" in target.tail()
    finally:
        target.stop()


def test_the_loaded_floor_takes_the_mlps_calls_as_json(tmp_path: Path) -> None:
    """On the MLPs it gets the JSON calls modelgate's throughput goal is judged on (its start
    checks the answer to one against the model's own outputs)."""
    workload = mlp()
    model = workload.write(tmp_path / "models")
    target = LoadedTwoHopFloor()
    assert target.headers(workload)["Content-Type"] == "application/json"
    started = target.start(workload, tmp_path / "models", tmp_path, workload.expected(model))
    try:
        answer = httpx.post(f"{started.base_url}{workload.infer_path}",
                            content=target.request(workload)[1], timeout=10)
        assert answer.status_code == 200
        target.check(answer.content, workload.expected(model))
    finally:
        target.stop()


def test_the_nostore_target_serves_the_model_storing_no_answer_where_modelgate_stores_all(
        tmp_path: Path) -> None:
    """``modelgate-nostore`` measures what storing answers costs: it is only that if the one
    difference from ``modelgate`` is that nothing is stored (and the bench's repository is
    left as it was for the other servers)."""
    workload = mlp()
    model = workload.write(tmp_path / "models")
    expected = workload.expected(model)
    stored = {}
    for target in (TARGETS["modelgate"](), TARGETS["modelgate-nostore"]()):
        started = target.start(workload, tmp_path / "models", tmp_path, expected)
        try:
            for _ in range(20):
                answer = httpx.post(f"{started.base_url}{workload.infer_path}",
                                    content=workload.body_bytes(), timeout=10)
                assert answer.status_code == 200
            url = f"{started.base_url}/v2/models/{workload.name}/quality"
            deadline = time.monotonic() + 10
            while True:  # the gateway stores answers in the background, every 0.2 s
                figures = httpx.get(url, timeout=10).json()["stored"]
                if figures["answers_stored"] >= 20 or time.monotonic() > deadline or \
                        figures["sample_share"] == 0:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # a nostore gateway would have stored them by now
            stored[target.name] = httpx.get(url, timeout=10).json()["stored"]
        finally:
            target.stop()
    assert stored["modelgate"]["answers_stored"] >= 20  # and the start's probe calls
    assert stored["modelgate-nostore"]["sample_share"] == 0
    assert stored["modelgate-nostore"]["answers_stored"] == 0
    assert not (tmp_path / "models" / workload.name / "config.yaml").exists()
