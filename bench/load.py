"""Load points and the load generator that drives them, always from a separate process.

The generator is Debian's ``wrk`` (closed loop: ``concurrency`` connections, each sends its next
request when the previous answer arrived), with a Lua script that POSTs the workload's body and
prints one machine-readable ``BENCH_RESULT {json}`` line from wrk's ``done`` hook, so nothing is
scraped from wrk's rounded human summary. Without wrk (and no root to ``apt-get install`` it),
``bench.pyclient`` does the same closed loop with asyncio sockets and prints the same line; it
is slower, so at high concurrency it can be the bottleneck, and the report says which one ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

RESULT_MARK = "BENCH_RESULT "

JSON_HEADERS = {"Content-Type": "application/json"}

# The body is read from a file, byte for byte (a binary tensor body in a Lua long string would
# have its carriage returns rewritten).
_WRK_SCRIPT = """\
wrk.method = "POST"
%s
local body_file = io.open([==[%s]==], "rb")
wrk.body = body_file:read("*a")
body_file:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\":%%.0f,\\"duration_us\\":%%.0f,\\"p50_us\\":%%.1f,\\"p99_us\\":%%.1f," ..
    "\\"non_2xx\\":%%.0f,\\"connect\\":%%.0f,\\"read\\":%%.0f,\\"write\\":%%.0f,\\"timeout\\":%%.0f}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


class LoadError(RuntimeError):
    """The load generator failed or printed no result."""


@dataclass(frozen=True, slots=True)
class LoadPoint:
    concurrency: int  # connections, each with one request in flight
    duration_s: int  # measured
    warmup_s: int  # run first at the same concurrency, not measured


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int  # answers received (any status)
    duration_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # HTTP status >= 400 (wrk's definition; nothing here redirects)
    socket_errors: int  # connect + read + write errors + request timeouts

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_result(output: str) -> LoadResult:
    """The ``BENCH_RESULT`` line of a generator's output (latencies there are microseconds)."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                raw = orjson.loads(line[len(RESULT_MARK):])
                return LoadResult(
                    requests=int(raw["requests"]),
                    duration_s=raw["duration_us"] / 1e6,
                    p50_ms=raw["p50_us"] / 1000.0,
                    p99_ms=raw["p99_us"] / 1000.0,
                    non_2xx=int(raw["non_2xx"]),
                    socket_errors=int(raw["connect"] + raw["read"] + raw["write"]
                                      + raw["timeout"]),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                raise LoadError(f"unreadable result line {line!r}") from e
    raise LoadError(f"the load generator printed no {RESULT_MARK.strip()} line:\n{output[-2000:]}")


class LoadClient(ABC):
    name: str
    version: str

    def __init__(self, work_dir: Path, request_timeout_s: int) -> None:
        self.work_dir = work_dir
        self.request_timeout_s = request_timeout_s

    @abstractmethod
    def command(self, url: str, body: bytes, concurrency: int, duration_s: int,
                headers: Mapping[str, str]) -> list[str]:
        ...

    def run(self, url: str, body: bytes, concurrency: int, duration_s: int,
            log_path: Path, headers: Mapping[str, str] = JSON_HEADERS) -> LoadResult:
        """Drive ``url`` for ``duration_s``; the generator is killed if it overruns."""
        if urllib.parse.urlsplit(url).hostname != "127.0.0.1":
            raise LoadError(f"refusing to load {url}: the benchmark only targets 127.0.0.1")
        command = self.command(url, body, concurrency, duration_s, headers)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=duration_s + self.request_timeout_s + 30)
        except subprocess.TimeoutExpired as e:
            raise LoadError(f"{self.name} overran its {duration_s}s run: {command}") from e
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise LoadError(f"{self.name} exited with {done.returncode}: {done.stderr.strip()}")
        return parse_result(done.stdout)


class Wrk(LoadClient):
    name = "wrk"

    def __init__(self, binary: str, work_dir: Path, request_timeout_s: int) -> None:
        super().__init__(work_dir, request_timeout_s)
        self.binary = binary
        # `wrk -v` prints its banner and exits 1.
        banner = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        banner_text = (banner.stdout or banner.stderr).split("[")[0].strip()
        self.version = banner_text.removeprefix("wrk ")
        self._scripts: dict[tuple[bytes, tuple[tuple[str, str], ...]], Path] = {}

    def _script(self, body: bytes, headers: Mapping[str, str]) -> Path:
        key = (body, tuple(sorted(headers.items())))
        if key not in self._scripts:
            number = len(self._scripts)
            body_path = self.work_dir / f"post-{number}.body"
            body_path.write_bytes(body)
            if "]==]" in str(body_path) or any('"' in k + v or "\\" in k + v
                                               for k, v in headers.items()):
                raise LoadError("the body's path or a header cannot go into a Lua string")
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            path = self.work_dir / f"post-{number}.lua"
            path.write_text(_WRK_SCRIPT % (lines, body_path, RESULT_MARK))
            self._scripts[key] = path
        return self._scripts[key]

    def command(self, url: str, body: bytes, concurrency: int, duration_s: int,
                headers: Mapping[str, str]) -> list[str]:
        return [self.binary, "-t1", f"-c{concurrency}", f"-d{duration_s}s",
                f"--timeout={self.request_timeout_s}s", "--latency",
                "-s", str(self._script(body, headers)), url]


class PythonClient(LoadClient):
    name = "bench.pyclient"
    version = "asyncio sockets (fallback)"

    def command(self, url: str, body: bytes, concurrency: int, duration_s: int,
                headers: Mapping[str, str]) -> list[str]:
        body_path = self.work_dir / "body.json"
        body_path.write_bytes(body)
        return [sys.executable, "-m", "bench.pyclient", "--url", url,
                "--body-file", str(body_path), "--concurrency", str(concurrency),
                "--duration-s", str(duration_s), "--timeout-s", str(self.request_timeout_s),
                *(arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}"))]


class GrpcClient(LoadClient):
    """For targets reached over gRPC (URLs ``grpc://HOST:PORT/MODEL``): bench.grpcclient."""

    name = "bench.grpcclient"
    version = "tritonclient.grpc.aio"

    def command(self, url: str, body: bytes, concurrency: int, duration_s: int,
                headers: Mapping[str, str]) -> list[str]:
        body_path = self.work_dir / "grpc-body.json"
        body_path.write_bytes(body)
        return [sys.executable, "-m", "bench.grpcclient", "--url", url,
                "--body-file", str(body_path), "--concurrency", str(concurrency),
                "--duration-s", str(duration_s), "--timeout-s", str(self.request_timeout_s)]


def _install_wrk() -> str | None:
    """``apt-get install -y wrk`` when running as root; the binary, or None if that failed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print("bench: wrk not found; trying `apt-get install -y wrk`", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A fresh container has no package lists yet: update once if the first try fails.
    for command in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "wrk"]):
        if shutil.which("wrk"):
            break
        try:
            subprocess.run(command, env=env, timeout=300, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return None
    return shutil.which("wrk")


def make_client(kind: str, work_dir: Path, request_timeout_s: int) -> LoadClient:
    """``kind`` is ``wrk``, ``python`` or ``auto`` (wrk, installing it if possible, else python)."""
    if kind == "python":
        return PythonClient(work_dir, request_timeout_s)
    binary = shutil.which("wrk") or _install_wrk()
    if binary is not None:
        return Wrk(binary, work_dir, request_timeout_s)
    if kind == "wrk":
        raise LoadError("wrk is not installed (apt-get install wrk)")
    print("bench: no wrk; falling back to the Python load generator", flush=True)
    return PythonClient(work_dir, request_timeout_s)
