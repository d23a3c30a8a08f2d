"""Sockets that never finish a request, and more sockets than the gateway takes, over raw TCP.

Issue 12: a socket with partial headers (no key needed) or a partial body stayed open for good,
and with a lowered file limit idle sockets made a legitimate call fail. The gateway here runs
with short timeouts and a small connection limit so each case shows in seconds; its answers,
like every other, are JSON.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest

from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from tests import metrics
from tests.models import write_repository
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 24
# The gateway checks deadlines once a second and gives an app reading a body a second more
# to answer first; past that, on a busy machine, the test has waited long enough.
SLACK_S = 3.0
INFER = b"/v2/models/mlp/infer"
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                               "data": [1, 2, 3, 4]}]}).encode()


@dataclass
class Gateway:
    port: int
    processes: Processes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("connections-models"),
                            {"mlp": onnx_models["mlp"]})


@pytest.fixture(scope="module")
def redis_for_module() -> Iterator[str]:
    process, url = start_redis()
    try:
        yield url
    finally:
        stop_process(process, timeout_s=5)
        if process.stderr is not None:
            process.stderr.close()


def start_gateway(processes: Processes, repo: Path, redis_url: str, *flags: str,
                  open_files: int | None = None, label: str = "gateway") -> Gateway:
    port = free_port()
    processes.spawn(label, ["gateway", "--models", str(repo), "--redis-url", redis_url,
                            "--port", str(port), *flags], open_files=open_files)
    gateway = Gateway(port, processes)
    wait_until(lambda: _ready(gateway.url), 60, f"{gateway.url} ready",
               processes.check_alive, processes.logs)
    return gateway


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, repo: Path,
            redis_for_module: str) -> Iterator[Gateway]:
    processes = Processes(tmp_path_factory.mktemp("connections-logs"))
    try:
        processes.spawn("worker", ["worker", "--models", str(repo), "--model", "mlp",
                                   "--redis-url", redis_for_module])
        yield start_gateway(processes, repo, redis_for_module,
                            "--header-timeout-s", str(HEADER_TIMEOUT_S),
                            "--body-timeout-s", str(BODY_TIMEOUT_S),
                            "--max-connections", str(MAX_CONNECTIONS))
    finally:
        processes.stop(labels_first=("gateway",))


# --------------------------------------------------------------------------- raw sockets


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


@dataclass
class Seen:
    data: bytes
    closed: bool  # the server closed (EOF or reset) before the wait ended
    after_s: float

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1]) if self.data.startswith(b"HTTP/1.1 ") else 0

    def header(self, name: str) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        return next((v.strip() for n, _, v in (h.partition(":") for h in head)
                     if n.strip().lower() == name), None)

    def json(self) -> dict[str, str]:
        return json.loads(self.data.split(b"\r\n\r\n", 1)[1])


def read_until_closed(sock: socket.socket, within_s: float) -> Seen:
    """Everything the server sends until it closes the socket, or ``within_s`` passes."""
    started = time.monotonic()
    data = b""
    while (left := within_s - (time.monotonic() - started)) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Seen(data, True, time.monotonic() - started)
        if not chunk:
            return Seen(data, True, time.monotonic() - started)
        data += chunk
    return Seen(data, False, time.monotonic() - started)


def request(path: bytes = INFER, body: bytes = BODY, method: bytes = b"POST") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nhost: test\r\ncontent-type: application/json"
            b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def read_response(sock: socket.socket) -> Seen:
    """One whole response (its head and its content-length body), without waiting for EOF."""
    started = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return Seen(data, True, time.monotonic() - started)
        data += chunk
    seen = Seen(data, False, 0.0)
    length = int(seen.header("content-length") or 0)
    while len(data.split(b"\r\n\r\n", 1)[1]) < length:
        data += sock.recv(65536)
    return Seen(data, False, time.monotonic() - started)


def assert_json_error(seen: Seen, status: int, *fragments: str) -> None:
    assert seen.status == status, seen.data[:300]
    assert (seen.header("content-type") or "").startswith("application/json"), seen.data[:300]
    message = seen.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------- timeouts


def test_a_silent_socket_is_closed_after_the_header_timeout(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        seen = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert seen.closed and seen.data == b"", seen
    assert seen.after_s >= HEADER_TIMEOUT_S - 0.1


def test_partial_headers_get_a_json_408_and_the_socket_is_closed(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: test\r\ncontent-")
        seen = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert seen.closed, seen
    assert_json_error(seen, 408, "header")


def test_a_trickled_header_does_not_move_its_deadline(gateway: Gateway) -> None:
    """A byte every 0.2 s keeps a socket busy, never complete: the deadline holds."""
    with connect(gateway.port) as sock:
        stop = threading.Event()

        def trickle() -> None:
            for byte in b"GET /v2/health/live HTTP/1.1\r\nx-slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            seen = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
        finally:
            stop.set()
            thread.join()
    assert seen.closed, seen
    assert_json_error(seen, 408, "header")


def test_a_partial_body_gets_a_json_408_and_the_socket_is_closed(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(request()[:-10])
        seen = read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S)
    assert seen.closed, seen
    assert_json_error(seen, 408, "body")


def test_a_body_no_route_reads_cannot_hold_the_socket(gateway: Gateway) -> None:
    """A route that answers without reading the body (405 here): the rest of the body must
    still arrive in time."""
    with connect(gateway.port) as sock:
        sock.sendall(request(path=b"/v2/health/live")[:-10])
        seen = read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S)
    assert seen.closed, seen
    assert_json_error(seen, 405)


def test_an_unreadable_request_gets_a_json_400(gateway: Gateway) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        seen = read_until_closed(sock, SLACK_S)
    assert seen.closed
    assert_json_error(seen, 400)


def test_a_complete_call_on_a_kept_alive_connection_still_works(gateway: Gateway) -> None:
    """The control: timeouts do not touch a client that sends whole requests, over and over
    on one connection, with pauses longer than the header timeout between them."""
    with connect(gateway.port) as sock:
        for _ in range(3):
            sock.sendall(request())
            assert read_response(sock).status == 200
        # Idle keep-alive is bounded by its own 75 s, not by the header timeout.
        sock.settimeout(HEADER_TIMEOUT_S + 1.0)
        with contextlib.suppress(TimeoutError):
            unasked = sock.recv(1)
            pytest.fail(f"the server closed or wrote {unasked!r} on an idle connection")
        sock.settimeout(10)
        sock.sendall(request())
        assert read_response(sock).status == 200


def test_a_gateway_on_an_inherited_socket_has_the_same_deadlines(
        tmp_path: Path, repo: Path, redis_for_module: str, gateway: Gateway) -> None:
    """``modelgate up`` hands its gateways a listening socket (``--fd``) instead of a port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    processes = Processes(tmp_path)
    try:
        port = listener.getsockname()[1]
        processes.spawn("gateway-fd", [
            "gateway", "--models", str(repo), "--redis-url", redis_for_module,
            "--fd", str(listener.fileno()), "--header-timeout-s", str(HEADER_TIMEOUT_S)],
            pass_fds=[listener.fileno()])
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}"), 60, "the gateway on --fd",
                   processes.check_alive, processes.logs)
        with connect(port) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
            seen = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
        assert seen.closed, seen
        assert_json_error(seen, 408, "header")
    finally:
        processes.stop()
        listener.close()


# --------------------------------------------------------------------------- the limit


def metric(url: str, name: str, **labels: str) -> float:
    return metrics.value(metrics.scrape(url), name, **labels)


def test_idle_keepalive_connections_make_room_for_a_new_caller(gateway: Gateway) -> None:
    """Past the limit the oldest idle keep-alive connection is closed for the newcomer, which
    is served: idle sockets count against the limit but never starve a caller."""
    evicted_before = metric(gateway.url, "modelgate_connections_closed_total", reason="evicted")
    with ExitStack() as stack:
        idle = []
        for _ in range(MAX_CONNECTIONS):
            sock = stack.enter_context(connect(gateway.port))
            sock.sendall(request(path=b"/v2/health/live", body=b"", method=b"GET"))
            assert read_response(sock).status == 200
            idle.append(sock)

        def newcomer_served() -> bool:
            with connect(gateway.port) as sock:
                sock.sendall(request())
                return read_response(sock).status == 200

        # A connection idle for less than a second is never closed (its client may be about
        # to send): the first newcomers may be refused.
        wait_until(newcomer_served, 10, "a newcomer to be served")
        closed = [s for s in idle if read_until_closed(s, 0.5).closed]
    assert closed, "no idle connection was closed to make room"
    assert metric(gateway.url, "modelgate_connections_closed_total",
                  reason="evicted") > evicted_before


def test_past_the_limit_with_no_idle_connection_the_answer_is_a_json_503(
        gateway: Gateway) -> None:
    with ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):  # busy: each is sending its headers
            sock = stack.enter_context(connect(gateway.port))
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: test\r\n")
        with connect(gateway.port) as sock:
            sock.sendall(request())
            seen = read_until_closed(sock, SLACK_S)
    assert_json_error(seen, 503, "connections")
    assert seen.header("retry-after") == "1" and seen.closed


def test_a_low_file_limit_does_not_starve_a_legitimate_call(
        tmp_path: Path, repo: Path, redis_for_module: str, gateway: Gateway) -> None:
    """With 256 file descriptors and 400 idle sockets, a call still gets its answer: the
    gateway holds fewer connections than it has descriptors, and makes room by closing the
    oldest idle ones (before, accept() failed with EMFILE and the call hung). The module's
    worker serves it."""
    processes = Processes(tmp_path)
    try:
        gateway = start_gateway(processes, repo, redis_for_module, open_files=256,
                                label="gateway-256")
        with ExitStack() as stack:
            for _ in range(400):
                stack.enter_context(connect(gateway.port))

            def served() -> bool:
                try:
                    return httpx.post(f"{gateway.url}/v2/models/mlp/infer", content=BODY,
                                      headers={"content-type": "application/json"},
                                      timeout=3).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(served, 15, "a call to be served", processes.check_alive,
                       processes.logs)
        assert "Too many open files" not in (tmp_path / "gateway-256.log").read_text()
    finally:
        processes.stop()
