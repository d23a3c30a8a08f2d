"""``modelgate feedback FILE --model M``: send the labels of a CSV (columns ``id``, ``label``
and optionally ``row``) or JSONL file (one ``{"id", "label", "row"?}`` per line) to a gateway
in batches, with the key from ``--key`` or ``MODELGATE_CLIENT_KEY``; prints progress for large
files and what became of the labels (matched, unknown, expired, already labelled, invalid)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx

BATCH = 5_000  # labels per call (the gateway takes at most 10,000)
RESULTS = ("matched", "unknown", "expired", "already_labelled", "invalid")
PROGRESS_EVERY_S = 2.0


class FileError(ValueError):
    """A line of the file that is no label; the message says where and why."""


def read_labels(path: Path) -> Iterator[dict[str, Any]]:
    """The labels of a CSV or JSONL file (by its suffix: .jsonl/.ndjson/.json, else CSV)."""
    with path.open(newline="") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FileError(f"{path}:{number}: not JSON ({e})") from e
                yield item
            return
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
            raise FileError(f"{path}: a CSV of labels needs a header with columns id and "
                            f"label (and optionally row), found {reader.fieldnames}")
        for number, record in enumerate(reader, 2):
            label: dict[str, Any] = {"id": record["id"], "label": record["label"]}
            row = (record.get("row") or "").strip()
            if row:
                if not row.isdigit():
                    raise FileError(f"{path}:{number}: row must be a whole number, got {row!r}")
                label["row"] = int(row)
            yield label


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    key = args.key or os.environ.get("MODELGATE_CLIENT_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    path = Path(args.file)
    if not path.is_file():
        print(f"modelgate feedback: no file {path}", file=err)
        return 2
    totals = dict.fromkeys(RESULTS, 0)
    sent = 0
    shown = time.monotonic()
    errors: list[str] = []
    with httpx.Client(base_url=args.url, headers=headers, timeout=60.0) as client:
        try:
            batch: list[dict[str, Any]] = []
            for item in read_labels(path):
                batch.append(item)
                if len(batch) == BATCH:
                    sent += _send(client, args.model, batch, totals, errors)
                    batch = []
                    if time.monotonic() - shown >= PROGRESS_EVERY_S:
                        shown = time.monotonic()
                        print(f"modelgate feedback: {sent:,} labels sent, {totals['matched']:,}"
                              " matched", file=err)
            if batch:
                sent += _send(client, args.model, batch, totals, errors)
        except FileError as e:
            print(f"modelgate feedback: {e} ({sent:,} labels were sent before it)", file=err)
            return 2
        except SendError as e:
            print(f"modelgate feedback: {e} ({sent:,} labels were sent before it)", file=err)
            return 1
    print(f"{sent:,} labels for {args.model}: " +
          ", ".join(f"{totals[r]:,} {r.replace('_', ' ')}" for r in RESULTS), file=out)
    for line in errors[:10]:
        print(f"  {line}", file=out)
    return 0


class SendError(RuntimeError):
    pass


def _send(client: httpx.Client, model: str, batch: list[dict[str, Any]],
          totals: dict[str, int], errors: list[str]) -> int:
    try:
        response = client.post(f"/v2/models/{model}/feedback", json=batch)
    except httpx.HTTPError as e:
        raise SendError(f"cannot reach {client.base_url}: {e}") from e
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except json.JSONDecodeError:
            message = response.text
        raise SendError(f"{response.status_code}: {message}")
    answer = response.json()
    for result in RESULTS:
        totals[result] += int(answer.get(result, 0))
    errors.extend(f"item {e['index']}: {e['error']}" for e in answer.get("errors", []))
    return len(batch)
