"""The floor of a two-hop design on this host: the least a call can cost when it goes from an
HTTP front through Redis to a worker process and back, as modelgate's calls do.

``python -m bench.two_hop_floor --model M --port P`` starts a throwaway redis-server, one worker
process and a front that does nothing a real gateway could skip doing: one event loop
(uvloop) parsing HTTP with httptools, the JSON body with orjson, one input to a numpy array,
``XADD`` of a msgpack entry on a raw RESP connection; the worker blocks in ``XREADGROUP``,
runs ONNX Runtime (one thread, as modelgate's workers and the naive server), and answers with
``LPUSH`` (then ``XACK``/``XDEL``) on a raw connection; the front blocks in ``BLPOP`` and writes
the V2 answer. An input of ``wire.LARGE_INPUT_BYTES`` or more goes through shared memory (a
``modelgate.core.arena`` of the front's), as ``modelgate up``'s do, its entry carrying only
where; a body in the binary tensor extension (``Inference-Header-Content-Length``) is read as
modelgate reads one. No auth, admission, deadlines, bundling, metrics or stored answers: what it
costs is the hops themselves -- the writes to Redis, Redis's work and the wake-ups of the
processes each hop blocks -- plus the least of parsing and formatting.

``make trace`` measures it on the same calls as modelgate and the naive server, so the gap to
the floor is measured on the host at hand, in the same run.

With ``--batched`` (and ``--workers N``) it is the floor of a two-hop design's *throughput*,
what ``make bench`` runs beside modelgate at concurrency (``two-hop-floor-loaded``: JSON calls
on the MLPs, binary tensors on the CNN): the front writes the commands of one turn of its
event loop at once and pops up to a thousand answers per ``BLMPOP``; each worker takes what
waits, up to the batch size that gave it the most rows/s when it started (``best_batch``: 1,
2, 4, ... 16, a few tenths of a second each), runs it as one ``session.run`` and answers the
whole batch with one ``LPUSH``, ``XACK`` and ``XDEL``. That is the batching and coalescing a
real gateway does too, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hiredis
import httptools
import msgpack
import numpy as np
import orjson

from modelgate.core import arena
from modelgate.core.embedded_redis import start_redis
from modelgate.core.wire import LARGE_INPUT_BYTES

STREAM = b"floor:requests"
GROUP = b"floor"
REPLIES = b"floor:replies"


def command(*args: bytes | str | int) -> bytes:
    """One Redis command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


# ---------------------------------------------------------------- the worker


class SyncConnection:
    """A blocking RESP connection: write commands, read their replies in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def send(self, *commands: bytes) -> None:
        self.sock.sendall(b"".join(commands))

    def reply(self) -> Any:
        while True:
            found = self.reader.gets()
            if found is not False:
                return found
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.reader.feed(data)


def best_batch(session: Any, input_name: str, row_shape: Sequence[int],
               share_s: float = 0.25, sizes: Sequence[int] = (1, 2, 4, 8, 16)) -> int:
    """The batch size that gives the most rows/s on this host (synthetic rows, as modelgate's
    workers tune theirs: ``modelgate.worker.tuning``)."""
    best, best_rate = 1, 0.0
    for size in sizes:
        feed = {input_name: np.random.default_rng(0).random((size, *row_shape), np.float32)}
        session.run(None, feed)  # warm
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < share_s or runs < 2:
            session.run(None, feed)
            runs += 1
        rate = runs * size / elapsed
        if rate > best_rate:
            best, best_rate = size, rate
    return best


def run_worker(port: int, model: Path, index: int = 0, batched: bool = False) -> None:
    import onnxruntime as ort  # here: the front never loads it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    input_name = spec.name
    count = 1
    if batched:
        count = best_batch(session, input_name,
                           [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]])
        print(f"two-hop floor worker {index}: batches of up to {count} rows", file=sys.stderr,
              flush=True)
    connection = SyncConnection(port)
    read = command("XREADGROUP", "GROUP", GROUP, f"w{index}", "COUNT", count, "BLOCK", 0,
                   "STREAMS", STREAM, ">")
    shared = arena.ArenaReader()
    while True:
        connection.send(read)
        for _, entries in connection.reply():
            messages = [msgpack.unpackb(fields[1]) for _, fields in entries]
            inputs = [np.frombuffer(shared.decode(m["a"], bytes) if "a" in m else m["d"],
                                    "<f4").reshape(m["s"]) for m in messages]
            stacked = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
            output = session.run(None, {input_name: stacked})[0]
            answers, start = [], 0
            for message, rows in zip(messages, (len(i) for i in inputs), strict=True):
                part = output[start:start + rows]
                start += rows
                answers.append(msgpack.packb({
                    "i": message["i"], "s": list(part.shape),
                    "d": np.ascontiguousarray(part, "<f4").tobytes()}))
            ids = [entry_id for entry_id, _ in entries]
            connection.send(command("LPUSH", REPLIES, *answers),
                            command("XACK", STREAM, GROUP, *ids),
                            command("XDEL", STREAM, *ids))
            for _ in range(3):
                connection.reply()


# ---------------------------------------------------------------- the front


class RedisProtocol(asyncio.Protocol):
    """A RESP connection on the event loop; each reply goes to ``on_reply``."""

    def __init__(self, on_reply: Any) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (found := self.reader.gets()) is not False:
            self.on_reply(found)


class Front:
    def __init__(self, model_name: str, output_name: str, batched: bool = False) -> None:
        self.model_name = model_name
        self.output_name = output_name
        self.batched = batched
        self.waiting: dict[bytes, tuple[HttpProtocol, arena.Region | None]] = {}
        self.next_id = 0
        self.arena = arena.open_arena(64)
        self.commands: asyncio.Transport | None = None
        self.popper: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # batched: this turn's commands, written at its end
        self.pop_command = (command("BLMPOP", 0, 1, REPLIES, "LEFT", "COUNT", 1024) if batched
                            else command("BLPOP", REPLIES, 0))

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.commands, _ = await loop.create_connection(
            lambda: RedisProtocol(lambda _reply: None), "127.0.0.1", port)
        self.popper, _ = await loop.create_connection(
            lambda: RedisProtocol(self.answer), "127.0.0.1", port)
        self.pop()

    def pop(self) -> None:
        assert self.popper is not None
        self.popper.write(self.pop_command)

    def send(self, data: bytes) -> None:
        assert self.commands is not None
        if not self.batched:
            self.commands.write(data)
            return
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        assert self.commands is not None
        pending, self.pending = self.pending, []
        self.commands.write(b"".join(pending))

    def call(self, caller: HttpProtocol, body: bytes, header_length: int | None) -> None:
        if header_length is None:
            tensor = orjson.loads(body)["inputs"][0]
            data = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        else:
            tensor = orjson.loads(body[:header_length])["inputs"][0]
            data = np.frombuffer(memoryview(body)[header_length:], "<f4").reshape(
                tensor["shape"])
        self.next_id += 1
        call_id = b"%d" % self.next_id
        region = None
        if data.nbytes >= LARGE_INPUT_BYTES and self.arena is not None:
            region = self.arena.hold([data.data.cast("B")], 1)
        self.waiting[call_id] = (caller, region)
        if region is not None:
            entry = msgpack.packb({"i": call_id, "s": list(data.shape), "a": region.ref})
        else:
            entry = msgpack.packb({"i": call_id, "s": list(data.shape), "d": data.tobytes()})
        self.send(command("XADD", STREAM, "*", "p", entry))

    def answer(self, reply: Any) -> None:
        self.pop()
        for raw in reply[1] if self.batched else [reply[1]]:
            self.reply(msgpack.unpackb(raw))

    def reply(self, message: Any) -> None:
        waiting = self.waiting.pop(message["i"], None)
        if waiting is None:
            return
        caller, region = waiting
        if region is not None and self.arena is not None:
            self.arena.release(region)
        output = np.frombuffer(message["d"], "<f4").reshape(message["s"])
        caller.respond(orjson.dumps({
            "model_name": self.model_name,
            "outputs": [{"name": self.output_name, "datatype": "FP32",
                         "shape": list(output.shape), "data": output.ravel().tolist()}]}))


class HttpProtocol(asyncio.Protocol):
    front: Front

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.header_length: int | None = None  # Inference-Header-Content-Length
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = bytearray()
        self.header_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self.header_length = int(value)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.parser.get_method() == b"GET":  # the readiness probe
            self.respond(b'{"ready": true}')
            return
        self.front.call(self, bytes(self.body), self.header_length)

    def respond(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))


async def serve(port: int, redis_port: int, model_name: str, output_name: str,
                batched: bool) -> None:
    front = Front(model_name, output_name, batched)
    await front.connect(redis_port)
    HttpProtocol.front = front
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    if front.arena is not None:
        front.arena.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.two_hop_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="path of the .onnx file")
    parser.add_argument("--name", default=None, help="model name in the answers")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--batched", action="store_true",
                        help="the throughput floor: coalesced writes, batches in the workers")
    parser.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_of is not None:
        run_worker(args.worker_of, args.model, args.index, args.batched)
        return 0
    import onnx
    import uvloop

    output_name = onnx.load(str(args.model), load_external_data=False).graph.output[0].name
    redis, url = start_redis()
    redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
    setup = SyncConnection(redis_port)
    setup.send(command("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM"))
    setup.reply()
    workers = [subprocess.Popen(
        [sys.executable, "-m", "bench.two_hop_floor", "--model", str(args.model),
         "--worker-of", str(redis_port), "--index", str(index),
         *(["--batched"] if args.batched else [])],
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for index in range(args.workers)]
    try:
        uvloop.run(serve(args.port, redis_port, args.name or args.model.parent.parent.name,
                         output_name, args.batched))
    finally:
        for process in (*workers, redis):
            process.terminate()
            process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
