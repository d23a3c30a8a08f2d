"""Servers under test. A target starts on a free 127.0.0.1 port, proves it answers the workload
correctly, and stops with everything it started, whatever happened in between.

Every target here is a local command (``ProcessTarget``); the BentoML peer (``bench.peer``) is
one too, with its own venv, request body and answer format. One that runs elsewhere (a
container) subclasses :class:`Target` with its own ``start``/``stop``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cpu import process_tree, start_time
from bench.goals import TWO_HOP, TWO_HOP_LOADED
from bench.load import JSON_HEADERS
from bench.workloads import Workload, binary_body, check_answer

NPROC = len(os.sched_getaffinity(0))

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class TargetFailed(RuntimeError):
    """A target did not start, did not answer correctly, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Started:
    base_url: str  # http://127.0.0.1:PORT
    ready_s: float  # from spawn to the first correct answer


class Target(ABC):
    name: str
    description: str
    required: bool = True  # False (a peer): its failure is noted, not a failed bench
    workloads: frozenset[str] | None = None  # the only workloads it runs on; None: all
    concurrencies: frozenset[int] | None = None  # the only load points it runs; None: all
    min_concurrency = 1  # nor any point below this

    def request(self, workload: Workload) -> tuple[str, bytes]:
        """The path and body of one request, the same every time (KServe V2 unless a peer
        speaks something else)."""
        return workload.infer_path, workload.body_bytes()

    def headers(self, workload: Workload) -> dict[str, str]:
        """The headers :meth:`request`'s body goes with."""
        return dict(JSON_HEADERS)

    def check(self, content: bytes, expected: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`WrongAnswer` unless ``content`` answers :meth:`request` correctly."""
        check_answer(content, expected)

    def load_url(self, started: Started, workload: Workload, path: str) -> str:
        """Where the load goes: ``started``'s HTTP URL, or ``grpc://HOST:PORT/MODEL`` for a
        target measured over gRPC (the bench then drives it with bench.grpcclient)."""
        return started.base_url + path

    @abstractmethod
    def start(self, workload: Workload, model_root: Path, log_dir: Path,
              expected: Mapping[str, np.ndarray]) -> Started:
        """Serve ``workload`` from ``model_root``; return once a real request answers right."""

    @abstractmethod
    def stop(self) -> str:
        """Stop everything ``start`` began (safe to call twice); a line on how it went."""

    def pids(self) -> list[int]:
        """Local processes serving right now, to account their CPU; [] if not local."""
        return []

    def alive(self) -> bool:
        """False once the server is known to have died."""
        return True

    def why_dead(self) -> str:
        """What is known about how it died (for the report)."""
        return "unknown"


def _child_preexec() -> None:
    # Own process group, so a terminal's Ctrl-C reaches only the bench, which then stops the
    # server in order; and SIGTERM if the bench dies, so no server outlives it.
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _probe(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes] | None:
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None  # not listening yet


class ProcessTarget(Target):
    """A server that is one local command; it must be listening on ``port`` when ready."""

    def __init__(self, name: str, description: str,
                 command: Callable[[Workload, Path, int], list[str]] | None = None,
                 start_timeout_s: float = 120.0, stop_timeout_s: float = 40.0,
                 workloads: frozenset[str] | None = None,
                 concurrencies: frozenset[int] | None = None) -> None:
        self.name = name
        self.description = description
        self.workloads = workloads
        self.concurrencies = concurrencies
        self._command = command
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        # Every (pid, start time) seen in the server's process tree, so that stop() can find
        # processes its children left behind even after they were re-parented.
        self._seen: set[tuple[int, int]] = set()

    def command(self, workload: Workload, model_root: Path, port: int) -> list[str]:
        if self._command is None:
            raise NotImplementedError(f"{type(self).__name__} needs a command")
        return self._command(workload, model_root, port)

    def env(self, workload: Workload, model_root: Path, log_dir: Path) -> dict[str, str]:
        # The repository's code, and none of the caller's MODELGATE_* settings (a
        # MODELGATE_REDIS_URL would silently benchmark some other Redis).
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, workload: Workload, model_root: Path, log_dir: Path,
              expected: Mapping[str, np.ndarray]) -> Started:
        port = free_port()
        self.log_path = log_dir / f"{self.name}-{workload.name}.log"
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(workload, model_root, port), cwd=REPO_ROOT,
                env=self.env(workload, model_root, log_dir),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_child_preexec,
            )
        base_url = f"http://{HOST}:{port}"
        path, body = self.request(workload)
        deadline = started + self.start_timeout_s
        last = "no answer"
        while True:
            if self.process.poll() is not None:
                raise TargetFailed(f"{self.name} exited with {self.process.returncode} while "
                                   f"starting: {self.last_line()}\n{self.tail()}")
            answer = _probe(base_url + path, body, self.headers(workload))
            if answer is not None:
                status, content = answer
                if status == 200:
                    self.check(content, expected)
                    return Started(base_url, time.monotonic() - started)
                last = f"HTTP {status}: {content[:200]!r}"  # e.g. 503 until a worker is up
            if time.monotonic() > deadline:
                raise TargetFailed(
                    f"{self.name} gave no correct answer within {self.start_timeout_s:.0f}s "
                    f"(last: {last})\n{self.tail()}")
            time.sleep(0.05)  # poll interval, not a guess at how long start-up takes

    def pids(self) -> list[int]:
        if not self.alive() or self.process is None:
            return []
        tree = process_tree(self.process.pid)
        self._seen.update((pid, started) for pid in tree
                          if (started := start_time(pid)) is not None)
        return tree

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> str:
        self.pids()
        process, self.process = self.process, None
        if process is None:
            return "not running"
        if process.poll() is not None:
            how = f"had already exited with {process.returncode} before it was stopped"
        else:
            began = time.monotonic()
            process.terminate()
            try:
                code = process.wait(timeout=self.stop_timeout_s)
                # uvicorn re-raises SIGTERM after a graceful shutdown: "ended by" is clean.
                ended = f"exit {code}" if code >= 0 else f"ended by {signal.Signals(-code).name}"
                how = f"stopped in {time.monotonic() - began:.1f}s after SIGTERM ({ended})"
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                how = f"did not stop within {self.stop_timeout_s:.0f}s of SIGTERM; killed"
        left = self._reap_leftovers(process.pid)
        return how if not left else f"{how}; left {left} process(es) running, killed them"

    def _reap_leftovers(self, root: int, grace_s: float = 5.0) -> int:
        """SIGKILL any process of the tree still running ``grace_s`` after the root ended."""
        def survivors() -> list[int]:
            return [pid for pid, started in self._seen
                    if pid != root and start_time(pid) == started]

        deadline = time.monotonic() + grace_s
        while survivors() and time.monotonic() < deadline:
            time.sleep(0.05)  # poll: children get SIGTERM from their parent's death
        left = survivors()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._seen.clear()
        return len(left)

    def why_dead(self) -> str:
        return f"{self.last_line()}\n{self.tail()}"

    def last_line(self) -> str:
        """The last line the server logged (for a crash, usually the exception)."""
        lines = self.tail().splitlines()
        return f"{lines[-1].strip()} (log: {self.log_path})" if lines else "it logged nothing"

    def tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def modelgate_command(gateway_procs: int | str) -> Callable[[Workload, Path, int], list[str]]:
    # Workers pinned to the workload's count (1 for the tiny MLP, one per core for the heavy
    # model), so the autoscaler adds none the other servers do not get.
    def command(workload: Workload, model_root: Path, port: int) -> list[str]:
        workers = str(workload.workers)
        return [sys.executable, "-m", "modelgate", "up", "--models", str(model_root),
                "--host", HOST, "--port", str(port), "--min-workers", workers,
                "--max-workers", workers, "--gateway-procs", str(gateway_procs),
                "--grpc-port", "0"]  # HTTP only: the modelgate-grpc target measures gRPC

    return command


def modelgate_target(gateway_procs: int | str = 1,
                     workloads: frozenset[str] | None = None) -> Callable[[], Target]:
    command = modelgate_command(gateway_procs)
    if gateway_procs == 1:
        name = "modelgate"
        description = (
            "`modelgate up --min-workers W --max-workers W`: embedded redis-server, 1 gateway "
            "process, W ORT worker processes (intra_op_threads=1 each); W = 1 for mlp (fair "
            f"against the single-process naive server), W = {NPROC} (one per core, what "
            "modelgate is built for) for heavy and cnn; the workers choose their batch sizes "
            "when they load the model (shown beside the ONNX Runtime curve)")
    elif gateway_procs == "auto":
        name = "modelgate-gwauto"
        description = ("as modelgate, plus `--gateway-procs auto`: a second gateway process "
                       "joins while the first is busier than 85% of a core for 5 s")
    else:
        name = f"modelgate-gw{gateway_procs}"
        description = (f"as modelgate, plus `--gateway-procs {gateway_procs}`: "
                       f"{gateway_procs} gateway processes sharing the port")
    if workloads is not None:
        description += f"; runs on {', '.join(sorted(workloads))} only"
    return lambda: ProcessTarget(name, description, command, workloads=workloads)


class ModelgateWithoutStoredAnswers(ProcessTarget):
    """modelgate storing no answer for feedback (``feedback_sample_share: 0`` in the model's
    config.yaml, as a deployment that never gets labels runs it): what storing every answer,
    the default, costs a saturated gateway, measured in the same run."""

    def __init__(self) -> None:
        super().__init__(
            "modelgate-nostore",
            "as modelgate, with `feedback_sample_share: 0` in the model's config.yaml: no "
            "answer stored for feedback (the default stores every one); runs on the MLPs only",
            modelgate_command(1), workloads=frozenset({"mlp", "mlp64"}))

    def start(self, workload: Workload, model_root: Path, log_dir: Path,
              expected: Mapping[str, np.ndarray]) -> Started:
        root = log_dir / f"{self.name}-models"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(model_root / workload.name, root / workload.name)
        config = root / workload.name / "config.yaml"
        earlier = config.read_text() if config.exists() else ""
        config.write_text(f"{earlier}\nfeedback_sample_share: 0\n")
        return super().start(workload, root, log_dir, expected)


class GrpcModelgate(ProcessTarget):
    """modelgate measured over gRPC: the same `up` as the modelgate target, with its gRPC
    port; readiness is probed over HTTP (the same data plane), the load goes to gRPC."""

    def __init__(self) -> None:
        super().__init__(
            "modelgate-grpc",
            "as modelgate, driven over gRPC (`inference.GRPCInferenceService` on --grpc-port) "
            "by tritonclient.grpc.aio (bench/grpcclient.py: raw_input_contents, one Python "
            "process) instead of HTTP/JSON by wrk", workloads=frozenset({"mlp", "cnn"}))
        self.grpc_port = 0

    def command(self, workload: Workload, model_root: Path, port: int) -> list[str]:
        self.grpc_port = free_port()
        workers = str(workload.workers)
        return [sys.executable, "-m", "modelgate", "up", "--models", str(model_root),
                "--host", HOST, "--port", str(port), "--grpc-port", str(self.grpc_port),
                "--min-workers", workers, "--max-workers", workers]

    def load_url(self, started: Started, workload: Workload, path: str) -> str:
        return f"grpc://{HOST}:{self.grpc_port}/{workload.name}"


# Workloads whose throughput goal is judged on binary tensors (modelgate-binary).
BINARY_WORKLOADS = frozenset({"cnn"})


def binary_request(workload: Workload) -> tuple[str, bytes]:
    """The path and body of ``workload``'s call in the binary tensor extension."""
    return workload.infer_path, binary_body(workload.body)[0]


def binary_headers(workload: Workload) -> dict[str, str]:
    """The headers of ``workload``'s call in the binary tensor extension."""
    return {"Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(binary_body(workload.body)[1])}


class BinaryModelgate(ProcessTarget):
    """modelgate with the request's tensors in the binary tensor extension (raw little-endian
    bytes after a JSON header, as tritonclient.http sends them); the answer stays JSON."""

    def __init__(self) -> None:
        super().__init__(
            "modelgate-binary",
            "as modelgate, the request's input as raw FP32 bytes after a JSON header (the "
            "binary tensor extension, `Inference-Header-Content-Length`), driven by wrk",
            modelgate_command(1), workloads=BINARY_WORKLOADS)

    def request(self, workload: Workload) -> tuple[str, bytes]:
        return binary_request(workload)

    def headers(self, workload: Workload) -> dict[str, str]:
        return binary_headers(workload)


class BinaryThroughRedis(BinaryModelgate):
    """modelgate-binary with its large tensors through Redis, as they went before the
    gateways' shared memory (``--payload-arena-mb 0``): what the arena is worth, in one run."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "modelgate-binary-redis"
        self.description = ("as modelgate-binary, with `--payload-arena-mb 0`: the tensors go "
                            "through Redis (and its append-only file), not shared memory")

    def command(self, workload: Workload, model_root: Path, port: int) -> list[str]:
        return [*super().command(workload, model_root, port), "--payload-arena-mb", "0"]


def naive_target() -> Target:
    def command(workload: Workload, model_root: Path, port: int) -> list[str]:
        model = model_root / workload.name / "1" / "model.onnx"
        return [sys.executable, "-m", "bench.naive_server", "--model", str(model),
                "--name", workload.name, "--host", HOST, "--port", str(port)]

    return ProcessTarget(
        "naive",
        "`bench/naive_server.py`: 1 process, Starlette + in-process ORT session "
        "(intra_op_threads=1), session.run on the event loop",
        command,
    )


def _floor_command(workload: Workload, model_root: Path, port: int) -> list[str]:
    if len(workload.body["inputs"]) != 1:
        raise ValueError(f"the two-hop floor takes one input; {workload.name} has more")
    model = model_root / workload.name / "1" / "model.onnx"
    return [sys.executable, "-m", "bench.two_hop_floor", "--model", str(model),
            "--name", workload.name, "--port", str(port)]


def two_hop_floor_target(workloads: frozenset[str] | None = None,
                         concurrencies: frozenset[int] | None = None) -> Target:
    """``bench/two_hop_floor.py``: the least a call through Redis to a worker process and
    back costs on this host (models of one input)."""
    return ProcessTarget(
        TWO_HOP,
        "`bench/two_hop_floor.py`: the least a call through Redis to a worker process and back "
        "costs on this host (an httptools front, XADD and BLPOP on raw connections, one ORT "
        "worker, nothing else done); the floor of any two-hop design's fixed cost per call",
        _floor_command, workloads=workloads, concurrencies=concurrencies)


class LoadedTwoHopFloor(ProcessTarget):
    """The throughput of a two-hop design with nothing but its hops, under load:
    ``bench/two_hop_floor.py --batched`` with as many workers as modelgate gets, sent the
    calls modelgate's goals are judged on (JSON on the MLPs; binary tensors on the CNN, as
    modelgate-binary's)."""

    min_concurrency = 2

    def __init__(self) -> None:
        super().__init__(
            TWO_HOP_LOADED,
            "`bench/two_hop_floor.py --batched --workers W`: the least a design through Redis "
            "and worker processes can do, under load (an httptools front, a large tensor in "
            "shared memory, XADD and BLMPOP on raw connections, W ORT workers each taking what "
            "waits up to its best batch size, nothing else done); sent JSON on the MLPs and "
            "binary tensors on the CNN, as the goals' modelgate targets are; at concurrency "
            "only", _floor_command, workloads=frozenset({"mlp", "mlp64", "cnn"}))

    def command(self, workload: Workload, model_root: Path, port: int) -> list[str]:
        return [*_floor_command(workload, model_root, port), "--workers",
                str(workload.workers), "--batched"]

    def request(self, workload: Workload) -> tuple[str, bytes]:
        if workload.name in BINARY_WORKLOADS:
            return binary_request(workload)
        return super().request(workload)

    def headers(self, workload: Workload) -> dict[str, str]:
        if workload.name in BINARY_WORKLOADS:
            return binary_headers(workload)
        return super().headers(workload)


# Servers built from this repository; the PyPI peer is in ``bench.peer``.
TARGETS: dict[str, Callable[[], Target]] = {
    "modelgate": modelgate_target(),
    # Two gateway processes help where the gateway is the bottleneck (the tiny MLP); on the
    # compute-bound model the second one only takes CPU from the workers (0.9x in a trial).
    "modelgate-gw2": modelgate_target(gateway_procs=2, workloads=frozenset({"mlp"})),
    "naive": naive_target,
    # What storing every answer for feedback (the default) costs where the gateway is the
    # bottleneck: the same, storing none.
    "modelgate-nostore": ModelgateWithoutStoredAnswers,
    "modelgate-grpc": GrpcModelgate,
    "modelgate-binary": BinaryModelgate,
    "modelgate-binary-redis": BinaryThroughRedis,
    # Large JSON tensors make the gateway the bottleneck: more gateways, as up decides.
    "modelgate-gwauto": modelgate_target(gateway_procs="auto", workloads=frozenset({"cnn"})),
    # The fixed cost per call, judged at c=1 on the MLPs: how much of it any design through
    # Redis and a worker process pays on this host (at concurrency it is no floor: it reads one
    # entry and pops one reply at a time).
    TWO_HOP: lambda: two_hop_floor_target(frozenset({"mlp", "mlp64"}), frozenset({1})),
    # The same under load: the throughput any design through Redis and worker processes can
    # reach here, on the calls the throughput goals are judged on.
    TWO_HOP_LOADED: LoadedTwoHopFloor,
}
