"""Parsing call bodies: small ones on the event loop, large ones in parser processes.

orjson and numpy hold the GIL for the whole of one call, so a thread does not help: a 30 MiB
JSON body held the event loop (every other call, health probes included) for over a second.
A body whose JSON part is ``large_body_bytes`` or more is parsed by one of at most
``parse_processes`` child processes (``python -m modelgate.gateway.parsing``, started
on the first large body and kept), and the event loop only moves bytes through pipes. Calls
wait for a free parser; how many bytes wait is bounded by the body budget (``body.py``).

The pipe carries bytes only, never pickles: a request frame is an 8-byte little-endian length,
a msgpack envelope ``{"kind", "model", "header", "binary"}`` (``model``: the signature the body
is checked against, so a version loaded after the parser started is parsed like any other;
the last two: byte lengths), then the JSON and the binary section themselves; an answer frame
is an 8-byte length
and a msgpack map: ``{"ok": {"request": wire.encode_bundle payload, "id", "binary_outputs"}}``,
``{"invalid": message}`` (a 400, worded as on the event loop) or ``{"error": text}``. A parser
that dies or overruns the call's budget is killed and replaced; its call gets a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from modelgate.core import wire
from modelgate.core.errors import InvalidInput, Overloaded
from modelgate.core.process import child_preexec
from modelgate.core.repository import ModelConfig, ModelVersion, TensorSpec
from modelgate.core.settings import SECRET_VARIABLES
from modelgate.gateway import protocol
from modelgate.gateway.binary import BinarySection, binary_outputs
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

V1, V2 = "v1", "v2"
_LENGTH_BYTES = 8
_PARSED_ID = "parsed"  # the one id of the bundle a parsed request travels in
STOP_TIMEOUT_S = 2.0


@dataclass(slots=True)  # one per call: not frozen, as wire.Request
class Parsed:
    """A call's body as the data plane takes it."""

    request: wire.Request
    request_id: str | None = None  # V2's ``id``, echoed in the answer
    binary_outputs: frozenset[str] = frozenset()


def parse_body(kind: str, header: bytes | bytearray, binary: BinarySection | None,
               model: ModelVersion) -> Parsed:
    """Parse and validate a V2 or V1 body (its JSON part and, for V2, the binary section)."""
    return parse_loaded(kind, load(kind, header), binary, model)


def load(kind: str, text: bytes | bytearray) -> Any:
    """A body's JSON part as :func:`parse_loaded` takes it."""
    return protocol.loads_v2(text) if kind == V2 else protocol.loads(text)


def parse_loaded(kind: str, body: Any, binary: BinarySection | None,
                 model: ModelVersion) -> Parsed:
    """:func:`parse_body` from the JSON part already loaded."""
    if kind == V1:
        return Parsed(protocol.parse_v1(body, model))
    request, request_id = protocol.parse_v2(body, model, binary)
    return Parsed(request, request_id,
                  frozenset(binary_outputs(body, [o.name for o in model.outputs])))


# --------------------------------------------------------------------------- the parser process


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def signature(model: ModelVersion) -> dict[str, Any]:
    """What parsing needs of a model version, as plain values."""
    def specs(items: tuple[TensorSpec, ...]) -> list[list[Any]]:
        return [[t.name, t.datatype, list(t.shape), t.onnx_type, list(t.classes)]
                for t in items]

    return {"name": model.name, "version": model.version, "inputs": specs(model.inputs),
            "outputs": specs(model.outputs), "max_batch_size": model.max_batch_size}


def model_of(raw: dict[str, Any]) -> ModelVersion:
    """The model version a :func:`signature` describes (no files, default config)."""
    def specs(items: list[list[Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, datatype, tuple(shape), onnx_type, tuple(classes))
                     for name, datatype, shape, onnx_type, classes in items)

    return ModelVersion(raw["name"], raw["version"], Path(), specs(raw["inputs"]),
                        specs(raw["outputs"]), ModelConfig(), raw["max_batch_size"])


def _answer(envelope: dict[str, Any], text: list[bytes], binary: bytes | None) -> dict[str, Any]:
    """The answer to one frame. ``text`` holds the JSON part, and nothing else does: it is
    taken out to be loaded, so its memory goes before the tensors are built."""
    model = model_of(envelope["model"])
    section = BinarySection(memoryview(binary)) if binary is not None else None
    try:
        parsed = parse_loaded(envelope["kind"], load(envelope["kind"], text.pop()), section,
                              model)
    except InvalidInput as e:
        return {"invalid": str(e)}
    payload = wire.encode_bundle(wire.Bundle.single(_PARSED_ID, parsed.request))
    return {"ok": {"request": payload, "id": parsed.request_id,
                   "binary_outputs": sorted(parsed.binary_outputs)}}


def serve_parser(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer request frames from ``stdin`` on ``stdout`` until ``stdin`` ends."""
    while (head := _read_exactly(stdin, _LENGTH_BYTES)) is not None:
        envelope = msgpack.unpackb(_read_exactly(stdin, int.from_bytes(head, "little")) or b"")
        text = [_read_exactly(stdin, envelope["header"]) or b""]
        binary = None if envelope["binary"] is None else _read_exactly(stdin, envelope["binary"])
        try:
            answer = _answer(envelope, text, binary)
        except Exception as e:  # a bug: the call gets a 500, the parser goes on
            log.exception("the body parser failed")
            answer = {"error": f"{type(e).__name__}: {e}"}
        frame = msgpack.packb(answer)
        stdout.write(len(frame).to_bytes(_LENGTH_BYTES, "little") + frame)
        stdout.flush()
        del envelope, text, binary, answer, frame
        _trim()


def _trim() -> None:
    """Hand the memory of the parse just done back to the system: a parser idles at its
    baseline rather than at the high-water mark of the largest body it ever parsed."""
    protocol.forget_parser()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the memory stays reserved
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> int:
    # Ctrl-C in a terminal reaches the gateway, which stops its parsers by closing their input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve_parser(sys.stdin.buffer, sys.stdout.buffer)
    return 0


# --------------------------------------------------------------------------- the gateway's side


class _Parser:
    """One parser process and its pipes; used by one call at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, parts: list[bytes | bytearray | memoryview]) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        for part in parts:
            stdin.write(part)
        await stdin.drain()
        head = await stdout.readexactly(_LENGTH_BYTES)
        answer = msgpack.unpackb(await stdout.readexactly(int.from_bytes(head, "little")))
        if not isinstance(answer, dict):
            raise ValueError("the parser answered something else than a map")
        return answer


class Parsers:
    """Parses bodies: those of ``large_body_bytes`` or more in up to ``processes`` parser
    processes (see the module docstring), the others on the event loop.

    ``timeout_s`` bounds one parse (the body arrived already; this is CPU time); ``metrics``
    counts a parser that had to be killed as ``background_errors{task="parser"}``.
    """

    def __init__(self, large_body_bytes: int, processes: int, timeout_s: float,
                 metrics: Metrics) -> None:
        self.large_body_bytes = large_body_bytes
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(processes)
        self._idle: list[_Parser] = []
        self._reaping: set[asyncio.Task[int]] = set()
        self._deaths = metrics.background_errors.labels("parser")

    async def parse(self, kind: str, model: ModelVersion, header: bytes | bytearray,
                    binary: BinarySection | None) -> Parsed:
        """:func:`parse_body`, here when the JSON part is small, else in a parser process."""
        if len(header) < self.large_body_bytes:
            return parse_body(kind, header, binary, model)
        return await self._parse_apart(kind, model, header, binary)

    async def _parse_apart(self, kind: str, model: ModelVersion, header: bytes | bytearray,
                           binary: BinarySection | None) -> Parsed:
        envelope = msgpack.packb({"kind": kind, "model": signature(model),
                                  "header": len(header),
                                  "binary": None if binary is None else len(binary.data)})
        parts: list[bytes | bytearray | memoryview] = [
            len(envelope).to_bytes(_LENGTH_BYTES, "little"), envelope, header]
        if binary is not None:
            parts.append(binary.data)
        async with self._slots:
            parser = await self._take()
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await parser.ask(parts)
            except TimeoutError as e:
                self._kill(parser)
                raise Overloaded(f"parsing the body took over {self.timeout_s:g} s; send "
                                 "smaller calls, or binary tensor data", 1) from e
            except (OSError, ValueError, EOFError, asyncio.IncompleteReadError,
                    msgpack.UnpackException) as e:
                self._kill(parser)
                raise Overloaded(f"the body parser stopped ({type(e).__name__}); retry, or "
                                 "send smaller calls", 1) from e
            except BaseException:  # cancelled mid-frame: its answer would desync the pipe
                self._kill(parser)
                raise
            self._idle.append(parser)
        if "invalid" in answer:
            raise InvalidInput(str(answer["invalid"]))
        if "ok" not in answer:
            raise RuntimeError(f"the body parser failed: {answer.get('error')}")
        ok = answer["ok"]
        bundle = wire.decode_bundle((_PARSED_ID,), ok["request"])
        return Parsed(bundle.request, ok["id"], frozenset(ok["binary_outputs"]))

    def running(self) -> list[int]:
        """The process ids of the idle parser processes still running."""
        return [p.process.pid for p in self._idle if p.process.returncode is None]

    async def _take(self) -> _Parser:
        """An idle parser still running, else a new one."""
        while self._idle:
            parser = self._idle.pop()
            if parser.process.returncode is None:
                return parser
            self._deaths.inc()
            log.warning("body parser process %d exited with %s; starting another",
                        parser.process.pid, parser.process.returncode)
        return await self._spawn()

    async def _spawn(self) -> _Parser:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modelgate.gateway.parsing",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            preexec_fn=child_preexec, limit=1 << 20)
        log.info("started body parser process %d", process.pid)
        return _Parser(process)

    def _kill(self, parser: _Parser) -> None:
        self._deaths.inc()
        log.warning("killed body parser process %d; the next large body starts another",
                    parser.process.pid)
        with contextlib.suppress(ProcessLookupError):
            parser.process.kill()
        task = asyncio.ensure_future(parser.process.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        """Stop every idle parser: end of input, then a kill if it lingers."""
        parsers, self._idle = self._idle, []
        for parser in parsers:
            if parser.process.stdin is not None:
                parser.process.stdin.close()
            try:
                await asyncio.wait_for(parser.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    parser.process.kill()
                await parser.process.wait()


if __name__ == "__main__":
    sys.exit(main())
