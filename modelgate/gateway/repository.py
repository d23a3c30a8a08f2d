"""Triton's model repository extension, for any transport: the index, and load and unload in
explicit mode (HTTP: ``routes/repository.py``; gRPC: ``rpc/service.py``).

``load`` and ``unload`` ask the decider (the holder of the control lease) and return when it is
done: DONE once every version the model's policy serves is READY (or it is unloaded), an
``InvalidInput`` with the reason when a version failed, PENDING when the caller's
``timeout_ms`` (default 120 s) passed first. Outside explicit mode they are refused (Triton's
semantics), and with no decider running they are a ``BackendUnavailable``. A load may carry
files as Triton's clients send them (``parameters`` of ``"file:<version>/model.onnx"`` to the
content: base64 text over HTTP, bytes over gRPC): they are written into the repository first,
atomically, then loaded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from modelgate.core.errors import BackendUnavailable, Conflict, InvalidInput, ModelNotFound
from modelgate.core.lineage import Lineage
from modelgate.core.repository import RepositoryError, check_name, scan_repository
from modelgate.core.store import models as model_store
from modelgate.core.store.models import CommandResult, ControlCommand
from modelgate.gateway import jobs
from modelgate.gateway.dataplane import DataPlane

DEFAULT_TIMEOUT_MS = 120_000
POLL_S = 0.1


class CommandDone(enum.Enum):
    DONE = "done"
    PENDING = "pending"  # still under way at the caller's timeout


def _lineage(lineage: Lineage) -> dict[str, Any]:
    """The index's short form of a version's lineage: the run and the registry entry, the
    params and the training metrics (the rest: the version's metadata)."""
    return {"run_id": lineage.run_id, "registry": dict(lineage.registry),
            "params": dict(lineage.params), "metrics": dict(lineage.metrics)}


def index_rows(root: Path, plane: DataPlane, ready_only: bool) -> list[dict[str, Any]]:
    """Every version loaded (its state) and every version on disk that is not (UNAVAILABLE,
    with why), by model name and version; those with a lineage carry it (``lineage``)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    lineages: dict[tuple[str, str], Lineage] = {}
    for name, scan in scan_repository(root).items():
        served = set(scan.served())
        for version, found in scan.versions.items():
            reason = found.error or (scan.unserved_reason(version) if version not in served
                                     else "not loaded")
            rows[name, version] = {"name": name, "version": version, "state": "UNAVAILABLE",
                                   "reason": reason}
            if found.loaded is not None:
                lineages[name, version] = found.loaded.lineage
        if scan.error:
            rows[name, ""] = {"name": name, "version": "", "state": "UNAVAILABLE",
                              "reason": scan.error}
    for name, model in plane.models.items():
        for version, served_version in model.versions.items():
            state = served_version.state
            warnings = (served_version.version.lineage.warnings
                        if served_version.version is not None else ())
            # A signature its MLmodel disagrees with is served by the graph, and said here.
            reason = "; ".join([state.reason] * bool(state.reason) + [
                f"warning: {w}; serving by the ONNX graph" for w in warnings])
            rows[name, version] = {"name": name, "version": version,
                                   "state": state.status.value, "reason": reason}
            if served_version.version is not None:
                lineages[name, version] = served_version.version.lineage
    for key, lineage in lineages.items():
        if not lineage.empty:
            rows[key]["lineage"] = _lineage(lineage)
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[0], int(k[1] or 0)))]
    return [row for row in ordered if row["state"] == "READY"] if ready_only else ordered


def key_id(authorization: str | None) -> str:
    """Who asked, for the record: a short hash of the key used, never the key."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "anonymous"
    return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:8]


def _content(key: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"parameter {key!r} must be the file's content in base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"parameter {key!r} is not valid base64: {e}") from e


def write_files(root: Path, model: str, parameters: dict[str, Any]) -> list[str]:
    """Triton's ``file:<version>/model.onnx`` parameters, written atomically (to a temporary
    name, then renamed) into the model's folder; returns the paths written."""
    written = []
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        relative = key.removeprefix("file:")
        version, _, filename = relative.partition("/")
        try:
            check_name(version, "version")
        except RepositoryError as e:
            raise InvalidInput(f"parameter {key!r}: {e}") from e
        if filename != "model.onnx":
            raise InvalidInput(f"parameter {key!r}: only <version>/model.onnx can be uploaded")
        content = _content(key, value)
        folder = root / model / version
        if (folder / filename).exists():
            raise InvalidInput(f"version {version} of {model!r} exists already and versions "
                               "are immutable: upload it as a new version")
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{filename}.{uuid.uuid4().hex}.part"
        temporary.write_bytes(content)
        os.replace(temporary, folder / filename)
        written.append(f"{model}/{version}/{filename}")
    return written


async def run_command(plane: DataPlane, op: str, name: str, parameters: dict[str, Any],
                      authorization: str | None) -> CommandDone:
    """Load or unload ``name`` through the decider and wait for it (see the module)."""
    try:
        check_name(name)
    except RepositoryError as e:
        raise ModelNotFound(str(e)) from e
    timeout_ms = parameters.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or not (
            1 <= timeout_ms <= 3_600_000):
        raise InvalidInput(f"parameters.timeout_ms must be milliseconds in [1, 3600000], got "
                           f"{timeout_ms!r}")
    if plane.decider_mode is None:
        raise BackendUnavailable(
            f"no model control loop runs to {op} models: run `modelgate autoscaler` (or "
            "`modelgate up`) against this Redis")
    if plane.decider_mode != "explicit":
        raise InvalidInput(f"the model control mode is {plane.decider_mode}: {op} works in "
                           "explicit mode only (--model-control-mode explicit); change the "
                           "repository folder instead")
    if op == "unload":
        running = await jobs.active_on(plane, name)
        if running and parameters.get("force") is not True:
            raise Conflict(f"model {name!r} has {len(running)} queued or running batch job(s): "
                           f"{', '.join(running[:20])}; wait for them, cancel them, or unload "
                           "with parameters {\"force\": true}, which cancels them")
        await jobs.cancel_all(plane, running)
    if op == "load":
        await asyncio.to_thread(write_files, plane.settings.models_dir, name, parameters)
    command = ControlCommand(uuid.uuid4().hex, op, name, key_id(authorization), time.time())
    await plane.client.xadd(model_store.COMMANDS, command.fields(),
                            maxlen=model_store.COMMANDS_MAXLEN, approximate=True)
    result = await wait_for_result(plane, command.id, time.monotonic() + timeout_ms / 1000.0)
    if result is None or result.status == "pending":
        return CommandDone.PENDING
    if result.status == "done":
        # Read your writes: this gateway serves the new state before it says it is done.
        await plane.refresh()
        return CommandDone.DONE
    if result.status == "failed" and "no model" in result.message:
        raise ModelNotFound(result.message)
    raise InvalidInput(f"{op} of {name!r} failed: {result.message}")


async def wait_for_result(plane: DataPlane, command_id: str,
                          until: float) -> CommandResult | None:
    result: CommandResult | None = None
    while time.monotonic() < until:
        raw = await plane.client.get(model_store.command_result(command_id))
        if raw is not None:
            result = CommandResult.decode(raw)
            if result.status != "pending":
                return result
        await asyncio.sleep(POLL_S)
    return result
