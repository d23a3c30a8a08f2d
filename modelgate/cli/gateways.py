"""How many gateway processes ``modelgate up --gateway-procs auto`` runs: a pure decision over
the gateway processes' CPU, the decision's state and ``now``.

Parsing and copying large tensors (a 110 KB JSON image is ~2 ms of one core) can make one
gateway process the bottleneck while workers idle. Each tick the supervisor measures the CPU
its gateway processes used since the last tick, each with its body parser processes (where
large JSON bodies are parsed: :func:`gateway_cpu_seconds`), and asks :func:`decide`:
one more process once every one has been busier than ``busy_share`` of a core for
``up_after_s`` (up to one per CPU), one fewer once the work would have fitted in one fewer at
``idle_share`` each for ``down_after_s``. Workers are sized by the queue in Redis, which a
saturated gateway keeps short: calls wait in the gateway's socket, not in the pool's stream, so
the autoscaler does not add workers for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True, slots=True)
class GatewayScaling:
    max_procs: int
    min_procs: int = 1
    busy_share: float = 0.85  # of a core, every process: the gateways are the bottleneck
    idle_share: float = 0.4  # of a core each, with one process fewer: one can go
    up_after_s: float = 5.0
    down_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class GatewayState:
    busy_since: float | None = None
    idle_since: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayDecision:
    procs: int
    state: GatewayState
    reason: str = ""


def decide(procs: int, cpus: float, state: GatewayState, now: float,
           config: GatewayScaling) -> GatewayDecision:
    """The gateway process count for the next tick, given ``procs`` running now and the
    ``cpus`` (cores busy, summed over them) they used since the last tick."""
    per_proc = cpus / max(procs, 1)
    busy = per_proc >= config.busy_share
    idle = procs > config.min_procs and cpus <= config.idle_share * (procs - 1)
    busy_since = (state.busy_since if state.busy_since is not None else now) if busy else None
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
    if busy_since is not None and now - busy_since >= config.up_after_s \
            and procs < config.max_procs:
        return GatewayDecision(procs + 1, GatewayState(), f"gateways busy: {per_proc:.2f} of a "
                               f"core each for {now - busy_since:.0f} s")
    if idle_since is not None and now - idle_since >= config.down_after_s:
        return GatewayDecision(procs - 1, GatewayState(), f"gateways idle: {cpus:.2f} cores "
                               f"over {procs} for {now - idle_since:.0f} s")
    return GatewayDecision(procs, GatewayState(busy_since, idle_since))


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, None once it is gone (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a gateway's body parsers), [] if none or unknown."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in listed.split()]


def gateway_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time used by a gateway process and each of its body parser processes, by pid.

    A gateway hands large JSON bodies to its parsers (``gateway/parsing.py``): with large
    tensors they, not the gateway's own process, are where its CPU goes. A tick compares the
    processes present at both ends, so a parser replaced meanwhile costs one tick's figure.
    """
    used = {}
    for process in (pid, *children(pid)):
        if (cpu := cpu_seconds(process)) is not None:
            used[process] = cpu
    return used
