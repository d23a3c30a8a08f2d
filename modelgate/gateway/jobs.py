"""Batch jobs for any transport (HTTP: ``routes/jobs.py``): submit, read, list, cancel, retry,
and the output. The gateway only writes and reads the job store; the coordinator
(``autoscaler/coordinator.py``) runs jobs, never this event loop.

A submission names its input and output by path (under ``--jobs-dir``) or uploads the input
(then the output is kept in the job store for ``jobs.RETENTION_S``). The version is resolved
here, at submission (the default when none is named), and pinned with its content hash.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelgate.core.batch import output as output_format
from modelgate.core.batch.paths import confine, relative
from modelgate.core.batch.readers import InputFile
from modelgate.core.errors import Conflict, Forbidden, InvalidInput, ModelNotFound, Overloaded
from modelgate.core.repository import ModelVersion, RepositoryError, check_name
from modelgate.core.store import jobs
from modelgate.core.store.jobs import JobRecordError, JobSpec, JobState, Progress
from modelgate.gateway.dataplane import DataPlane

LIST_LIMIT = 100
STALE_RATE_S = 5.0
STREAM_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: the key's id (never the key), and whether it is an admin key (or no admin
    key is configured, so every caller may act on every job)."""

    key_id: str
    admin: bool


def _format_of(given: Any, path: str | None, allowed: tuple[str, ...], what: str) -> str:
    if given is None and path is not None:
        given = Path(path).suffix.lstrip(".").lower() or None
    if given is None:
        raise InvalidInput(f"{what} 'format' is missing: say one of {list(allowed)}")
    if not isinstance(given, str) or given.lower() not in allowed:
        raise InvalidInput(f"{what} format {given!r} is not one of {list(allowed)}")
    return given.lower()


def _object(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{name!r} must be an object, e.g. {{\"path\": \"x.csv\", "
                           "\"format\": \"csv\"}")
    return value


def _model_and_version(plane: DataPlane, body: Mapping[str, Any]) -> ModelVersion:
    model, version = body.get("model"), body.get("version")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' must name the model to score with, e.g. {\"model\": "
                           "\"mlp\", ...}")
    if version is not None and not isinstance(version, str | int):
        raise InvalidInput(f"'version' must be a version number, got {version!r}")
    try:
        check_name(model)
        if version is not None:
            check_name(str(version), "version")
    except RepositoryError as e:
        raise ModelNotFound(str(e)) from e
    found = plane.resolve(model, str(version) if version is not None else None)
    if not found.rows_axis:
        raise InvalidInput(f"model {model!r} takes no batch of rows (an input without a "
                           "variable first dimension), so it cannot run batch jobs")
    return found


def _id_column(given: Any) -> str | None:
    if given is not None and (not isinstance(given, str) or not given):
        raise InvalidInput(f"'id_column' must be a column name, got {given!r}")
    return given


async def submit(plane: DataPlane, jobs_dir: Path | None, body: Mapping[str, Any],
                 upload: bytes | None, caller: Caller) -> dict[str, Any]:
    """Check and store a job; its view (state ``queued``). ``body`` is the JSON form (paths),
    or the query parameters of an upload (``upload`` then holds the input file)."""
    version = _model_and_version(plane, body)
    job_input = _object(body, "input") if upload is None else {
        "format": body.get("format"), "id_column": body.get("id_column")}
    job_output = _object(body, "output") if upload is None else {
        "format": body.get("output_format", "jsonl")}
    if upload is None and "path" not in job_input:
        raise InvalidInput("'input' must name a 'path' under the jobs folder, or upload the "
                           "file as the body (POST /v2/jobs?model=M&format=csv)")
    input_path = job_input.get("path") if upload is None else None
    input_format = _format_of(job_input.get("format"), input_path, jobs.INPUT_FORMATS, "input")
    id_column = _id_column(job_input.get("id_column"))
    output_path = job_output.get("path")
    output_format_name = _format_of(job_output.get("format"), output_path,
                                    jobs.OUTPUT_FORMATS, "output") \
        if output_path is not None or job_output.get("format") is not None else "jsonl"
    if output_format_name == "parquet" and not output_format.parquet_available():
        raise InvalidInput(output_format.PARQUET_MISSING)
    stored_input = stored_output = None
    if input_path is not None:
        source = confine(jobs_dir, input_path, "input")
        if not source.is_file():
            raise InvalidInput(f"input path {input_path!r} is not a file under the jobs folder")
        if output_path is None:
            raise InvalidInput("a job whose input is a path needs 'output': {\"path\": ..., "
                               "\"format\": \"jsonl\" or \"parquet\"} under the jobs folder")
        assert jobs_dir is not None
        stored_input = relative(jobs_dir, source)
    if output_path is not None:
        target = confine(jobs_dir, output_path, "output")
        if input_path is not None and target == confine(jobs_dir, input_path, "input"):
            raise InvalidInput("the output path is the input path: name another file")
        if not target.parent.is_dir():
            raise InvalidInput(f"output path {output_path!r}: its folder does not exist under "
                               "the jobs folder")
        assert jobs_dir is not None
        stored_output = relative(jobs_dir, target)
    if upload is not None:
        if len(upload) > jobs.MAX_UPLOAD_BYTES:
            raise InvalidInput(f"the upload is {len(upload)} bytes; at most "
                               f"{jobs.MAX_UPLOAD_BYTES} are kept in the job store: put larger "
                               "files under the jobs folder and name them by path")
        await _room_for(plane, len(upload))
    # The columns must feed the model: refused now, not after the job has been queued.
    checked = await asyncio.to_thread(
        InputFile, upload if upload is not None else source, input_format, id_column, version)
    now = time.time()
    spec = JobSpec(uuid.uuid4().hex, version.name, version.version, version.sha256,
                   input_format, output_format_name, stored_input, stored_output, id_column,
                   caller.key_id, now)
    progress = Progress(total=checked.total, updated_at=now)
    pipe = plane.client.pipeline(transaction=True)
    pipe.set(jobs.spec(spec.id), spec.encode())
    pipe.hset(jobs.progress(spec.id), mapping=progress.fields())
    if upload is not None:
        pipe.set(jobs.upload(spec.id), upload)
        pipe.hset(jobs.UPLOADS, spec.id, len(upload))
    pipe.zadd(jobs.INDEX, {spec.id: now})
    pipe.zadd(jobs.ACTIVE, {spec.id: now})
    pipe.zremrangebyrank(jobs.INDEX, 0, -(jobs.INDEX_MAX + 1))
    await pipe.execute()
    return view(spec, progress, now)


async def _room_for(plane: DataPlane, size: int) -> None:
    """Refuse an upload that would take the uploads held past their budget (expired ones are
    forgotten on the way)."""
    held = {k.decode(): int(v) for k, v in (await plane.client.hgetall(jobs.UPLOADS)).items()}
    if held:
        pipe = plane.client.pipeline(transaction=False)
        for job_id in held:
            pipe.exists(jobs.upload(job_id))
        gone = [job_id for job_id, exists in zip(held, await pipe.execute(), strict=True)
                if not exists]
        if gone:
            await plane.client.hdel(jobs.UPLOADS, *gone)
        for job_id in gone:
            held.pop(job_id)
    total = sum(held.values())
    if total + size > jobs.UPLOADS_MAX_BYTES:
        raise Overloaded(f"the job store holds {total} bytes of uploaded inputs and this one "
                         f"would pass its budget of {jobs.UPLOADS_MAX_BYTES}: retry once jobs "
                         "have ended and expired, or put the file under the jobs folder and "
                         "name it by path", 60)


def view(spec: JobSpec, progress: Progress, now: float) -> dict[str, Any]:
    """A job as GET /v2/jobs/{id} shows it."""
    remaining = None
    # The coordinator writes the rate as rows come in: one that stopped coming (a stalled
    # pool, a coordinator taking over) reads as 0, not as the last rate seen.
    rate = progress.rows_per_s if now - progress.updated_at <= STALE_RATE_S else 0.0
    if progress.state == JobState.RUNNING and progress.total is not None:
        left = (progress.retrying or progress.total) - progress.assembled
        remaining = round(left / rate, 1) if rate > 0 else None
    return {
        "id": spec.id, "state": progress.state, "model": spec.model, "version": spec.version,
        "rows": {"total": progress.total, "done": progress.done, "failed": progress.failed},
        "rows_per_s": rate, "eta_s": remaining, "attempt": progress.attempt,
        "input": {"path": spec.input_path, "format": spec.input_format,
                  "id_column": spec.id_column},
        "output": {"path": spec.output_path, "format": spec.output_format},
        "submitted_at": spec.submitted_at, "started_at": progress.started_at or None,
        "finished_at": progress.finished_at or None, "error": progress.error or None,
        "sha256": spec.sha256, "owner": spec.owner,
    }


async def _load(plane: DataPlane, job_id: str) -> tuple[JobSpec, Progress]:
    if not isinstance(job_id, str) or not job_id.isalnum() or len(job_id) > 64:
        raise ModelNotFound(f"no job {job_id[:70]!r}: job ids are what POST /v2/jobs answered")
    pipe = plane.client.pipeline(transaction=False)
    pipe.get(jobs.spec(job_id))
    pipe.hgetall(jobs.progress(job_id))
    raw_spec, raw_progress = await pipe.execute()
    if raw_spec is None or not raw_progress:
        raise ModelNotFound(f"no job {job_id!r} (finished jobs are kept "
                            f"{jobs.RETENTION_S // 3600} h); see GET /v2/jobs")
    try:
        return JobSpec.decode(raw_spec), Progress.parse(raw_progress)
    except JobRecordError as e:
        raise ModelNotFound(f"job {job_id!r} has an unreadable record ({e})") from e


async def status(plane: DataPlane, job_id: str) -> dict[str, Any]:
    spec, progress = await _load(plane, job_id)
    return view(spec, progress, time.time())


async def listing(plane: DataPlane, state: str | None) -> dict[str, Any]:
    """The newest jobs first (at most LIST_LIMIT), optionally in one state."""
    if state is not None and state not in set(JobState):
        raise InvalidInput(f"state {state!r} is not one of {[s.value for s in JobState]}")
    ids = [raw.decode() for raw in await plane.client.zrevrange(jobs.INDEX, 0, 4 * LIST_LIMIT)]
    pipe = plane.client.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(jobs.spec(job_id))
        pipe.hgetall(jobs.progress(job_id))
    results = await pipe.execute()
    now = time.time()
    found = []
    for raw_spec, raw_progress in zip(results[::2], results[1::2], strict=True):
        if raw_spec is None or not raw_progress:
            continue
        try:
            item = view(JobSpec.decode(raw_spec), Progress.parse(raw_progress), now)
        except JobRecordError:
            continue
        if state is None or item["state"] == state:
            found.append(item)
        if len(found) == LIST_LIMIT:
            break
    return {"jobs": found}


def _may_act(spec: JobSpec, caller: Caller, action: str) -> None:
    if not caller.admin and caller.key_id != spec.owner:
        raise Forbidden(f"job {spec.id} was submitted with another key: only it or an admin "
                        f"key may {action} it")


async def cancel(plane: DataPlane, job_id: str, caller: Caller) -> dict[str, Any]:
    spec, _ = await _load(plane, job_id)
    _may_act(spec, caller, "cancel")
    state = await plane.client.execute_command(*jobs.cancel_command(job_id, time.time()))
    state = state.decode() if isinstance(state, bytes) else state
    if state != JobState.CANCELLED:
        raise Conflict(f"job {job_id} is {str(state).removeprefix('ended:')} already: only a "
                       "queued or running job can be cancelled")
    return await status(plane, job_id)


async def retry(plane: DataPlane, job_id: str, caller: Caller) -> dict[str, Any]:
    spec, _ = await _load(plane, job_id)
    _may_act(spec, caller, "retry")
    state = await plane.client.execute_command(*jobs.retry_command(job_id, time.time()))
    state = state.decode() if isinstance(state, bytes) else state
    if state != JobState.QUEUED:
        raise Conflict(f"job {job_id} is {state}: retry runs the failed rows of a job that "
                       "completed_with_failures; submit a new job otherwise")
    return await status(plane, job_id)


async def active_on(plane: DataPlane, model: str) -> list[str]:
    """Ids of the queued or running jobs pinned to any version of ``model``."""
    ids = [raw.decode() for raw in await plane.client.zrange(jobs.ACTIVE, 0, -1)]
    if not ids:
        return []
    raws = await plane.client.mget([jobs.spec(i) for i in ids])
    found = []
    for job_id, raw in zip(ids, raws, strict=True):
        try:
            if raw is not None and JobSpec.decode(raw).model == model:
                found.append(job_id)
        except JobRecordError:
            continue
    return found


async def cancel_all(plane: DataPlane, ids: list[str]) -> None:
    now = time.time()
    for job_id in ids:
        await plane.client.execute_command(*jobs.cancel_command(job_id, now))


@dataclass(frozen=True, slots=True)
class Output:
    """A finished job's output: its media type and its bytes, block by block."""

    media_type: str
    filename: str
    blocks: AsyncIterator[bytes]


async def output(plane: DataPlane, jobs_dir: Path | None, job_id: str) -> Output:
    spec, progress = await _load(plane, job_id)
    if progress.state not in (JobState.SUCCEEDED, JobState.COMPLETED_WITH_FAILURES):
        raise Conflict(f"job {job_id} is {progress.state}: its output is ready once it has "
                       "succeeded or completed_with_failures")
    parquet = spec.output_format == "parquet"
    media = "application/vnd.apache.parquet" if parquet else "application/x-ndjson"
    name = f"{job_id}.{'parquet' if parquet else 'jsonl'}"
    if spec.output_path is not None:
        path = confine(jobs_dir, spec.output_path, "output")
        if not path.is_file():
            raise ModelNotFound(f"the output {spec.output_path!r} of job {job_id} is gone from "
                                "the jobs folder")
        return Output(media, name, _file_blocks(path))
    if parquet:
        lines = [line async for line in _stored_lines(plane, job_id)]
        names = next((list(orjson.loads(line)["outputs"]) for line in lines
                      if not output_format.is_error_line(line)), [])
        buffer = io.BytesIO()
        await asyncio.to_thread(output_format.write_parquet, lines, buffer, names)
        return Output(media, name, _one(buffer.getvalue()))
    return Output(media, name, _stored_blocks(plane, job_id))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _file_blocks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(handle.read, STREAM_BLOCK_BYTES):
            yield block
    finally:
        handle.close()


async def _stored_blocks(plane: DataPlane, job_id: str) -> AsyncIterator[bytes]:
    at = 0
    while blocks := await plane.client.lrange(jobs.output(job_id), at, at + 15):
        for block in blocks:
            yield block
        at += len(blocks)


async def _stored_lines(plane: DataPlane, job_id: str) -> AsyncIterator[bytes]:
    async for block in _stored_blocks(plane, job_id):
        for line in output_format.split_lines([block]):
            yield line
