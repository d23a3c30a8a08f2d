"""Child-process hygiene shared by everything that spawns processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Run in the child before exec: get SIGTERM if the parent dies, so nothing is orphaned.

    The child also gets its own process group, so a terminal's Ctrl-C reaches only the parent,
    which then stops its children in order (workers drain before Redis goes away).
    """
    os.setpgid(0, 0)
    # Not Linux (no libc.so.6): the parent's own shutdown still stops its children.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float,
                 signalled: bool = False) -> int:
    """SIGTERM (unless ``signalled`` already), wait up to ``timeout_s``, then SIGKILL.

    A second SIGTERM would make a draining worker exit at once, so callers that signalled a
    group of processes themselves pass ``signalled=True``. Returns the exit code.
    """
    if process.poll() is None:
        if not signalled:
            process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
