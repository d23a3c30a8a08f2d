"""Where the CPU went during a load point: the server's processes, the load generator, and
everything else on the machine. "Everything else" should be near zero; when it is not (another
job, a test suite), the numbers of that point are not comparable and the report says so.

Linux only (``/proc``); elsewhere every figure is ``None`` and the report omits it.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# Above this many CPUs used by processes outside the benchmark, a load point is not comparable.
BUSY_MACHINE_CPUS = 0.15

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _machine_busy_s() -> float | None:
    """CPU-seconds all CPUs spent running processes since boot.

    Interrupt and softirq time are left out: on loopback they are mostly the benchmark's own
    TCP traffic, which no process is charged for. Steal (the hypervisor's) is left out too.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system = (int(f) for f in fields[1:4])  # user includes guest time
    return (user + nice + system) * _TICK_S


def machine_cpus(window_s: float) -> float | None:
    """CPUs busy on average over the next ``window_s`` (blocks that long)."""
    before = _machine_busy_s()
    time.sleep(window_s)
    after = _machine_busy_s()
    return None if before is None or after is None else (after - before) / window_s


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    parents = _parents()
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process even if
    the pid is reused later. None if there is no such process, or only its zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


# What a server's process is, from its command line (the first that matches). The two-hop
# floor's front and worker count as a gateway and a worker, to be read beside modelgate's.
_ROLES = (("redis-server", "redis"), (" modelgate worker", "workers"),
          (" modelgate gateway", "gateway"), (" modelgate up", "supervisor"),
          (" modelgate autoscaler", "supervisor"), (" --worker-of ", "workers"),
          (" bench.two_hop_floor ", "gateway"))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def roles(pids: list[int]) -> dict[int, str]:
    """Each process's role in a modelgate deployment (``redis``, ``workers``, ``gateway``,
    ``supervisor``), by its command line or else its parent's (a gateway's parser processes
    are the gateway's); ``server`` for anything else (another server's processes)."""
    parents = _parents()
    found: dict[int, str] = {}
    for pid in pids:
        current: int | None = pid
        role = "server"
        while current:
            line = _cmdline(current)
            match = next((name for pattern, name in _ROLES if pattern in line), None)
            if match is not None:
                role = match
                break
            current = parents.get(current)
        found[pid] = role
    return found


def _process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime + stime


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the load generator
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    machine_s: float | None
    server_s: dict[int, float]
    children_s: float
    roles: dict[int, str]


def snapshot(server_pids: list[int]) -> Snapshot:
    server = {pid: cpu for pid in server_pids if (cpu := _process_cpu_s(pid)) is not None}
    return Snapshot(time.monotonic(), _machine_busy_s(), server, _children_cpu_s(),
                    roles(list(server)))


@dataclass(frozen=True, slots=True)
class Usage:
    """Average CPUs busy (1.0 = one core) over the interval."""

    server: float | None
    load_generator: float
    other: float | None
    by_role: tuple[tuple[str, float], ...] = ()  # the server's CPUs per kind of process

    @property
    def disturbed(self) -> bool:
        return self.other is not None and self.other > BUSY_MACHINE_CPUS


def usage(before: Snapshot, after: Snapshot) -> Usage:
    """Between two snapshots; the load generator must have been reaped before ``after``."""
    elapsed_s = max(after.at - before.at, 1e-9)
    server_s = sum(after.server_s[pid] - cpu for pid, cpu in before.server_s.items()
                   if pid in after.server_s) if before.server_s else None
    load_s = after.children_s - before.children_s
    other = None
    if before.machine_s is not None and after.machine_s is not None and server_s is not None:
        other = max(0.0, after.machine_s - before.machine_s - server_s - load_s) / elapsed_s
    by_role: dict[str, float] = {}
    for pid, cpu_s in before.server_s.items():
        if pid in after.server_s:
            role = before.roles.get(pid, "server")
            by_role[role] = by_role.get(role, 0.0) + (after.server_s[pid] - cpu_s) / elapsed_s
    return Usage(None if server_s is None else server_s / elapsed_s, load_s / elapsed_s, other,
                 tuple(sorted(by_role.items())))
