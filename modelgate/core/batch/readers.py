"""Reading a job's input into chunks of model inputs, row by row validated.

Formats: ``csv``, ``jsonl``, ``parquet`` (pyarrow), ``npy``, ``npz``. Tabular formats (CSV,
Parquet, JSONL objects) feed inputs by column (``modelgate.core.batch.rows``); JSONL lines may
also be bare arrays (one input). NPY holds one array ``[rows, ...]`` for a model of one input;
NPZ one array per input, named as the input (and the ids, if ``id_column`` names an array). A
row's id is its ``id_column`` value, else its 0-based position.

A row that does not fit (a value that is not a number, a missing column, a wrong count of
values, a line that is not JSON) is not a reason to fail the job: it becomes that row's error
and its neighbours run. A file whose *columns* cannot feed the model (no column for an input)
is refused as a whole (:class:`InputError`), at submission.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from modelgate.core.batch.output import PARQUET_MISSING
from modelgate.core.batch.rows import (
    Chunk,
    Column,
    InputError,
    RowMapper,
    build_chunk,
    column_plan,
    feature_shape,
    id_of,
    numpy_dtype_of,
)
from modelgate.core.repository import ModelVersion

__all__ = ["Chunk", "InputError", "InputFile", "Source"]

Source = Path | bytes


class InputFile:
    """One input file opened for a version: how many rows, and its chunks from any row."""

    def __init__(self, source: Source, fmt: str, id_column: str | None,
                 version: ModelVersion) -> None:
        self.source = source
        self.format = fmt
        self.id_column = id_column
        self.version = version
        self.where = f"the {fmt} input" + (f" {source}" if isinstance(source, Path) else "")
        self._arrays: dict[str, np.ndarray] | None = None
        self._mapper: RowMapper | None = None
        self.total = self._open()

    # -- opening: the column plan (refusing a file that cannot feed the model) and the count

    def _open(self) -> int:
        try:
            if self.format in ("npy", "npz"):
                return self._open_arrays()
            if self.format == "csv":
                header, count = self._csv_header_and_count()
                self._mapper = RowMapper(column_plan(self.version, header, self.id_column,
                                                     self.where), self.id_column)
                return count
            if self.format == "jsonl":
                return self._open_jsonl()
            if self.format == "parquet":
                return self._open_parquet()
        except OSError as e:
            raise InputError(f"cannot read {self.where}: {e.strerror or e}") from e
        raise InputError(f"input format {self.format!r} is not one of csv, jsonl, parquet, "
                         "npy, npz")

    def _binary(self) -> IO[bytes]:
        if isinstance(self.source, bytes):
            return io.BytesIO(self.source)
        return self.source.open("rb")

    def _text(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(self._binary(), encoding="utf-8", errors="replace", newline="")

    def _csv_header_and_count(self) -> tuple[list[str], int]:
        with self._text() as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if not header:
                raise InputError(f"{self.where} is empty: its first line must name the columns")
            return [h.strip() for h in header], sum(1 for _ in reader)

    def _open_jsonl(self) -> int:
        count = 0
        columns: list[str] | None = None
        with self._binary() as lines:
            for line in lines:
                if not line.strip():
                    continue
                count += 1
                if columns is None:
                    try:
                        first = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(first, dict):
                        columns = [str(k) for k in first]
                    elif isinstance(first, list):
                        columns = []
        if columns:
            self._mapper = RowMapper(column_plan(self.version, columns, self.id_column,
                                                 self.where), self.id_column)
        elif len(self.version.inputs) != 1:
            example = ", ".join(f'"{i.name}": [...]' for i in self.version.inputs)
            raise InputError(f"{self.where} has no JSON object line naming the inputs of model "
                             f"{self.version.name!r}: write one object per line, e.g. "
                             f"{{{example}}}")
        return count

    def _open_parquet(self) -> int:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise InputError(PARQUET_MISSING) from e

        try:
            parquet = pq.ParquetFile(self._binary())
        except Exception as e:  # pyarrow raises ArrowInvalid and others for a bad file
            raise InputError(f"{self.where} is not a Parquet file: {e}") from e
        self._mapper = RowMapper(column_plan(self.version, parquet.schema_arrow.names,
                                             self.id_column, self.where), self.id_column)
        return int(parquet.metadata.num_rows)

    def _open_arrays(self) -> int:
        try:
            if self.format == "npy" and isinstance(self.source, Path):
                # Mapped, not read: a large file costs no memory until its rows are cut.
                arrays = {"": np.load(self.source, mmap_mode="r", allow_pickle=False)}
            else:
                with self._binary() as raw:
                    loaded = np.load(raw, allow_pickle=False)
                    if isinstance(loaded, np.ndarray):
                        arrays = {"": loaded}
                    else:
                        arrays = {name: loaded[name] for name in loaded.files}
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{self.where} is not a {self.format} file numpy reads without "
                             f"pickle: {e}") from e
        inputs = self.version.inputs
        if self.format == "npy":
            if len(inputs) != 1:
                raise InputError(f"model {self.version.name!r} takes {len(inputs)} inputs; an "
                                 "npy file holds one array: use npz with an array per input")
            arrays = {inputs[0].name: arrays[""]}
        missing = [i.name for i in inputs if i.name not in arrays]
        if missing:
            raise InputError(f"{self.where} has no array for input(s) {missing}; its arrays "
                             f"are {sorted(arrays)}: name each after its input")
        lengths = {len(arrays[i.name]) if arrays[i.name].ndim else 0 for i in inputs}
        if self.id_column is not None:
            if self.id_column not in arrays:
                raise InputError(f"{self.where} has no id array {self.id_column!r}")
            lengths.add(len(arrays[self.id_column]))
        if len(lengths) != 1:
            raise InputError(f"{self.where}: the arrays have different row counts {lengths}")
        for spec in inputs:
            numpy_dtype_of(spec)
            shape = feature_shape(spec)
            found = arrays[spec.name].shape[1:]
            if len(found) != len(shape) or any(d >= 0 and d != f
                                               for d, f in zip(shape, found, strict=True)):
                raise InputError(f"{self.where}: array {spec.name!r} has rows of shape "
                                 f"{list(found)}; input {spec.name!r} takes {list(shape)}")
            kind, wanted = arrays[spec.name].dtype.kind, numpy_dtype_of(spec)
            if (kind not in "US") if wanted is object else (
                    kind not in "biuf" or (np.dtype(wanted).kind in "iub" and kind == "f")):
                raise InputError(f"{self.where}: array {spec.name!r} holds "
                                 f"{arrays[spec.name].dtype}, which input {spec.name!r} "
                                 f"({spec.datatype}) cannot take")
        self._arrays = arrays
        return lengths.pop()

    # -- reading

    def rows(self, start: int = 0) -> Iterator[tuple[int, Any, dict[str, Any] | str]]:
        """(position, id, the row's inputs or its error) from row ``start`` on (tabular
        formats; arrays are cut whole: :meth:`_array_chunks`)."""
        if self.format == "csv":
            yield from self._csv_rows(start)
        elif self.format == "jsonl":
            yield from self._jsonl_rows(start)
        else:
            yield from self._parquet_rows(start)

    def _mapped(self, position: int, row: dict[str, Any]) -> tuple[int, Any, dict[str, Any] | str]:
        assert self._mapper is not None
        row_id = id_of(row.get(self.id_column)) if self.id_column else position
        try:
            return position, row_id, self._mapper.inputs_of(row)
        except ValueError as e:
            return position, row_id, str(e)

    def _csv_rows(self, start: int) -> Iterator[tuple[int, Any, dict[str, Any] | str]]:
        with self._text() as text:
            reader = csv.reader(text)
            header = [h.strip() for h in next(reader)]
            for position, values in enumerate(reader):
                if position < start:
                    continue
                if len(values) != len(header):
                    row = dict(zip(header, values, strict=False))
                    row_id = (id_of(row.get(self.id_column)) if self.id_column
                              else position)
                    yield position, row_id, (f"the line has {len(values)} fields, the header "
                                             f"{len(header)}")
                    continue
                yield self._mapped(position, dict(zip(header, values, strict=True)))

    def _jsonl_rows(self, start: int) -> Iterator[tuple[int, Any, dict[str, Any] | str]]:
        position = -1
        with self._binary() as lines:
            for line in lines:
                if not line.strip():
                    continue
                position += 1
                if position < start:
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    yield position, position, f"the line is not JSON: {e}"
                    continue
                if isinstance(value, list) and len(self.version.inputs) == 1:
                    value = {self.version.inputs[0].name: value}
                if not isinstance(value, dict):
                    yield position, position, "the line is not a JSON object"
                    continue
                if self._mapper is None:
                    spec = self.version.inputs[0]
                    self._mapper = RowMapper([Column(spec, spec.name)], self.id_column)
                yield self._mapped(position, value)

    def _parquet_rows(self, start: int) -> Iterator[tuple[int, Any, dict[str, Any] | str]]:
        import pyarrow.parquet as pq

        with self._binary() as raw:
            parquet = pq.ParquetFile(raw)
            position = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if position + rows <= start:
                    position += rows
                    continue
                for batch in parquet.iter_batches(row_groups=[group], batch_size=4096):
                    for row in batch.to_pylist():
                        if position >= start:
                            yield self._mapped(position, row)
                        position += 1

    def _array_chunks(self, chunk_rows: int, start: int,
                      only: set[int] | None) -> Iterator[Chunk]:
        """NPY and NPZ: typed arrays, cut by slicing (their shape was checked at open, so no
        row can be malformed)."""
        assert self._arrays is not None
        ids = self._arrays.get(self.id_column) if self.id_column else None
        wanted = np.arange(start, self.total) if only is None else np.array(
            sorted(p for p in only if p >= start), dtype=np.int64)
        for at in range(0, len(wanted), chunk_rows):
            picked = wanted[at:at + chunk_rows]
            contiguous = only is None
            first, last = int(picked[0]), int(picked[-1]) + 1

            def rows_of(array: np.ndarray) -> np.ndarray:
                return array[first:last] if contiguous else array[picked]  # noqa: B023

            positions = picked.tolist()
            chunk = Chunk(positions, rows_of(ids).tolist() if ids is not None else positions,
                          valid=list(range(len(positions))))
            chunk.inputs = {spec.name: np.ascontiguousarray(
                rows_of(self._arrays[spec.name]), dtype=numpy_dtype_of(spec))
                for spec in self.version.inputs}
            yield chunk

    def chunks(self, chunk_rows: int, start: int = 0,
               only: set[int] | None = None) -> Iterator[Chunk]:
        """Chunks of ``chunk_rows`` rows from row ``start`` (only the positions in ``only``,
        when given: a retry of failed rows)."""
        if self._arrays is not None:
            yield from self._array_chunks(chunk_rows, start, only)
            return
        positions: list[int] = []
        ids: list[Any] = []
        rows: list[dict[str, np.ndarray] | str] = []
        for position, row_id, row in self.rows(start):
            if only is not None and position not in only:
                continue
            positions.append(position)
            ids.append(row_id)
            rows.append(row)
            if len(positions) == chunk_rows:
                yield build_chunk(positions, ids, rows, self.version)
                positions, ids, rows = [], [], []
        if positions:
            yield build_chunk(positions, ids, rows, self.version)
