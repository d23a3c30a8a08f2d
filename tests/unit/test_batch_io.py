"""Batch jobs' files: which columns feed which input (one input, several), per-row validation,
the output records and their merge, and paths confined to the jobs folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pytest

from modelgate.core.batch import output
from modelgate.core.batch.paths import STAGING, confine
from modelgate.core.batch.readers import InputError, InputFile
from modelgate.core.errors import Forbidden, InvalidInput
from modelgate.core.repository import Model
from modelgate.core.store.jobs import Piece


def _chunks(source: Path | bytes, fmt: str, model: Model, id_column: str | None = None,
            rows: int = 100) -> list:
    return list(InputFile(source, fmt, id_column, model.default).chunks(rows))


def test_csv_of_a_multi_input_model_by_indexed_columns_and_json_lists(
        unit_repository: dict[str, Model]) -> None:
    # add2 takes a [-1, 3] and b [-1, 3]: a as a[0..2] columns, b as one JSON-list column.
    csv = ('id,a[0],a[1],a[2],b\n'
           '7,1,2,3,"[10, 20, 30]"\n'
           '8,1,2,x,"[1, 1, 1]"\n'
           '9,4,5,6,"[1, 1]"\n')
    [chunk] = _chunks(csv.encode(), "csv", unit_repository["add2"], "id")
    assert chunk.ids == [7, 8, 9]
    assert chunk.valid == [0]
    assert "'x' is not a number" in chunk.errors[1]
    assert "takes 3 values per row" in chunk.errors[2]
    np.testing.assert_array_equal(chunk.inputs["a"], np.array([[1, 2, 3]], np.float32))
    np.testing.assert_array_equal(chunk.inputs["b"], np.array([[10, 20, 30]], np.float32))


def test_a_file_that_cannot_feed_the_model_is_refused_whole(
        unit_repository: dict[str, Model]) -> None:
    with pytest.raises(InputError, match="no column for input 'b'"):
        InputFile(b"a[0],a[1],a[2]\n1,2,3\n", "csv", None, unit_repository["add2"].default)
    with pytest.raises(InputError, match=r"a\[0\] to a\[2\] without gaps"):
        InputFile(b"a[0],a[2],a[3],b\n1,2,3,4\n", "csv", None, unit_repository["add2"].default)
    with pytest.raises(InputError, match="no id column 'key'"):
        InputFile(b"a,b\n1,2\n", "csv", "key", unit_repository["add2"].default)


def test_npz_by_input_name_and_npy_for_one_input(unit_repository: dict[str, Model]) -> None:
    buffer = io.BytesIO()
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(buffer, a=a, b=a * 2, ids=np.array([5, 6, 7, 8]))
    chunks = _chunks(buffer.getvalue(), "npz", unit_repository["add2"], "ids", rows=3)
    assert [c.ids for c in chunks] == [[5, 6, 7], [8]]
    np.testing.assert_array_equal(chunks[1].inputs["b"], a[3:] * 2)
    missing = io.BytesIO()
    np.savez(missing, a=a)
    with pytest.raises(InputError, match=r"no array for input\(s\) \['b'\]"):
        InputFile(missing.getvalue(), "npz", None, unit_repository["add2"].default)
    single = io.BytesIO()
    np.save(single, np.ones((2, 4), np.float32))
    [chunk] = _chunks(single.getvalue(), "npy", unit_repository["mlp"])
    assert chunk.ids == [0, 1] and chunk.inputs["input"].shape == (2, 4)
    with pytest.raises(InputError, match="rows of shape"):
        bad = io.BytesIO()
        np.save(bad, np.ones((2, 5), np.float32))
        InputFile(bad.getvalue(), "npy", None, unit_repository["mlp"].default)


def test_jsonl_lines_objects_or_bare_arrays(unit_repository: dict[str, Model]) -> None:
    lines = b'{"input": [1, 2, 3, 4]}\n[5, 6, 7, 8]\nnope\n{"input": [1, null, 3, 4]}\n'
    [chunk] = _chunks(lines, "jsonl", unit_repository["mlp"])
    assert chunk.valid == [0, 1]
    assert "not JSON" in chunk.errors[2]
    assert "input 'input'" in chunk.errors[3]


def test_retry_chunks_only_the_failed_positions(unit_repository: dict[str, Model]) -> None:
    csv = "x0,x1,x2,x3\n" + "".join(f"{i},1,1,1\n" for i in range(10))
    source = InputFile(csv.encode(), "csv", None, unit_repository["mlp"].default)
    chunks = list(source.chunks(2, only={3, 4, 8}))
    assert [c.positions for c in chunks] == [[3, 4], [8]]


def test_piece_lines_and_the_retry_merge() -> None:
    piece = Piece(0, [10, 11, 12], {1: "bad row"}, {"y": [[0.5], [0.25]]})
    data, done, failed = output.piece_lines(piece, "2")
    records = [orjson.loads(line) for line in data.splitlines()]
    assert (done, failed) == (2, 1)
    assert records == [{"row": 10, "model_version": "2", "outputs": {"y": [0.5]}},
                       {"row": 11, "model_version": "2", "error": "bad row"},
                       {"row": 12, "model_version": "2", "outputs": {"y": [0.25]}}]
    lines = data.splitlines(keepends=True)
    assert output.failed_positions(lines) == [1]
    fixed = [b'{"row":11,"model_version":"2","outputs":{"y":[1.0]}}\n']
    merged = list(output.merged(lines, fixed, [1]))
    assert merged[0] == lines[0] and merged[1] == fixed[0] and merged[2] == lines[2]


def test_paths_stay_inside_the_jobs_folder(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "in").mkdir(parents=True)
    (jobs / "in" / "x.csv").write_text("a\n")
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n")
    (jobs / "link.csv").symlink_to(outside)
    assert confine(jobs, "in/x.csv", "input") == (jobs / "in" / "x.csv").resolve()
    assert confine(jobs, str(jobs / "in" / "x.csv"), "input") == (jobs / "in" / "x.csv")
    for given in (str(outside), "../secret.csv", "in/../../secret.csv", "link.csv"):
        with pytest.raises(Forbidden, match="outside the jobs folder"):
            confine(jobs, given, "input")
    for given in (".", f"{STAGING}/x.jsonl"):
        with pytest.raises(Forbidden, match="not the folder itself"):
            confine(jobs, given, "output")
    with pytest.raises(Forbidden, match="no jobs folder"):
        confine(None, "in/x.csv", "input")
    with pytest.raises(InvalidInput):
        confine(jobs, "", "input")
