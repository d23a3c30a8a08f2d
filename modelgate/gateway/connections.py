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
stores a float), so they fire up to a second late. The same sweep closes connections idle past
uvicorn's keep-alive timeout (``KEEP_ALIVE_S`` in ``gateway/app.py``), instead of uvicorn's
timer per answer.

The same protocol sends each answer's head and body in one write (:class:`HeadWithBody`):
uvicorn writes them apart, two system calls and two TCP segments (two wake-ups of the
caller) per answer. Measured on the demo MLP at 32 connections: 1-2% more calls a second.

It also serves infer calls with small bodies itself (:class:`DirectCall`): the same endpoint,
auth, metrics and errors as through the app, without uvicorn's request cycle and the ASGI
messages, header checks and response objects around it -- about 7 us of a gateway's ~115 us
of CPU per call on a tiny model, 4-10% more calls a second. Everything else, and infer calls
with large, chunked or ``Expect: 100-continue`` bodies, takes uvicorn's cycle.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

import httptools
import orjson
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

SWEEP_INTERVAL_S = 1.0
BODY_GRACE_S = 1.0  # after the body deadline, for the route reading it to answer 408 first
EVICT_IDLE_S = 1.0
# Scope key set once a request's whole body is buffered (absent: it may still be coming).
BODY_ARRIVED = "modelgate.body_arrived"
# Scope key holding the whole body of a call the connection serves itself (DirectCall).
WHOLE_BODY = "modelgate.whole_body"
REFUSED_GRACE_S = 1.0  # a refused newcomer has this long to send the request it is refused
# File descriptors kept for everything but client sockets: Redis connections (the gateway's
# pools hold up to 66), the listening sockets, parser pipes, metric files, logs.
RESERVED_FDS = 128
# A head and a body shorter than this are joined into one buffer (cheaper than a vectored
# write for small answers); a longer body is written beside the head, not copied.
JOIN_BELOW_BYTES = 64 * 1024
# An infer call declaring a body of at most this is served by the protocol (DirectCall); a
# larger one takes uvicorn's cycle, whose flow control and streamed reading suit it.
DIRECT_MAX_BODY_BYTES = 64 * 1024


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


class DirectFront(Protocol):
    """What the protocol needs of the app to serve infer calls itself (``InferFastPath`` in
    ``gateway/app.py``)."""

    def direct_params(self, path: str) -> dict[str, str] | None:
        """The path parameters if ``path`` is an infer call's, else None."""

    async def respond(self, scope: Any, receive: Callable[[], Awaitable[Any]]) -> Response:
        """The call's response, errors included (never raises)."""


class ConnectionGuard:
    """The rules above, shared by every connection of one server; see the module docstring.
    With ``direct``, its connections serve infer calls with small bodies themselves."""

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_connections: int,
                 metrics: Metrics, direct: DirectFront | None = None) -> None:
        self.direct = direct
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
        while self.idle:  # by idle since: the first one still young ends the round
            connection, since = next(iter(self.idle.items()))
            if now - since < connection.timeout_keep_alive:
                break
            del self.idle[connection]
            connection.transport.close()


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
        call = self._direct_call()
        if call is not None:
            # No route reads this body against a timer: the sweep answers 408 at the deadline.
            self.deadline = self.loop.time() + self.guard.body_timeout_s
            self.cycle = call  # type: ignore[assignment]
            return
        self.deadline = self.loop.time() + self.guard.body_timeout_s + BODY_GRACE_S
        super().on_headers_complete()
        if self.cycle is not None:  # None: an upgrade request, which has no cycle
            self.cycle.transport = self.writes  # type: ignore[assignment]

    def _direct_call(self) -> DirectCall | None:
        """A :class:`DirectCall` for this request if the protocol can serve it, else None."""
        front = self.guard.direct
        parser = self.parser
        if (front is None or parser.get_method() != b"POST" or self.refused
                or self.expect_100_continue or self.root_path or parser.should_upgrade()
                or self.limit_concurrency is not None):
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a call: uvicorn queues it
        declared = None
        for name, value in self.headers:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
                break
        if declared is None or declared > DIRECT_MAX_BODY_BYTES:
            return None
        url = httptools.parse_url(self.url)
        if b"%" in url.path:
            return None  # escaped: uvicorn unquotes it
        path = url.path.decode("ascii")
        params = front.direct_params(path)
        if params is None:
            return None
        scope = self.scope
        scope["method"] = "POST"
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["path"] = path
        scope["raw_path"] = url.path
        scope["query_string"] = url.query or b""
        scope["path_params"] = params  # type: ignore[typeddict-unknown-key]
        return DirectCall(scope, version != "1.0" and parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        call = self.cycle
        if type(call) is DirectCall:
            call.body += body
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        call = self.cycle
        if type(call) is DirectCall:
            call.scope[WHOLE_BODY] = call.body  # nothing adds to it any more: not copied
            task = self.loop.create_task(self._serve(call))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        else:
            super().on_message_complete()
            if call is not None:
                # Every byte of the body is buffered: the route reading it cannot wait for
                # more, so it needs no deadline of its own (``gateway/body.py``).
                call.scope[BODY_ARRIVED] = True  # type: ignore[literal-required]
        self.deadline = None
        self.in_body = self.started = False

    async def _serve(self, call: DirectCall) -> None:
        front = self.guard.direct
        assert front is not None  # a DirectCall is made only with one
        response = await front.respond(call.scope, call.receive)
        call.response_complete = True
        if not (call.disconnected or self.transport.is_closing()):
            self._write_answer(call, response)
        if response.background is not None:
            await response.background()

    def _write_answer(self, call: DirectCall, response: Response) -> None:
        """The response in one write, then what uvicorn's cycle does after an answer."""
        head: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        closing = False  # the response says so itself
        for name, value in response.raw_headers:
            if name == b"connection" and b"close" in value.lower():
                call.keep_alive = False
                closing = True
            head += (name, b": ", value, b"\r\n")
        if not call.keep_alive and not closing:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        body = response.body
        self.writes.flush()  # nothing is held between answers; the order is kept if it were
        if len(body) < JOIN_BELOW_BYTES:
            head.append(body)
            self.transport.write(b"".join(head))
        else:
            self.transport.writelines((b"".join(head), body))
        if not call.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer armed after every answer and cancelled by
        # the next request (~1 us a call): the guard's sweep closes a connection idle past
        # the keep-alive timeout (``ConnectionGuard._sweep``).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.deadline is None and not self.refused:
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
            call = self.cycle
            if type(call) is DirectCall:  # what gateway/body.py answers on the other path
                self.writes.flush()
                self.transport.write(_json_response(408, (
                    f"the body did not arrive within {self.guard.body_timeout_s:g} s "
                    f"({len(call.body)} bytes came); send it faster, or in smaller calls, or "
                    "raise --body-timeout-s")))
        elif not self.refused:
            self.guard.count("header_timeout")
            if self.started and not responding:
                self.writes.flush()
                self.transport.write(_json_response(408, (
                    f"the request's headers did not arrive within "
                    f"{self.guard.header_timeout_s:g} s; send the whole request at once")))
        self.writes.close()  # what an answer wrote goes out first


class _NoEvent:
    def set(self) -> None:
        pass


class DirectCall:
    """An infer call the protocol serves itself (see the module docstring).

    It stands in for uvicorn's request cycle as the protocol's ``cycle``, so uvicorn's own
    code treats it as one: a request pipelined behind it is queued until it is answered, a
    shutdown lets it finish and then closes (``keep_alive``), a lost connection marks it
    ``disconnected``. Its body is complete before the call runs: the route takes it from the
    scope (``WHOLE_BODY``), and ``receive()`` has it all too.
    """

    __slots__ = ("body", "disconnected", "keep_alive", "response_complete", "scope")
    message_event = _NoEvent()  # uvicorn's connection_lost sets it; nothing waits on it

    def __init__(self, scope: Any, keep_alive: bool) -> None:
        scope[BODY_ARRIVED] = True  # the route reads it once it is all here
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.disconnected = False
        self.response_complete = False

    async def receive(self) -> dict[str, Any]:
        """The ASGI ``receive`` of the call: its body (empty after the first), or a disconnect
        once the caller is gone."""
        if self.disconnected:
            return {"type": "http.disconnect"}
        body, self.body = self.body, bytearray()
        return {"type": "http.request", "body": bytes(body), "more_body": False}


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
