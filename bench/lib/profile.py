"""--profile: py-spy the daemon at c=64, and split its CPU by thread (/proc) and by category.

py-spy samples wall time, not CPU time, so the CPU split comes from /proc per thread and the
categories share out each thread's CPU in proportion to its non-idle samples.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.lib import perf_analyzer
from bench.lib.daemon import Daemon
from bench.lib.procstat import thread_cpu
from bench.lib.variants import streaming

PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # first match walking from the leaf frame up wins
    ("ORT session.run (native compute)", ("onnxruntime_inference_collection.py", "onnxruntime::")),
    ("numpy (stack/split/tobytes)", ("numpy/", "_multiarray_umath", "PyArray_")),
    ("protobuf (message build/parse)", ("google/protobuf", "upb_", "_message.", "PyUpb")),
    ("tensor codec (ortserve_client.tensors)", ("ortserve_client/tensors.py",)),
    ("protocol codec (ortserve.protocol.codec)", ("ortserve/protocol/codec.py",)),
    ("statistics / metrics", ("observability/", "prometheus_client")),
    ("batcher", ("ortserve/batching/",)),
    ("execution (run_batch)", ("ortserve/execution.py", "ortserve/runtime/session.py")),
    ("inference (checks, response)", ("ortserve/inference.py",)),
    ("servicer / interceptor", ("ortserve/protocol/",)),
    ("grpc (cython + core)", ("grpc/", "cygrpc", "grpc_core", "grpc_", "libgrpc", "gpr_")),
    ("asyncio event loop", ("asyncio/", "uvloop", "selectors.py", "epoll")),
    ("threading / executor", ("concurrent/futures", "threading.py", "queue.py")),
)


def classify(stack: Sequence[str]) -> str:
    for frame in reversed(stack):
        for label, needles in PROFILE_CATEGORIES:
            if any(needle in frame for needle in needles):
                return label
    return "other (interpreter, libc, unknown)"


_IDLE_LEAVES = (
    "EpollSelector.select",
    "epoll_wait",
    "clock_nanosleep",
    "nanosleep",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "sem_wait",
    "poll (",
    "select (",
)
_IDLE_CALLERS = (
    "_queue_SimpleQueue_get",
    "PyThread_acquire_lock",
    "WorkerThread.run",
    "_worker (concurrent/futures/thread.py:81)",
)


def idle(frames: Sequence[str]) -> bool:
    """A thread blocked waiting for work: not what it costs (py-spy samples wall time)."""
    leaf = frames[-1] if frames else ""
    if leaf.startswith(_IDLE_LEAVES):
        return True
    tail = frames[-4:]
    return (
        "(libc.so" in leaf
        and leaf.startswith("0x")
        and any(caller in frame for frame in tail for caller in _IDLE_CALLERS)
    )


def summarize_profile(raw: Path, threads_cpu: dict[int, tuple[str, float]]) -> dict[str, Any]:
    """Daemon CPU per thread (/proc), and each Python thread's busy samples by category.

    py-spy samples wall time, not CPU time: a runnable thread waiting for a core looks busy.
    So the CPU split comes from /proc, and the categories split each thread's CPU in
    proportion to its non-idle samples.
    """
    by_thread: dict[int, Counter[str]] = defaultdict(Counter)
    names: dict[int, str] = {}
    idle_samples: Counter[int] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        match = re.match(r"thread \((?:0x)?([0-9A-Fa-f]+)\)(?::\s*(.*))?", frames[0])
        if not match:
            continue
        tid = int(match.group(1))
        names[tid] = match.group(2) or "?"
        total += count
        if idle(frames[1:]):
            idle_samples[tid] += count
            continue
        by_thread[tid][classify(frames[1:])] += count
        if names[tid] == "MainThread":
            leaves[" ← ".join(f.split(" (")[0] for f in reversed(frames[-3:]))] += count
    cpu_total = sum(seconds for _, seconds in threads_cpu.values()) or float("nan")
    threads: list[dict[str, Any]] = []
    categories: dict[str, float] = defaultdict(float)
    for tid, (comm, seconds) in sorted(threads_cpu.items(), key=lambda kv: -kv[1][1]):
        if seconds <= 0:
            continue
        share = 100 * seconds / cpu_total
        if tid in by_thread and by_thread[tid].total():
            busy = by_thread[tid]
            n = busy.total()
            split = {k: round(share * v / n, 1) for k, v in busy.most_common()}
            label = names.get(tid, comm)
        else:
            kind = (
                "grpc core"
                if comm.startswith(("event_engine", "grpc", "lifeguard"))
                else "native thread (ONNX Runtime intra-op pool)"
            )
            split = {kind: round(share, 1)}
            label = f"{comm} (no Python frames)"
        for k, v in split.items():
            categories[k] += v
        threads.append(
            {
                "tid": tid,
                "name": label,
                "cpu_s": round(seconds, 2),
                "cpu_pct_of_daemon": round(share, 1),
                "split_pct_of_daemon": split,
                "idle_samples": idle_samples.get(tid, 0),
            }
        )
    main_busy = sum(leaves.values())
    return {
        "samples": total,
        "daemon_cpu_s": round(cpu_total, 2),
        "categories_pct_of_daemon_cpu": {
            k: round(v, 1) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        },
        "threads": threads,
        "main_thread_top_pct_of_its_busy_samples": {
            k: round(100 * v / main_busy, 1) for k, v in leaves.most_common(15)
        }
        if main_busy
        else {},
    }


def profile_daemon(
    pa: str,
    daemon: Daemon,
    variant: str,
    data: Path,
    out: Path,
    native: bool,
    cpus_pa: str | None,
) -> dict[str, Any] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).is_file():
        print("  profile: py-spy not found (.venv/bin/pip install py-spy); skipped")
        return None
    raw = out / f"profile-{variant}-c64.txt"
    spy_cmd = [
        spy,
        "record",
        "--pid",
        str(daemon.pid),
        "--duration",
        "20",
        "--rate",
        "50" if native else "100",
        "--format",
        "raw",
        "--threads",
        "-o",
        str(raw),
        *(["--native"] if native else ["--nonblocking"]),  # --native cannot be non-blocking
    ]
    holder: dict[str, perf_analyzer.PaResult] = {}

    def load() -> None:  # ~27 s of c=64: 3 windows of 9 s, any variation accepted
        holder["pa"] = perf_analyzer.measure(
            pa,
            daemon,
            variant,
            64,
            data,
            out,
            [["-p", "9000", "-s", "1000", "-r", "3"]],
            streaming=streaming(variant),
            cpus=cpus_pa,
            tag="-profile",
        )

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(4)
    threads_before = thread_cpu(daemon.pid)
    spy_log = out / f"profile-{variant}-c64.log"
    with spy_log.open("w") as log:
        subprocess.run(spy_cmd, stdout=log, stderr=subprocess.STDOUT, timeout=90, check=False)
    threads_after = thread_cpu(daemon.pid)
    loader.join(timeout=90)
    delta = {
        tid: (comm, seconds - threads_before.get(tid, (comm, 0.0))[1])
        for tid, (comm, seconds) in threads_after.items()
    }
    if not raw.is_file():
        print(f"  profile: py-spy wrote nothing; see {spy_log}")
        return None
    summary = summarize_profile(raw, delta)
    summary["served"] = asdict(holder["pa"]) if "pa" in holder else None
    (out / f"profile-{variant}-c64.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
