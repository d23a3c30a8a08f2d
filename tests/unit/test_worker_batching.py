"""Dynamic batching: how entries are cut into ORT runs, and real ORT runs split per bundle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modelgate.core import wire
from modelgate.core.repository import Model, load_repository
from modelgate.worker.consumer import Entry, plan_runs
from modelgate.worker.runner import Outcome, Runner
from tests import models


def entry(n: int, request: wire.Request) -> Entry:
    return Entry(entry_id=f"{n}-0".encode(), ids=(str(n),), reply_to="mg:replies:test",
                 deadline_ms=2**62, enqueued_ms=n, bundle=wire.Bundle.single(str(n), request))


def fp32(rows: int, width: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


def req(**arrays: np.ndarray) -> wire.Request:
    return wire.Request({name: wire.tensor(array) for name, array in arrays.items()})


def run_ids(runs: list[list[Entry]]) -> list[list[str]]:
    return [[",".join(e.ids) for e in run] for run in runs]


def run_singles(runner: Runner, requests: list[wire.Request]) -> list[Outcome]:
    """``run_batch`` on one single-request bundle per request: the outcome each got."""
    bundles = [wire.Bundle.single(str(i), r) for i, r in enumerate(requests)]
    answered = runner.run_batch(bundles)
    assert len(answered) == len(bundles)
    for bundle, parts in zip(bundles, answered, strict=True):
        assert len(parts) == 1 and parts[0][0] is bundle
    return [outcome for parts in answered for _, outcome in parts]


# --------------------------------------------------------------------------- plan_runs


def test_rows_not_requests_count_toward_max_batch_size() -> None:
    entries = [entry(i, req(input=fp32(3))) for i in range(4)]  # 4 requests x 3 rows
    assert run_ids(list(plan_runs(entries, 8))) == [["0", "1"], ["2", "3"]]
    assert run_ids(list(plan_runs(entries, 6))) == [["0", "1"], ["2", "3"]]
    assert run_ids(list(plan_runs(entries, 5))) == [["0"], ["1"], ["2"], ["3"]]
    assert run_ids(list(plan_runs(entries, 64))) == [["0", "1", "2", "3"]]


def test_single_rows_fill_a_run_exactly() -> None:
    entries = [entry(i, req(input=fp32(1))) for i in range(10)]
    runs = list(plan_runs(entries, 4))
    assert [len(r) for r in runs] == [4, 4, 2]
    assert [e.ids[0] for r in runs for e in r] == [str(i) for i in range(10)]  # order kept


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    entries = [entry(0, req(input=fp32(1))), entry(1, req(input=fp32(1))),
               entry(2, req(input=fp32(5))), entry(3, req(input=fp32(1)))]
    assert run_ids(list(plan_runs(entries, 4))) == [["0", "1"], ["2"], ["3"]]


def test_incompatible_shapes_and_datatypes_run_separately() -> None:
    entries = [
        entry(0, req(input=fp32(1, width=4))),
        entry(1, req(input=fp32(1, width=5))),  # other trailing dims
        entry(2, req(input=fp32(2, width=4))),
        entry(3, req(input=fp32(1, width=4).astype(np.float64))),  # other datatype
        entry(4, req(input=fp32(1, width=5))),
        entry(5, req(other=fp32(1, width=4))),  # other input name
    ]
    runs = run_ids(list(plan_runs(entries, 64)))
    assert sorted(runs) == sorted([["0", "2"], ["1", "4"], ["3"], ["5"]])


def test_max_batch_size_zero_runs_every_request_alone() -> None:
    entries = [entry(i, req(input=fp32(1))) for i in range(3)]
    assert run_ids(list(plan_runs(entries, 0))) == [["0"], ["1"], ["2"]]
    assert list(plan_runs([], 8)) == []


def test_preferred_batch_sizes_cut_runs_at_the_largest_size_the_rows_fill() -> None:
    entries = [entry(i, req(input=fp32(1))) for i in range(23)]
    # 23 rows, max 16, preferred 4 and 8: 8 + 8 + 4 (preferred), then the 3 left over.
    runs = list(plan_runs(entries, 16, (4, 8)))
    assert [len(r) for r in runs] == [8, 8, 4, 3]
    assert [e.ids[0] for r in runs for e in r] == [str(i) for i in range(23)]
    # Without preferred sizes the same rows fill max_batch_size.
    assert [len(r) for r in plan_runs(entries, 16)] == [16, 7]
    # Multi-row requests never split: a run closes before a request would pass the size.
    big = [entry(i, req(input=fp32(3))) for i in range(4)]  # 12 rows, preferred 8
    assert [sum(len(e.bundle.request.inputs["input"].data) for e in r)  # type: ignore[union-attr]
            for r in plan_runs(big, 16, (8,))] == [6, 6]


def test_preferred_batch_sizes_are_validated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from modelgate.cli import demo
    from modelgate.core.repository import RepositoryError, load_model

    demo.write_model(demo.mlp_model(), tmp_path, "mlp")
    config = tmp_path / "mlp" / "config.yaml"
    config.write_text("max_batch_size: 8\npreferred_batch_sizes: [4, 16]\n")
    with pytest.raises(RepositoryError, match=r"preferred_batch_sizes \[16\] exceed"):
        load_model(tmp_path / "mlp")
    (tmp_path / "mlp" / "config.yaml").write_text("preferred_batch_sizes: 4\n")
    with pytest.raises(RepositoryError, match="list of positive integers"):
        load_model(tmp_path / "mlp")
    (tmp_path / "mlp" / "config.yaml").write_text("preferred_batch_sizes: [8, 4]\n")
    assert load_model(tmp_path / "mlp").default.config.preferred_batch_sizes == (4, 8)


# --------------------------------------------------------------------------- Runner


@pytest.fixture(scope="module")
def runners(unit_repository: dict[str, Model]) -> Callable[[str], Runner]:
    made: dict[str, Runner] = {}

    def get(name: str) -> Runner:
        if name not in made:
            made[name] = Runner(unit_repository[name].default, intra_op_threads=1)
            made[name].warm_up()
        return made[name]

    return get


def assert_ok_outcomes(outcomes: list[Any], rows: int) -> None:
    assert [o.status for o in outcomes] == ["ok"] * len(outcomes)
    assert [o.leader for o in outcomes] == [True] + [False] * (len(outcomes) - 1)
    assert {o.batch_size for o in outcomes} == {rows}


def assert_as_if_alone(runner: Runner, ort_run: Callable[..., list[Any]], x: np.ndarray,
                      got: wire.Tensor) -> None:
    """``got`` (the mlp's probabilities for ``x`` out of a batch) equals running ``x`` alone,
    through the runner and through onnxruntime directly."""
    assert got.shape == (x.shape[0], 3)
    alone = run_singles(runner, [req(input=x)])[0].outputs["probabilities"].data
    np.testing.assert_allclose(got.data, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.data, ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_batched_outputs_equal_running_each_request_alone(
        runners: Callable[[str], Runner], ort_run: Callable[..., list[Any]]) -> None:
    runner = runners("mlp")
    inputs = [fp32(rows, seed=rows) for rows in (1, 3, 2, 1, 5)]
    requests = [req(input=x) for x in inputs]

    outcomes = run_singles(runner, requests)

    assert_ok_outcomes(outcomes, rows=12)
    for x, outcome in zip(inputs, outcomes, strict=True):
        got = outcome.outputs["probabilities"]
        assert got.datatype == "FP32"
        assert_as_if_alone(runner, ort_run, x, got)


def test_batched_multi_input_model_and_output_selection(
        runners: Callable[[str], Runner]) -> None:
    a = [fp32(r, width=3, seed=r) for r in (2, 1, 3)]
    b = [fp32(r, width=3, seed=10 + r) for r in (2, 1, 3)]
    requests = [
        wire.Request({"a": wire.tensor(a[0]), "b": wire.tensor(b[0])}),
        wire.Request({"a": wire.tensor(a[1]), "b": wire.tensor(b[1])}, outputs=("diff",)),
        wire.Request({"a": wire.tensor(a[2]), "b": wire.tensor(b[2])}, outputs=("sum",)),
    ]
    outcomes = run_singles(runners("add2"), requests)
    assert_ok_outcomes(outcomes, rows=6)
    assert set(outcomes[0].outputs) == {"sum", "diff"}
    assert set(outcomes[1].outputs) == {"diff"}
    assert set(outcomes[2].outputs) == {"sum"}
    np.testing.assert_allclose(outcomes[0].outputs["sum"].data, a[0] + b[0], rtol=1e-6)
    np.testing.assert_allclose(outcomes[0].outputs["diff"].data, a[0] - b[0], rtol=1e-6)
    np.testing.assert_allclose(outcomes[1].outputs["diff"].data, a[1] - b[1], rtol=1e-6)
    np.testing.assert_allclose(outcomes[2].outputs["sum"].data, a[2] + b[2], rtol=1e-6)


def test_batched_int64_and_bytes(runners: Callable[[str], Runner]) -> None:
    ids = [np.array([[1, 2, 3]], np.int64), np.array([[-5, 0, 2**40], [7, 8, 9]], np.int64)]
    outcomes = run_singles(runners("int64"), [req(ids=x) for x in ids])
    assert_ok_outcomes(outcomes, rows=3)
    for x, outcome in zip(ids, outcomes, strict=True):
        assert outcome.outputs["next"].datatype == "INT64"
        np.testing.assert_array_equal(outcome.outputs["next"].data, x + 1)

    texts = [np.array([b"a", "\u00fc".encode()], dtype=object), np.array([b"bc"], dtype=object)]
    outcomes = run_singles(runners("bytes"), [req(text=t) for t in texts])
    assert_ok_outcomes(outcomes, rows=3)
    decoded = [wire.decode_reply(wire.encode_reply(wire.Reply(("1",), "ok", o.outputs)))
               for o in outcomes]
    assert [list(r.outputs["same"].data) for r in decoded] == [[b"a", "\u00fc".encode()],
                                                              [b"bc"]]


def test_zipmap_outputs_become_fp32_tensors_split_per_request(
        runners: Callable[[str], Runner], ort_run: Callable[..., list[Any]]) -> None:
    """The runtime's list of {class: probability} maps becomes FP32 [N, C] in the ZipMap
    node's class order, so it travels back as raw tensor bytes."""
    flowers = [np.array([[5.1, 3.5, 1.4, 0.2]], np.float32),
               np.array([[6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)]
    outcomes = run_singles(runners("iris"), [req(input=x) for x in flowers])
    assert_ok_outcomes(outcomes, rows=3)
    for x, outcome in zip(flowers, outcomes, strict=True):
        labels, probabilities = ort_run("iris", {"input": x})
        np.testing.assert_array_equal(outcome.outputs["output_label"].data, labels)
        got = outcome.outputs["output_probability"]
        assert (got.datatype, got.shape) == ("FP32", (len(x), 3))
        want = np.array([[row[c] for c in (0, 1, 2)] for row in probabilities], np.float32)
        np.testing.assert_allclose(got.data, want, rtol=1e-6)
        wire.decode_reply(wire.encode_reply(wire.Reply(("1",), "ok", outcome.outputs)))


def test_a_bad_request_does_not_fail_its_neighbours(runners: Callable[[str], Runner]) -> None:
    """Index 7 is out of the 5-row table: the batch fails in ORT, so each request reruns."""
    indices = [np.array([0, 1], np.int64), np.array([7], np.int64), np.array([4], np.int64)]
    outcomes = run_singles(runners("gather"), [req(idx=i) for i in indices])

    assert [o.status for o in outcomes] == ["ok", wire.ReplyStatus.BAD_INPUT, "ok"]
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(outcomes[0].outputs["rows"].data, table[[0, 1]])
    np.testing.assert_array_equal(outcomes[2].outputs["rows"].data, table[[4]])
    assert outcomes[1].outputs == {}
    assert "model rejected the input" in outcomes[1].error
    # Each rerun is its own ORT run, so each outcome leads its run.
    assert all(o.leader for o in outcomes)


def test_a_request_of_another_shape_in_a_batch_is_isolated(
        runners: Callable[[str], Runner]) -> None:
    good = fp32(2)
    outcomes = run_singles(runners("mlp"), [req(input=good), req(input=fp32(1, width=5)),
                                            req(input=good)])
    assert [o.status for o in outcomes] == ["ok", wire.ReplyStatus.BAD_INPUT, "ok"]
    np.testing.assert_allclose(outcomes[0].outputs["probabilities"].data,
                               outcomes[2].outputs["probabilities"].data)
    assert outcomes[1].error


def test_unbatchable_model_runs_one_request(runners: Callable[[str], Runner],
                                            ort_run: Callable[..., list[Any]]) -> None:
    state = np.random.default_rng(3).standard_normal((2, 5, 4)).astype(np.float32)
    [outcome] = run_singles(runners("state"), [req(state=state)])
    assert outcome.status == "ok" and outcome.leader
    np.testing.assert_allclose(outcome.outputs["next_state"].data, 2 * state)
    np.testing.assert_allclose(outcome.outputs["next_state"].data,
                               ort_run("state", {"state": state})[0])

    x = fp32(3, width=2)
    scale = np.array(0.5, np.float32)
    [outcome] = run_singles(runners("scalar"), [req(x=x, scale=scale)])
    np.testing.assert_allclose(outcome.outputs["y"].data, x * 0.5)



# --------------------------------------------------------------------------- bundles


def test_a_bundle_counts_all_its_rows_and_is_never_cut() -> None:
    requests = [req(input=fp32(rows)) for rows in (2, 1, 3)]  # 6 rows in one entry
    bundled = Entry(entry_id=b"9-0", ids=("a", "b", "c"), reply_to="mg:replies:test",
                    deadline_ms=2**62, enqueued_ms=9,
                    bundle=wire.combine(["a", "b", "c"], requests))
    entries = [entry(0, req(input=fp32(1))), bundled, entry(1, req(input=fp32(2)))]
    assert run_ids(list(plan_runs(entries, 8))) == [["0", "a,b,c"], ["1"]]
    assert run_ids(list(plan_runs(entries, 6))) == [["0"], ["a,b,c"], ["1"]]
    assert run_ids(list(plan_runs(entries, 4))) == [["0"], ["a,b,c"], ["1"]]  # 6 rows alone
    assert run_ids(list(plan_runs(entries, 0))) == [["0"], ["a,b,c"], ["1"]]


def test_a_bundle_answers_as_one_with_every_requests_rows(
        runners: Callable[[str], Runner], ort_run: Callable[..., list[Any]]) -> None:
    runner = runners("mlp")
    inputs = [fp32(rows, seed=10 + rows) for rows in (2, 1, 3)]
    bundle = wire.combine(["a", "b", "c"], [req(input=x) for x in inputs])
    other = fp32(2, seed=99)
    single = wire.Bundle.single("d", req(input=other))

    answered = runner.run_batch([bundle, single])

    assert [len(parts) for parts in answered] == [1, 1]
    assert answered[0][0][0] is bundle and answered[1][0][0] is single
    outcomes = [answered[0][0][1], answered[1][0][1]]
    assert_ok_outcomes(outcomes, rows=8)  # one ORT run for both entries
    assert outcomes[0].outputs["probabilities"].shape == (6, 3)
    parts = wire.unbundle(wire.Reply(bundle.ids, "ok", outcomes[0].outputs, rows=bundle.rows))
    assert [p.ids for p in parts] == [("a",), ("b",), ("c",)]
    for x, part in zip([*inputs, other], [*parts, wire.Reply(("d",), "ok", outcomes[1].outputs)],
                       strict=True):
        assert_as_if_alone(runner, ort_run, x, part.outputs["probabilities"])


def test_a_request_the_model_rejects_is_cut_out_of_its_bundle(
        runners: Callable[[str], Runner]) -> None:
    """Index 7 is out of the 5-row table: the run fails, so every request of every bundle
    reruns alone and only the bad one fails."""
    indices = [np.array([0, 1], np.int64), np.array([7], np.int64), np.array([4], np.int64)]
    bundle = wire.combine(["a", "b", "c"], [req(idx=i) for i in indices])
    single = wire.Bundle.single("d", req(idx=np.array([2, 3], np.int64)))

    answered = runners("gather").run_batch([bundle, single])

    assert [[(b.ids, b.rows) for b, _ in parts] for parts in answered] == [
        [(("a",), (2,)), (("b",), (1,)), (("c",), (1,))], [(("d",), (2,))]]
    outcomes = [outcome for parts in answered for _, outcome in parts]
    assert [o.status for o in outcomes] == ["ok", wire.ReplyStatus.BAD_INPUT, "ok", "ok"]
    assert "model rejected the input" in outcomes[1].error and outcomes[1].outputs == {}
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    for i, outcome in [(0, outcomes[0]), (2, outcomes[2])]:
        np.testing.assert_array_equal(outcome.outputs["rows"].data, table[indices[i]])
    np.testing.assert_array_equal(outcomes[3].outputs["rows"].data, table[[2, 3]])
    assert all(o.leader for o in outcomes)  # each rerun is an ORT run of its own
    assert [o.batch_size for o in outcomes] == [2, 1, 1, 2]


@pytest.fixture(scope="module")
def total_runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    root = models.write_repository(tmp_path_factory.mktemp("total-model"),
                                   {"total": models.total_model()})
    version = load_repository(root)["total"].default
    assert version.batchable  # so a gateway does bundle its requests
    return Runner(version, intra_op_threads=1)


def test_outputs_without_a_row_per_row_fall_back_to_one_run_per_request(
        total_runner: Runner) -> None:
    inputs = [fp32(rows, width=3, seed=rows) for rows in (2, 1, 3)]
    bundle = wire.combine(["a", "b", "c"], [req(x=x) for x in inputs])

    [parts] = total_runner.run_batch([bundle])

    assert [(b.ids, b.rows) for b, _ in parts] == [(("a",), (2,)), (("b",), (1,)), (("c",), (3,))]
    for x, (_, outcome) in zip(inputs, parts, strict=True):
        assert outcome.status == "ok" and outcome.leader and outcome.batch_size == len(x)
        assert outcome.outputs["total"].shape == ()
        np.testing.assert_allclose(outcome.outputs["total"].data, x.sum(), rtol=1e-5)

    # Two single-request bundles in one batch fall back the same way; one alone runs whole.
    answered = total_runner.run_batch([wire.Bundle.single(str(i), req(x=x))
                                       for i, x in enumerate(inputs[:2])])
    assert [len(p) for p in answered] == [1, 1]
    for x, [(_, outcome)] in zip(inputs[:2], answered, strict=True):
        np.testing.assert_allclose(outcome.outputs["total"].data, x.sum(), rtol=1e-5)
    [outcome] = run_singles(total_runner, [req(x=inputs[2])])
    assert outcome.status == "ok" and outcome.batch_size == 3
    np.testing.assert_allclose(outcome.outputs["total"].data, inputs[2].sum(), rtol=1e-5)
