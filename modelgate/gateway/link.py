"""The dispatcher's connections to Redis: commands written at once, replies read by callbacks.

Every call crosses two of them (the writer's ``XADD``, the reader's ``BLMPOP``), and on those
redis-py's asyncio layers cost more than the rest of the dispatcher: a stream reader and a
parser object per read, a timeout context per reply, and with a socket timeout every write
run under ``asyncio.wait_for`` (a task of its own on Python 3.11: two more turns of the event
loop before the request reaches Redis). A :class:`Link` is an ``asyncio.Protocol`` that feeds
what arrives to hiredis and resolves one future per exchange when its last reply is in.

redis-py still makes the connection -- address, TLS, ``AUTH``, ``SELECT``, the client name:
whatever the URL and the client's settings say -- and then hands the socket over
(:meth:`Link.open`). Each exchange carries its own deadline, as the client's socket timeout
bounded each of its reads and writes: one watchdog timer a link, checking every
``WATCH_INTERVAL_S`` while an exchange with a deadline waits, fails them all and closes the
connection once one is past it. A timeout context per exchange (``asyncio.timeout``) cost
~10 us of the gateway's CPU a call each, two a call, for a bound that only ever fires when
Redis has stopped answering; this one fires up to ``WATCH_INTERVAL_S`` late.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

WATCH_INTERVAL_S = 0.1  # how late an exchange past its deadline may be failed


def refusal(error: ResponseError) -> ResponseError:
    """A command's error reply as redis-py would raise it (``OOM``: OutOfMemoryError)."""
    message = str(error)
    return OutOfMemoryError(message) if message.startswith("OOM") else error


@dataclass(slots=True)
class _Exchange:
    count: int  # replies it waits for
    future: asyncio.Future[list[Any]]
    on_replies: Callable[[list[Any]], None] | None
    expires: float  # the event loop's time past which it fails; inf: never
    replies: list[Any] = field(default_factory=list)


class Link(asyncio.Protocol):
    """One connection to Redis. :meth:`exchange` writes commands and returns a future of
    their replies, in order; a command's error reply is its ``ResponseError`` in the list,
    not raised. A lost connection fails every exchange waiting on it with ConnectionError, an
    exchange past its deadline every one with TimeoutError (redis-py's, as its socket timeout
    raised), closing the connection: a reply may still come on it."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[_Exchange] = deque()
        self._stream_writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, client: aioredis.Redis) -> Link:
        """A link to the Redis of ``client``, connected as the client's connections are
        (its pool's connection class and settings), the socket then read by the link."""
        pool = client.connection_pool
        # No socket timeout: the caller bounds the whole exchange, this handshake included.
        connection = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        await connection.connect()
        # redis-py's asyncio connections keep their stream writer here (since 4.2; the
        # pyproject pins the major version this was checked against).
        writer: asyncio.StreamWriter | None = getattr(connection, "_writer", None)
        if writer is None:
            raise RedisConnectionError("Redis closed the connection while it was made")
        link = cls()
        transport = writer.transport
        transport.set_protocol(link)
        link.transport = transport
        # Kept: a stream writer collected while its transport is open closes the transport.
        link._stream_writer = writer
        # The connection object forgets the socket: closing it is the link's from now on.
        connection._reader = connection._writer = None
        return link

    def exchange(self, buffers: list[bytes | memoryview], count: int,
                 on_replies: Callable[[list[Any]], None] | None = None,
                 expires: float = math.inf) -> asyncio.Future[list[Any]]:
        """Write ``buffers`` (``count`` commands) now; the future of their ``count`` replies,
        failed with TimeoutError if they are not all in by ``expires`` (the event loop's time).

        ``on_replies`` is called with them as soon as they are read, before the future is
        resolved: what it does needs no turn of the event loop to wake a task first. What it
        raises fails the future."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append(_Exchange(count, future, on_replies, expires))
        if expires != math.inf and self._watch is None:
            self._watch = loop.call_later(WATCH_INTERVAL_S, self._check_deadlines)
        self.transport.writelines(buffers)
        return future

    def close(self) -> None:
        """Close the connection; exchanges still waiting fail (``connection_lost``)."""
        self.closed = True
        self._stop_watching()
        if self.transport is not None:
            self.transport.close()

    def _check_deadlines(self) -> None:
        self._watch = None
        if self.closed or not self._waiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if any(exchange.expires <= now for exchange in self._waiting):
            self._fail(RedisTimeoutError("Redis did not answer in time"))
        elif any(exchange.expires != math.inf for exchange in self._waiting):
            self._watch = loop.call_later(WATCH_INTERVAL_S, self._check_deadlines)

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self._fail(RedisConnectionError(f"Redis sent bytes that are not its protocol: {e}"))
                return
            if reply is False:
                return
            if not self._waiting:  # nothing was asked: the stream cannot be trusted any more
                self._fail(RedisConnectionError("Redis sent a reply that nothing asked for"))
                return
            exchange = self._waiting[0]
            exchange.replies.append(refusal(reply) if isinstance(reply, ResponseError)
                                    else reply)
            if len(exchange.replies) == exchange.count:
                self._waiting.popleft()
                if exchange.future.done():  # cancelled meanwhile: nobody waits for them
                    continue
                if exchange.on_replies is not None:
                    try:
                        exchange.on_replies(exchange.replies)
                    except Exception as e:  # the caller's to handle, not the connection's
                        exchange.future.set_exception(e)
                        continue
                exchange.future.set_result(exchange.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"Redis closed the connection{why}"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self._stop_watching()
        waiting, self._waiting = self._waiting, deque()
        for exchange in waiting:
            if not exchange.future.done():
                exchange.future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
