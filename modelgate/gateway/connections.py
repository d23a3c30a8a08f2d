"""What a TCP connection may cost the gateway: header and body deadlines, a connection limit.

uvicorn bounds none of it: a socket that sends nothing, half a request line or half a body
stays open for good, each one a file descriptor and a protocol object, and enough of them
exhaust the descriptors a legitimate call needs. :class:`ConnectionGuard` holds every
connection of one gateway process to three rules, enforced in a subclass of uvicorn's
httptools protocol (an ASGI middleware never sees a request before its headers are complete):

- **Headers** must be complete ``header_timeout_s`` after the connection opened, or after the
  first byte of the next request on a kept-alive connection. A trickle of bytes does not move
  the deadline. Past it: a JSON 408 if any of the request arrived, else the socket is closed.
- **A body** must be complete ``body_timeout_s`` after its headers. The route reading it
  answers 408 itself (``gateway/body.py``); a body no route reads is cut off
  ``BODY_GRACE_S`` later.
- **At most** ``max_connections`` **open**. Idle keep-alive connections count against the
  limit but never starve a caller: a connection arriving at the limit closes the one idle
  longest (between requests, or open and silent, for ``EVICT_IDLE_S`` at least; a client
  about to reuse a connection it just used keeps it). With none idle, the newcomer's request
  gets a JSON 503 with ``Retry-After: 1`` and the socket is closed; past ``refusal_slack``
  such newcomers it is closed at once, so descriptors stay bounded under a flood.

Deadlines are checked by one sweep a second, not a timer per request (the hot path only
stores a float), so they fire up to a second late. Idle keep-alive connections keep uvicorn's
own timeout (``KEEP_ALIVE_S`` in ``gateway/app.py``).

The same protocol sends each answer's head and body in one write (:class:`HeadWithBody`):
uvicorn writes them apart, two system calls and two TCP segments (two wake-ups of the
caller) per answer. Measured on the demo MLP at 32 connections: 1-2% more calls a second.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

SWEEP_INTERVAL_S = 1.0
BODY_GRACE_S = 1.0  # after the body deadline, for the route reading it to answer 408 first
EVICT_IDLE_S = 1.0
# Scope key set once a request's whole body is buffered (absent: it may still be coming).
BODY_ARRIVED = "modelgate.body_arrived"
REFUSED_GRACE_S = 1.0  # a refused newcomer has this long to send the request it is refused
# File descriptors kept for everything but client sockets: Redis connections (the gateway's
# pools hold up to 66), the listening sockets, parser pipes, metric files, logs.
RESERVED_FDS = 128
# A head and a body shorter than this are joined into one buffer (cheaper than a vectored
# write for small answers); a longer body is written beside the head, not copied.
JOIN_BELOW_BYTES = 64 * 1024


def connection_budget(max_connections: int) -> int:
    """The connections this process can hold within its file descriptor limit.

    Raises the soft limit towards the hard one if ``max_connections`` needs it; if the hard
    limit is still too low, the budget is what fits, with RESERVED_FDS (at most half the
    limit) kept for everything else, and a warning says so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit to %d: %s", raised, e)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    fits = soft - min(RESERVED_FDS, soft // 2)
    if fits < max_connections:
        log.warning("--max-connections %d does not fit in %d file descriptors (ulimit -n); "
                    "holding at most %d connections", max_connections, soft, fits)
        return max(1, fits)
    return max_connections


def _json_response(status: int, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return (STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"connection: close\r\n\r\n" + body)


class ConnectionGuard:
    """The rules above, shared by every connection of one server; see the module docstring."""

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_connections: int,
                 metrics: Metrics) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        # Newcomers over the limit that wait to be told so; more are closed at once.
        self.refusal_slack = max(1, min(RESERVED_FDS // 2, max_connections // 4))
        self.metrics = metrics
        self.connections: set[GuardedProtocol] = set()
        self.idle: OrderedDict[GuardedProtocol, float] = OrderedDict()  # by idle since
        self.refusing = 0
        self._sweeping = False
        self._closed = {reason: metrics.connections_closed.labels(reason) for reason in
                        ("header_timeout", "body_timeout", "evicted", "refused")}

    def count(self, reason: str) -> None:
        """One connection closed for ``reason`` (modelgate_connections_closed_total)."""
        self._closed[reason].inc()

    def protocol(self) -> type[GuardedProtocol]:
        """The protocol class for uvicorn's ``http`` setting, bound to this guard."""
        return type("GuardedHttpProtocol", (GuardedProtocol,), {"guard": self})

    # ------------------------------------------------------------------ events

    def opened(self, connection: GuardedProtocol, now: float) -> None:
        if not self._sweeping:
            self._sweeping = True
            connection.loop.call_later(SWEEP_INTERVAL_S, self._sweep, connection.loop)
        self.connections.add(connection)
        connection.deadline = now + self.header_timeout_s
        if len(self.connections) > self.max_connections and not self._evict(now):
            self._refuse(connection, now)
            return
        self.idle[connection] = now

    def closed(self, connection: GuardedProtocol) -> None:
        self.connections.discard(connection)
        self.idle.pop(connection, None)
        if connection.refused:
            connection.refused = False
            self.refusing -= 1

    def _evict(self, now: float) -> bool:
        """Close the connection idle longest, if it was idle long enough."""
        if not self.idle:
            return False
        victim, since = next(iter(self.idle.items()))
        if now - since < EVICT_IDLE_S:
            return False  # the oldest is too young, so are all the others
        del self.idle[victim]
        self.connections.discard(victim)  # gone now, whenever its close completes
        victim.transport.close()
        self.count("evicted")
        return True

    def _refuse(self, connection: GuardedProtocol, now: float) -> None:
        self.count("refused")
        if self.refusing >= self.refusal_slack:
            connection.transport.close()
            return
        self.refusing += 1
        connection.refused = True
        connection.deadline = now + REFUSED_GRACE_S

    async def refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI app a refused connection's request gets: a JSON 503."""
        body = orjson.dumps({"error": (
            f"this gateway holds {self.max_connections} connections, its limit, and none is "
            "idle; retry shortly, or spread calls across gateway processes")})
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ the sweep

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(SWEEP_INTERVAL_S, self._sweep, loop)
        now = loop.time()
        self.metrics.connections.set(len(self.connections))
        for connection in [c for c in self.connections
                           if c.deadline is not None and c.deadline <= now]:
            connection.expire()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a :class:`ConnectionGuard` (set by
    :meth:`ConnectionGuard.protocol`)."""

    guard: ClassVar[ConnectionGuard]
    deadline: float | None = None  # when the phase in progress must be done
    in_body = False  # the phase is a body (else headers, or nothing when deadline is None)
    started = False  # bytes of the current request arrived
    refused = False
    writes: HeadWithBody  # what the request cycles write to (set when the connection opens)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.writes = HeadWithBody(transport, self.loop)
        self.guard.opened(self, self.loop.time())
        if self.refused:
            self.app = self.guard.refuse

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.guard.idle.pop(self, None)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.started = True
        if self.deadline is None:  # the first byte after a response: the next request's
            self.deadline = self.loop.time() + self.guard.header_timeout_s

    def on_headers_complete(self) -> None:
        self.in_body = True
        self.deadline = self.loop.time() + self.guard.body_timeout_s + BODY_GRACE_S
        super().on_headers_complete()
        if self.cycle is not None:  # None: an upgrade request, which has no cycle
            self.cycle.transport = self.writes  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None:
            # Every byte of the body is buffered: the route reading it cannot wait for more,
            # so it needs no deadline of its own (``gateway/body.py``).
            self.cycle.scope[BODY_ARRIVED] = True  # type: ignore[literal-required]
        self.deadline = None
        self.in_body = self.started = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (not self.transport.is_closing() and not self.pipeline and self.deadline is None
                and not self.refused):
            self.guard.idle[self] = self.loop.time()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, as JSON like every other error."""
        self.writes.flush()
        self.transport.write(_json_response(400, f"{msg} Send an HTTP/1.1 request."))
        self.transport.close()

    def expire(self) -> None:
        """The phase in progress is past its deadline (called by the guard's sweep)."""
        self.deadline = None
        responding = self.cycle is not None and not self.cycle.response_complete
        if self.in_body:
            self.guard.count("body_timeout")
        elif not self.refused:
            self.guard.count("header_timeout")
            if self.started and not responding:
                self.writes.flush()
                self.transport.write(_json_response(408, (
                    f"the request's headers did not arrive within "
                    f"{self.guard.header_timeout_s:g} s; send the whole request at once")))
        self.writes.close()  # what an answer wrote goes out first


class HeadWithBody:
    """The transport a request cycle writes to: holds an answer's head (uvicorn's first write)
    until the first piece of its body, and writes both at once.

    A head is never held past the current step of the event loop, so a streamed answer whose
    body comes later still gets its head at once. Any other write, and a close, first sends
    what is held, so bytes go out in the order they were written.
    """

    __slots__ = ("held", "loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is None:
            self.held = data
            self.loop.call_soon(self.flush)
        else:
            self.held = None
            if len(data) < JOIN_BELOW_BYTES:
                self.transport.write(held + data)
            else:  # one vectored write: no copy of a large body
                self.transport.writelines((held, data))

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
