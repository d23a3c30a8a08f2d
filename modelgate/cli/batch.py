"""``modelgate batch``: submit a file as a batch job and download its output, or follow jobs
(``status``, ``cancel``, ``retry``, ``list``) -- over HTTP, with the key from ``--key`` or
``MODELGATE_CLIENT_KEY``.

``submit`` uploads the file (the gateway keeps the output in its job store), shows a progress
bar that redraws every 0.5 s, and writes the output to ``--out`` once the job has ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

POLL_S = 0.5
FINAL = ("succeeded", "completed_with_failures", "failed", "cancelled")
BAR_WIDTH = 30


class BatchError(Exception):
    """An answer that ends the command; the message is the gateway's."""


def _check(response: httpx.Response, expected: int = 200) -> Any:
    if response.status_code != expected:
        try:
            message = response.json().get("error", response.text)
        except (json.JSONDecodeError, AttributeError):
            message = response.text
        raise BatchError(f"{response.status_code}: {message}")
    return response.json()


def progress_line(job: dict[str, Any]) -> str:
    """One line: a bar, rows done/failed of total, rows/s and the time left."""
    rows = job["rows"]
    total = rows.get("total") or 0
    finished = rows["done"] + rows["failed"]
    share = finished / total if total else 0.0
    filled = int(share * BAR_WIDTH)
    eta = f", {job['eta_s']:.0f} s left" if job.get("eta_s") is not None else ""
    return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:6.1%} {finished}/{total} "
            f"rows ({rows['failed']} failed), {job['rows_per_s']:.0f} rows/s{eta} "
            f"{job['state']}")


def describe(job: dict[str, Any], out: TextIO) -> None:
    print(f"job {job['id']}: {job['state']}, model {job['model']} version {job['version']}",
          file=out)
    print(progress_line(job), file=out)
    if job.get("error"):
        print(f"error: {job['error']}", file=out)


def _submit(client: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    params = {"model": args.model}
    for name in ("version", "format", "id_column", "output_format"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if "format" not in params:
        params["format"] = args.file.suffix.lstrip(".").lower()
    if "output_format" not in params and args.out.suffix.lower() == ".parquet":
        params["output_format"] = "parquet"
    job = _check(client.post("/v2/jobs", params=params, content=args.file.read_bytes(),
                             headers={"content-type": "application/octet-stream"}), 201)
    print(f"job {job['id']} submitted", file=out)
    if args.detach:
        return 0
    interactive = out.isatty()
    while job["state"] not in FINAL:
        line = progress_line(job)
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n",
              file=out, flush=True)
        time.sleep(POLL_S)
        job = _check(client.get(f"/v2/jobs/{job['id']}"))
    print(("\r" if interactive else "") + progress_line(job), file=out)
    if job["state"] in ("failed", "cancelled"):
        print(f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error")
                                                     else ""), file=out)
        return 1
    _download(client, job["id"], args.out)
    print(f"output written to {args.out}", file=out)
    return 0


def _download(client: httpx.Client, job_id: str, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.part")
    with client.stream("GET", f"/v2/jobs/{job_id}/output") as response:
        if response.status_code != 200:
            response.read()
            _check(response)
        with temporary.open("wb") as file:
            for block in response.iter_bytes():
                file.write(block)
    os.replace(temporary, target)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    key = args.key or os.environ.get("MODELGATE_CLIENT_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60.0) as client:
        try:
            if args.action == "submit":
                return _submit(client, args, out)
            if args.action == "list":
                params = {"state": args.state} if args.state else {}
                for job in _check(client.get("/v2/jobs", params=params))["jobs"]:
                    print(f"{job['id']}  {job['model']}:{job['version']}  "
                          f"{progress_line(job)}", file=out)
                return 0
            if args.action == "status":
                describe(_check(client.get(f"/v2/jobs/{args.job}")), out)
            else:
                describe(_check(client.post(f"/v2/jobs/{args.job}/{args.action}")), out)
            return 0
        except httpx.HTTPError as e:
            print(f"modelgate batch: cannot reach {args.url}: {e}", file=sys.stderr)
        except BatchError as e:
            print(f"modelgate batch {args.action}: {e}", file=sys.stderr)
        except OSError as e:
            print(f"modelgate batch {args.action}: {e}", file=sys.stderr)
        return 1
