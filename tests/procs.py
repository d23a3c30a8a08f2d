"""Real child processes for integration tests: spawn, poll with a deadline, stop."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from modelgate.core.process import child_preexec, stop_process
from modelgate.core.store import pools
from tests.protocol.conformance import check_recorded

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 15.0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Processes:
    """Real child processes with their logs, stopped SIGTERM -> wait -> SIGKILL.

    Every gateway among them (``up``'s too) records its answers on the Open Inference
    Protocol's REST paths under ``answers_dir``; :meth:`stop` checks them against KServe's
    published schemas (tests/protocol) and fails the test on any violation.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.answers_dir = log_dir / "answers"
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, label: str, args: Sequence[str],
              env_extra: dict[str, str] | None = None,
              open_files: int | None = None,
              pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """``modelgate ARGS`` in the repository, with no MODELGATE_ variable of this
        process's environment but those in ``env_extra`` (and MODELGATE_GRPC_PORT=0); with
        ``open_files``, that many file descriptors at most (RLIMIT_NOFILE, soft and hard);
        inheriting ``pass_fds``."""
        log_path = self.log_dir / f"{label}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
        # No gRPC unless a test asks (--grpc-port or this variable): gateways of parallel
        # servers would all take the default port.
        env["MODELGATE_GRPC_PORT"] = "0"
        env["MODELGATE_RECORD_ANSWERS"] = str(self.answers_dir)
        env.update(env_extra or {})
        # `modelgate up` keeps its embedded Redis's files per model repository under here.
        env["XDG_STATE_HOME"] = str(self.log_dir / "state")
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "modelgate", *args], cwd=REPO_ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                # SIGTERM if pytest dies: nothing is orphaned.
                preexec_fn=child_preexec if open_files is None else _limited(open_files),
                pass_fds=tuple(pass_fds),
            )
        self.started.append((label, process, log_path))
        return process

    def check_alive(self) -> None:
        for label, process, log_path in self.started:
            if process.poll() is not None:
                pytest.fail(f"{label} exited with {process.returncode} while starting:\n"
                            f"{_tail(log_path)}")

    def logs(self) -> str:
        return "\n".join(f"--- {label}\n{_tail(path)}" for label, _, path in self.started)

    def stop(self, labels_first: Sequence[str] = ()) -> None:
        """Stop the named processes first (e.g. the gateway), then all others at once."""
        first = [p for label, p, _ in self.started if label in labels_first]
        rest = [p for label, p, _ in self.started if label not in labels_first]
        for group in (first, rest):
            for process in group:
                if process.poll() is None:
                    process.terminate()
            for process in group:
                stop_process(process, timeout_s=STOP_TIMEOUT_S, signalled=True)
        self.check_answers()

    def check_answers(self) -> None:
        """Fail unless every answer recorded so far conforms to the protocol's schemas."""
        found = check_recorded(self.answers_dir)
        if found:
            pytest.fail(f"{len(found)} answer(s) do not conform to KServe's REST schemas of the "
                        "Open Inference Protocol (tests/protocol):\n" + "\n".join(found[:20]))


def _limited(open_files: int) -> Callable[[], None]:
    def preexec() -> None:
        child_preexec()
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    return preexec


def answers_200(client: httpx.Client, path: str) -> bool:
    """``GET path`` answers 200 (a server not listening yet is no error: False)."""
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str,
               check: Callable[[], None] = lambda: None, details: Callable[[], str] = str,
               interval_s: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (``check`` may fail sooner)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        check()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{details()}")
        time.sleep(interval_s)


def entry_fields(entry: pools.RequestEntry) -> dict[str | bytes, bytes | str | int]:
    """A request entry's fields as a mapping for redis-py's ``xadd``."""
    items = entry.fields()
    return {str(name): value for name, value in zip(items[::2], items[1::2], strict=True)}
