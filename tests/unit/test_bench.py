"""``make bench``'s judging and measuring pieces that need no server: the goal verdicts, the
ONNX Runtime sweep, the batch-size table and the peer's request and answer format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from bench import floor
from bench.cpu import Usage
from bench.goals import goal_lines
from bench.load import LoadPoint, LoadResult
from bench.peer import BentoMLTarget
from bench.peer_venv import PeerVenv
from bench.report import markdown_cpu_table, markdown_curve, markdown_rounds
from bench.results import Measurement, Section, combine_rounds
from bench.run import points_of
from bench.targets import TARGETS
from bench.workloads import WrongAnswer, binary_body, heavy, mlp

HEAVY = Section("heavy", "compute-bound", workers=2)
MLP = Section("mlp", "tiny", workers=1)


def point(workload: str, target: str, c: int, rows_s: float, p50_ms: float = 1.0,
          p99_ms: float = 2.0, errors: int = 0) -> Measurement:
    result = LoadResult(requests=int(rows_s * 10), duration_s=10.0, p50_ms=p50_ms,
                        p99_ms=p99_ms, non_2xx=errors, socket_errors=0)
    return Measurement(workload, target, c, result)


def sweep(workload: str, threads: int, rows_s: dict[int, float]) -> floor.Sweep:
    return floor.Sweep(workload, threads, tuple(
        floor.BatchPoint(batch, runs=int(rows / batch), duration_s=1.0, p50_ms=1.0, p99_ms=1.0)
        for batch, rows in rows_s.items()))


def line(lines: list[str], start: str) -> str:
    return next(text for text in lines if text.startswith(start))


def test_heavy_goals_are_judged_against_naive_floor_and_peer() -> None:
    measurements = [point("heavy", "modelgate", c, 500, p99_ms=80) for c in (32, 128)]
    measurements += [point("heavy", "naive", c, 270) for c in (32, 128)]
    measurements += [point("heavy", "bentoml", c, 330, p99_ms=240) for c in (32, 128)]
    floors = [sweep("heavy", 1, {1: 290, 2: 296}), sweep("heavy", 2, {1: 400, 16: 560})]

    lines = goal_lines(measurements, floors, HEAVY)

    assert "1.85x (goal >= 1.6x: MET)" in line(lines, "modelgate/naive throughput at c=32")
    assert "500 / 560 rows/s = 0.89x (goal >= 0.85x: MET)" in line(
        lines, "modelgate/ort-floor throughput at c=128")
    assert "1.52x" in line(lines, "modelgate/bentoml at c=32")
    assert "MISSED" in line(lines, "modelgate/bentoml at c=32")
    assert "0 (goal 0: MET)" in line(lines, "errors from modelgate")
    assert "592 rows/s (2 x 296, batch 2)" in line(lines, "info: 2 independent")
    assert "no server can be 10x the peer" in line(lines, "info: the ort-floor is only")


def test_errors_of_modelgate_miss_a_goal_and_errors_of_the_other_server_are_named() -> None:
    measurements = [point("heavy", "modelgate", 32, 500, errors=3),
                    point("heavy", "naive", 32, 270),
                    point("heavy", "modelgate", 128, 500),
                    point("heavy", "naive", 128, 260, errors=22)]

    lines = goal_lines(measurements, [], HEAVY)

    assert "MISSED (modelgate had 3 errors)" in line(lines, "modelgate/naive throughput at c=32")
    assert "MET; naive had 22 errors" in line(lines, "modelgate/naive throughput at c=128")
    assert "3 (goal 0: MISSED)" in line(lines, "errors from modelgate")
    assert line(lines, "modelgate/ort-floor throughput at c=32").endswith("not measured")


@pytest.mark.parametrize(("modelgate_p50_ms", "verdict"), [(0.49, "MET"), (0.61, "MISSED")])
def test_mlp_latency_goal_allows_half_a_millisecond(modelgate_p50_ms: float,
                                                    verdict: str) -> None:
    measurements = [point("mlp", "modelgate", 1, 2000, p50_ms=modelgate_p50_ms),
                    point("mlp", "naive", 1, 9600, p50_ms=0.10),
                    point("mlp", "modelgate", 32, 9500), point("mlp", "naive", 32, 11000),
                    point("mlp", "modelgate-gw2", 32, 11400)]

    lines = goal_lines(measurements, [], MLP)

    assert f"(goal <= +0.5 ms: {verdict})" in line(lines, "p50 at c=1")
    assert "0.86x (goal >= 0.8x: MET)" in line(lines, "modelgate/naive throughput at c=32")
    assert "1.20x throughput" in line(lines, "info: modelgate-gw2/modelgate at c=32")


def test_the_two_hop_floor_at_c1_says_how_far_modelgate_is_from_it() -> None:
    measurements = [point("mlp", "modelgate", 1, 1400, p50_ms=0.73),
                    point("mlp", "naive", 1, 5000, p50_ms=0.20),
                    point("mlp", "two-hop-floor", 1, 2500, p50_ms=0.40)]

    lines = goal_lines(measurements, [], MLP)

    assert "= +0.53 ms (goal <= +0.5 ms: MISSED)" in line(lines, "p50 at c=1")
    assert "p50 0.40 ms = naive +0.20 ms; modelgate is +0.33 ms from it" in line(
        lines, "info: at c=1 the two-hop-floor")


@pytest.mark.parametrize(("modelgate_p50_ms", "verdict"), [(0.85, "MET"), (0.95, "MISSED")])
def test_where_the_hops_alone_cost_more_than_half_a_millisecond_the_floor_judges(
        modelgate_p50_ms: float, verdict: str) -> None:
    measurements = [point("mlp", "modelgate", 1, 1100, p50_ms=modelgate_p50_ms),
                    point("mlp", "naive", 1, 5000, p50_ms=0.10),
                    point("mlp", "two-hop-floor", 1, 1400, p50_ms=0.75)]

    verdict_line = line(goal_lines(measurements, [], MLP), "p50 at c=1")

    assert "the two-hop-floor itself is +0.65 ms" in verdict_line
    assert f"(goal <= +0.15 ms: {verdict})" in verdict_line


def test_a_target_of_some_load_points_runs_only_those() -> None:
    points = [LoadPoint(c, 6, 2) for c in (1, 32, 128)]

    assert [p.concurrency for p in points_of(TARGETS["two-hop-floor"](), points)] == [1]
    assert [p.concurrency for p in points_of(TARGETS["naive"](), points)] == [1, 32, 128]


def test_ort_sweep_times_every_batch_size_and_keeps_the_best(tmp_path: Path) -> None:
    workload = mlp()
    model = workload.write(tmp_path)

    result = floor.sweep("mlp", model, workload.feeds, threads=1, duration_s=0.01,
                         batch_sizes=(1, 4))

    assert [p.batch for p in result.points] == [1, 4]
    assert all(p.runs >= floor.MIN_RUNS and p.rows_s > 0 for p in result.points)
    assert result.best.rows_s == max(p.rows_s for p in result.points)


def test_batch_size_table_has_a_column_per_sweep_and_marks_the_best() -> None:
    table = markdown_curve([sweep("heavy", 1, {1: 290, 2: 296}),
                            sweep("heavy", 2, {1: 400, 2: 500})])

    assert table.splitlines()[0] == ("| batch | heavy, 1 thread: rows/s | heavy, 1 thread: ms "
                                     "per run | heavy, 2 threads: rows/s |")
    assert table.splitlines()[3] == "| 2 | **296** | 1.000 | **500** |"


def test_workload_feeds_repeat_the_request_row() -> None:
    feeds = heavy().feeds(3)["input"]

    assert feeds.shape == (3, 64) and feeds.dtype == np.float32
    assert np.array_equal(feeds[2], feeds[0])


def test_peer_request_is_the_v2_rows_nested_and_its_answer_is_checked(tmp_path: Path) -> None:
    target = BentoMLTarget(PeerVenv(tmp_path / "no-venv"))  # not built: nothing is run
    expected = {"probabilities": np.array([[0.2, 0.3, 0.5]], dtype=np.float32)}

    path, body = target.request(mlp())

    assert (path, orjson.loads(body)) == ("/infer", {"input": [[0.1, 0.2, 0.3, 0.4]]})
    target.check(b"[[0.2, 0.3, 0.5]]", expected)
    with pytest.raises(WrongAnswer):
        target.check(b"[[0.5, 0.3, 0.2]]", expected)
    with pytest.raises(WrongAnswer):
        target.check(b'{"outputs": []}', expected)


def test_rounds_combine_into_mean_throughput_median_latency_and_all_errors() -> None:
    def run(target: str, round_: int, requests: int, p50_ms: float, errors: int = 0) -> Measurement:
        result = LoadResult(requests=requests, duration_s=10.0, p50_ms=p50_ms,
                            p99_ms=p50_ms * 2, non_2xx=errors, socket_errors=0)
        return Measurement("mlp", target, 1, result, round=round_)

    raw = [run("modelgate", 0, 10_000, 0.9), run("naive", 0, 40_000, 0.3),
           run("modelgate", 1, 14_000, 0.6, errors=2), run("naive", 1, 50_000, 0.2),
           run("modelgate", 2, 12_000, 0.7), run("naive", 2, 45_000, 0.25)]
    combined = {m.target: m for m in combine_rounds(raw)}
    assert set(combined) == {"modelgate", "naive"}
    ours = combined["modelgate"]
    assert ours.result.rps == pytest.approx(1_200.0)  # 36,000 answers over 30 s
    assert ours.result.p50_ms == pytest.approx(0.7)  # the median round, not the mean
    assert ours.result.p99_ms == pytest.approx(1.4)
    assert ours.result.errors == 2
    assert combined["naive"].result.p50_ms == pytest.approx(0.25)
    page = markdown_rounds(raw, "mlp")
    assert "round 3" in page
    assert "| modelgate | 1 | 1,000 / 0.90 | 1,400 / 0.60 | 1,200 / 0.70 |" in page
    assert markdown_rounds(raw[:2], "mlp") == ""  # one round: nothing to spread


def test_cnn_goals_judge_json_against_naive_and_binary_against_the_process_floor() -> None:
    measurements = [point("cnn", "modelgate", 16, 420), point("cnn", "naive", 16, 250),
                    point("cnn", "modelgate-binary", 16, 640)]
    floors = [sweep("cnn", 1, {1: 390, 4: 400}),
              floor.Sweep("cnn", 1, (floor.BatchPoint(4, 175, 1.0, 5.0, 9.0),), processes=2)]

    lines = goal_lines(measurements, floors, Section("cnn", "large tensors", workers=2))

    assert "1.68x (goal >= 1.6x: MET)" in line(lines, "modelgate/naive throughput at c=16")
    assert "640 / 700 rows/s = 0.91x (goal >= 0.85x: MET)" in line(
        lines, "modelgate-binary/ort-floor throughput at c=16")
    assert "2 processes x 1 thread" in line(lines, "info: 2 independent")


def test_the_load_generators_own_cpu_bounds_what_any_server_could_do() -> None:
    result = LoadResult(requests=6_400, duration_s=10.0, p50_ms=10.0, p99_ms=20.0, non_2xx=0,
                        socket_errors=0)
    # 640 rows/s while the load generator kept 0.128 CPUs busy: 200 us of CPU per call.
    usage = Usage(1.8, 0.128, 0.0, (("gateway", 0.4), ("workers", 1.4)))
    measurements = [Measurement("cnn", "modelgate-binary", 16, result, usage)]
    # The floor: 1,000 rows/s on 2 CPUs, 2 ms of CPU per row.
    floors = [floor.Sweep("cnn", 1, (floor.BatchPoint(4, 250, 1.0, 5.0, 9.0),), processes=2)]

    lines = goal_lines(measurements, floors, Section("cnn", "large tensors", workers=2))

    # 2 CPUs / (2 ms + 0.2 ms) = 909 rows/s: 0.91x the floor at best; 640 is 0.70x of that.
    assert line(lines, "info: at c=16 the load generator") == (
        "info: at c=16 the load generator itself used 200 us of CPU per call (0.13 CPUs) on "
        "the same 2 CPUs as the server: a server costing nothing beyond ONNX Runtime could do "
        "at most 909 rows/s here, 0.91x the ort-floor; modelgate-binary did 0.70x that")


@pytest.mark.parametrize(("hops_rows_s", "reach"), [
    (650, "0.65x the ort-floor: so no such design reached the goal here"),
    (900, "0.90x the ort-floor: within the goal")])
def test_the_two_hop_floor_on_the_cnn_says_what_any_design_through_redis_reaches(
        hops_rows_s: float, reach: str) -> None:
    measurements = [point("cnn", "modelgate-binary", 16, 585),
                    point("cnn", "two-hop-floor-loaded", 16, hops_rows_s)]
    floors = [floor.Sweep("cnn", 1, (floor.BatchPoint(4, 250, 1.0, 5.0, 9.0),), processes=2)]

    lines = goal_lines(measurements, floors, Section("cnn", "large tensors", workers=2))

    found = line(lines, "info: at c=16 the two-hop-floor-loaded")
    assert f"did {hops_rows_s:,} rows/s with 0 errors, {reach}" in found
    assert found.endswith(f"modelgate-binary did {585 / hops_rows_s:.2f}x of it")
    # The goal itself is still judged against the ORT floor.
    assert "0.58x (goal >= 0.85x: MISSED)" in line(
        lines, "modelgate-binary/ort-floor throughput at c=16")
    assert [p.concurrency for p in points_of(
        TARGETS["two-hop-floor-loaded"](), [LoadPoint(c, 6, 2) for c in (1, 16, 64)])] == [16, 64]


def test_the_loaded_two_hop_floor_on_an_mlp_says_what_modelgate_did_of_it() -> None:
    measurements = [point("mlp", "modelgate", 32, 9000), point("mlp", "naive", 32, 15000),
                    point("mlp", "two-hop-floor-loaded", 32, 36000)]

    lines = goal_lines(measurements, [], MLP)

    assert line(lines, "info: at c=32 the two-hop-floor-loaded").endswith(
        "did 36,000 rows/s with 0 errors, 2.40x the naive server; modelgate did 0.25x of it")


def test_binary_body_is_the_json_header_then_the_raw_tensor_bytes() -> None:
    body, header_length = binary_body(heavy().body)

    header = orjson.loads(body[:header_length])
    raw = np.frombuffer(body[header_length:], dtype="<f4")
    assert "data" not in header["inputs"][0]
    assert header["inputs"][0]["parameters"] == {"binary_data_size": raw.nbytes}
    assert np.allclose(raw, heavy().body["inputs"][0]["data"])


def test_cpu_table_gives_each_process_kind_its_cpu_per_request() -> None:
    result = LoadResult(requests=20_000, duration_s=10.0, p50_ms=1.0, p99_ms=2.0, non_2xx=0,
                        socket_errors=0)
    usage = Usage(1.0, 0.1, 0.0, (("gateway", 0.6), ("redis", 0.1), ("workers", 0.3)))

    table = markdown_cpu_table([Measurement("mlp64", "modelgate", 32, result, usage)], "mlp64")

    assert "| modelgate | 32 | 1.00 | 500 | gateway 300, redis 50, workers 150 |" in table



def test_the_counted_gateway_listens_on_its_own_port_without_the_supervisors_socket() -> None:
    from bench.instructions import listening_on

    given = ["python", "-m", "modelgate", "gateway", "--models", "/m", "--port", "8000",
             "--fd", "7", "--grpc-port", "0"]
    assert listening_on(given, 9123) == ["python", "-m", "modelgate", "gateway", "--models",
                                         "/m", "--port", "9123", "--grpc-port", "0"]
    assert listening_on(["python", "-m", "modelgate", "gateway", "--fd", "3"], 9123) == [
        "python", "-m", "modelgate", "gateway", "--port", "9123"]
