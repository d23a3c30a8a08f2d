"""A deployment upgraded process by process still stores every kept answer once: a gateway of
this release whose worker is of the earlier one (it ignores the entry's ``store`` field and its
replies never say ``stored``) stores the answers itself.

The gateway is a real process; the worker is ``worker.main.run`` in a thread of this process
without its answer store, which is all the earlier release's worker did differently here (the
other half of the pair, a gateway of the earlier release, sends no ``store`` field: a worker of
this release then stores nothing, ``test_worker_stored_answers.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port
from modelgate.core.settings import WorkerSettings
from modelgate.core.store import feedback as feedback_store
from modelgate.core.store import pools
from modelgate.worker import main as worker_main
from tests.conftest import redis_url_for_db
from tests.procs import Processes, answers_200, wait_until

pytestmark = pytest.mark.integration

POOL = pools.pool_id("iris", "1")
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def gateway_with_an_earlier_worker(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
                                   monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    repo = tmp_path / "models"
    demo.write_model(demo.iris_classifier(), repo, "iris")
    url = redis_url_for_db(redis_url, 0)  # redis_client's database
    monkeypatch.setattr(worker_main, "AnswerStore", lambda *args: None)
    stop = threading.Event()
    worker = threading.Thread(target=worker_main.run, daemon=True, args=(
        WorkerSettings(models_dir=repo, model="iris", redis_url=url, block_ms=50), stop))
    worker.start()
    (tmp_path / "logs").mkdir()
    processes = Processes(tmp_path / "logs")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        processes.spawn("gateway", ["gateway", "--models", str(repo), "--redis-url", url,
                                    "--host", "127.0.0.1", "--port", str(port)])
        with httpx.Client(base_url=base, timeout=2.0) as client:
            wait_until(lambda: answers_200(client, "/v2/health/ready"), 60,
                       "the gateway to be ready", processes.check_alive, processes.logs)
        yield base
    finally:
        processes.stop(labels_first=("gateway",))
        stop.set()
        worker.join(timeout=10)


def test_the_gateway_stores_what_a_worker_of_the_earlier_release_did_not(
        gateway_with_an_earlier_worker: str, redis_client: redis.Redis) -> None:
    with httpx.Client(base_url=gateway_with_an_earlier_worker, timeout=10) as client:
        answer = client.post("/v2/models/iris/infer", json={
            "id": "upgrade-1", "inputs": [{"name": "input", "datatype": "FP32",
                                           "shape": [1, 4], "data": ROW}]})
        assert answer.status_code == 200, answer.text
        label = next(o for o in answer.json()["outputs"] if o["name"] == "output_label")

        wait_until(lambda: redis_client.hexists(feedback_store.answers("iris"), "upgrade-1"),
                   10, "the gateway to store the answer")
        labelled = client.post("/v2/models/iris/feedback",
                               json={"id": "upgrade-1", "label": label["data"][0]})

    assert labelled.status_code == 200, labelled.text
    assert (labelled.json()["matched"], labelled.json()["unknown"]) == (1, 0)
    assert redis_client.hget(feedback_store.counts("iris"), "stored") == b"1"
