"""API keys and Redis credentials with real processes; no secret ever reaches a log.

Every process here logs at DEBUG, so a key or password written anywhere in the gateway or
the worker would show up in the captured stdout/stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest

from modelgate.embedded_redis import free_port, start_redis
from modelgate.process import child_preexec, stop_process
from tests.models import write_repository
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = pytest.mark.integration

KEY_1 = "mg-key-alpha-5f1c0e9a"
KEY_2 = "mg-key-bravo-7d24b6c3"
WRONG_KEY = "mg-key-wrong-00000000"
REDIS_PASSWORD = "redis-pw-c4f7e1d2"
PROBES = ["/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"]
INFER = "/v2/models/int64/infer"
BODY = {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}
SECRETS = [KEY_1, KEY_2, WRONG_KEY, REDIS_PASSWORD]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Server:
    base_url: str
    processes: Processes

    def full_logs(self) -> str:
        """Everything every process wrote so far (the logs are files, flushed per line)."""
        return "\n".join(path.read_text(errors="replace")
                         for _, _, path in self.processes.started)


def _spawn_with_env(processes: Processes, label: str, args: Sequence[str],
                    env: Mapping[str, str]) -> None:
    """Like ``Processes.spawn``, with ``MODELGATE_*`` variables set (flags read them)."""
    log_path = processes.log_dir / f"{label}.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelgate", *args], cwd=REPO_ROOT, env={**clean, **env},
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=child_preexec)
    processes.started.append((label, process, log_path))


def _answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.TransportError:
        return False


@contextlib_contextmanager := None  # placeholder removed below
