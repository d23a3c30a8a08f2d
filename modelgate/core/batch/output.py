"""A job's output records: one per input row, in input order.

JSONL, one object a line: ``{"row": ID, "model_version": "1", "outputs": {NAME: VALUE}}`` or
``{"row": ID, "model_version": "1", "error": "what was wrong with the row"}``, where ``row`` is
the id column's value (else the 0-based row number) and each output's VALUE is that row's
slice (a list for a vector, a number for a scalar). Parquet: columns ``row``,
``model_version``, ``error`` (null when the row has outputs) and one column per output.

The coordinator writes JSONL as the chunks come in (it can be cut back to a checkpoint and
appended to); Parquet is made from it when the job ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from modelgate.core.store.jobs import Piece

PARQUET_MISSING = ("Parquet needs pyarrow, which this installation lacks: install "
                   "modelgate[parquet], or use csv, jsonl, npy or npz")


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def piece_lines(piece: Piece, version: str) -> tuple[bytes, int, int]:
    """The JSONL lines of one result piece, and how many rows had outputs and errors."""
    lines = []
    k = 0
    failed = 0
    names = list(piece.outputs)
    for offset, row_id in enumerate(piece.ids):
        error = piece.errors.get(offset)
        if error is not None:
            lines.append(orjson.dumps({"row": row_id, "model_version": version,
                                       "error": error}))
            failed += 1
            continue
        lines.append(orjson.dumps({"row": row_id, "model_version": version,
                                   "outputs": {n: piece.outputs[n][k] for n in names}}))
        k += 1
    return b"\n".join(lines) + b"\n" if lines else b"", len(piece.ids) - failed, failed


def is_error_line(line: bytes) -> bool:
    return b'"error":' in line and "error" in orjson.loads(line)


def failed_positions(lines: Iterable[bytes]) -> list[int]:
    """The positions (line numbers) of error records in a JSONL output."""
    return [position for position, line in enumerate(lines) if is_error_line(line)]


def merged(previous: Iterable[bytes], retried: Iterable[bytes],
           positions: list[int]) -> Iterator[bytes]:
    """The previous output with the lines at ``positions`` replaced by ``retried``'s lines,
    in order."""
    replace = iter(retried)
    wanted = iter(positions)
    next_position = next(wanted, None)
    for position, line in enumerate(previous):
        if position == next_position:
            line = next(replace)
            next_position = next(wanted, None)
        yield line if line.endswith(b"\n") else line + b"\n"


def split_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (with their newline) out of JSONL blocks."""
    for block in blocks:
        for line in block.splitlines(keepends=True):
            if line.strip():
                yield line


def write_parquet(lines: Iterable[bytes], sink: IO[bytes] | str,
                  names: Iterable[str]) -> None:
    """The Parquet form of a JSONL output of a model with outputs ``names`` (a row group per
    64k rows; ``row`` as text, whatever the id column held)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = tuple(names)
    writer: Any = None
    batch: list[dict[str, Any]] = []
    schema: Any = None

    def flush() -> None:
        nonlocal writer, schema
        if not batch:
            return
        table = pa.Table.from_pylist(batch, schema=schema)
        if writer is None:
            schema = table.schema
            writer = pq.ParquetWriter(sink, schema)
        writer.write_table(table)
        batch.clear()

    for line in lines:
        record = orjson.loads(line)
        outputs = record.get("outputs") or {}
        row = {"row": str(record["row"]), "model_version": record["model_version"],
               "error": record.get("error")}
        for name in names:
            row[name] = outputs.get(name)
        batch.append(row)
        if len(batch) >= 65_536:
            flush()
    flush()
    if writer is None:
        pq.write_table(pa.table({"row": pa.array([], pa.string()),
                                 "model_version": pa.array([], pa.string()),
                                 "error": pa.array([], pa.string())}), sink)
    else:
        writer.close()
