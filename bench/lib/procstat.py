"""CPU and memory figures from /proc: what a process, its threads and the whole machine used.

On a shared host the CPU that *other* processes took during a run (the machine's busy time minus
ours) is the noise gauge, so every served run is bracketed by two ``CpuSnapshot``s.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu(path: Path) -> float:
    """User + system seconds from a /proc/.../stat file; 0 once the process is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_cpu(pid: int) -> float:
    """User + system seconds of a process (all its threads)."""
    return stat_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu(pid: int) -> float:
    """User + system seconds of a process's main thread: in our servers, the event loop."""
    return stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (comm, user + system seconds) for every thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = (task / "stat").read_text()
                comm = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def self_cpu() -> float:
    """User + system seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_pressure() -> str:
    """The kernel's CPU pressure, "some avg10" (% of time something waited for a core)."""
    with contextlib.suppress(OSError):
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return line.split()[1].split("=")[1]
    return "n/a"


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@dataclass
class CpuSnapshot:
    wall: float
    machine: float
    daemon: float
    daemon_loop: float  # the daemon's main thread: the event loop, where per-request Python runs
    children: float  # our finished children: perf_analyzer (and `timeout`)
    me: float

    @classmethod
    def take(cls, daemon_pid: int) -> CpuSnapshot:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            time.perf_counter(),
            machine_busy(),
            process_cpu(daemon_pid),
            main_thread_cpu(daemon_pid),
            kids.ru_utime + kids.ru_stime,
            self_cpu(),
        )


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """% of one core over the interval: daemon, perf_analyzer (+timeout), others."""
    wall = after.wall - before.wall
    daemon = after.daemon - before.daemon
    loadgen = after.children - before.children
    me = after.me - before.me
    other = (after.machine - before.machine) - daemon - loadgen - me
    return {
        "wall_s": round(wall, 1),
        "daemon_pct": round(100 * daemon / wall),
        "daemon_loop_pct": round(100 * (after.daemon_loop - before.daemon_loop) / wall),
        "perf_analyzer_pct": round(100 * loadgen / wall),
        "other_pct": round(100 * max(other, 0.0) / wall),
    }
