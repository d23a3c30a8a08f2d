"""``python -m bench.instructions``: the gateway's instructions per call, which the host does
not change.

Times and calls per second move with the host (another VM's load, the CPU model, its clock):
on a shared 2-vCPU VM two runs of the same code differ by more than most changes to it. The
number of instructions a process executes for the same calls does not: this starts
``modelgate up`` on a bench workload, then a second gateway process of the same settings
(its command line and environment) under valgrind's callgrind, sends it ``--warmup`` calls,
zeroes the counters, sends ``--calls`` calls one at a time and reads the total back.
What it counts is user-space instructions of the gateway process (the interpreter, uvloop,
hiredis, numpy: everything but the kernel), per call, at concurrency 1, with the warm-up and
startup left out. Two runs of the same tree agree within about 2%; compare trees with it,
not with a stopwatch. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.cpu import process_tree
from bench.results import _cpu_model
from bench.targets import HOST, free_port, modelgate_target
from bench.workloads import WORKLOADS, Workload

READY_TIMEOUT_S = 300.0  # the gateway under valgrind starts ~50x slower


def gateway_command(pid: int, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of gateway ``pid``, listening on ``port`` itself."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    environ = dict(line.split("=", 1) for line in
                   Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in line)
    return listening_on(args, port), environ


def listening_on(args: list[str], port: int) -> list[str]:
    """A gateway's command line with ``--port port`` and without ``--fd`` (a socket its
    supervisor passed it, which another process does not have)."""
    command: list[str] = []
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--fd":
            skip = True
            continue
        command.append(str(port) if index > 0 and args[index - 1] == "--port" else arg)
    if "--port" not in command:
        command += ["--port", str(port)]
    return command


def drive(port: int, workload: Workload, calls: int) -> None:
    """``calls`` calls one after another, each checked to be answered."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    body = workload.body_bytes()
    try:
        for _ in range(calls):
            connection.request("POST", workload.infer_path, body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"the gateway answered {response.status}: {answer[:200]!r}")
    finally:
        connection.close()


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway under callgrind exited ({process.returncode})")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the gateway under callgrind was not ready within {timeout_s:.0f} s")


def instructions_per_call(workload: Workload, calls: int, warmup: int, folder: Path) -> float:
    """The gateway's user-space instructions per call (see the module's docstring)."""
    control = shutil.which("callgrind_control")
    valgrind = shutil.which("valgrind")
    if control is None or valgrind is None:
        raise RuntimeError("valgrind is not installed: apt-get install valgrind")
    model_root = folder / "models"
    workload.write(model_root)
    target = modelgate_target()()
    target.start(workload, model_root, folder,
                 workload.expected(model_root / workload.name / "1" / "model.onnx"))
    counted: subprocess.Popen[bytes] | None = None
    try:
        assert target.process is not None
        gateways = [pid for pid in process_tree(target.process.pid)
                    if b"modelgate\0gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if not gateways:
            raise RuntimeError("modelgate up started no gateway process")
        port = free_port()
        command, environ = gateway_command(gateways[0], port)
        out = folder / "callgrind.out"
        with open(folder / "callgrind.log", "wb") as log:
            counted = subprocess.Popen(
                [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                env=environ, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(port, counted, READY_TIMEOUT_S)
        drive(port, workload, warmup)
        subprocess.run([control, "-z", str(counted.pid)], check=True, capture_output=True)
        drive(port, workload, calls)
        subprocess.run([control, "-d", str(counted.pid)], check=True, capture_output=True)
        dumps = sorted(folder.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        total = next(int(line.split()[1]) for line in dumps[-1].read_text().splitlines()
                     if line.startswith(("summary:", "totals:")))
        return total / calls
    finally:
        if counted is not None and counted.poll() is None:
            counted.send_signal(signal.SIGINT)
            try:
                counted.wait(timeout=30)
            except subprocess.TimeoutExpired:
                counted.kill()
                counted.wait()
        target.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="mlp", choices=sorted(WORKLOADS))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]()
    with tempfile.TemporaryDirectory(prefix="modelgate-instructions-") as tmp:
        per_call = instructions_per_call(workload, args.calls, args.warmup, Path(tmp))
    print(f"instructions: {workload.name} (JSON), {args.calls} calls at concurrency 1 after "
          f"{args.warmup} warm-up calls, gateway process, user space: "
          f"{per_call:,.0f} instructions per call ({_cpu_model()}; {os.uname().machine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
