"""Triton's perf_analyzer against the encoder on loopback: find it, build a run, read the CSV.

Every run goes under `timeout` (perf_analyzer can hang when it cannot stabilize) and its output
goes to a log; ``measure`` retries with looser flags when perf_analyzer reports an unstable
measurement, and brackets the tries with CPU snapshots of the daemon and the machine.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import ROOT
from bench.lib.daemon import Daemon
from bench.lib.encoder import MODEL, SEQ
from bench.lib.procstat import CpuSnapshot, cpu_shares

SETUP = ROOT / "scripts" / "perf-analyzer-setup.sh"


def find(given: str | None) -> str:
    """``given``, else $PA, else the wrapper the shared setup script installs and prints."""
    if given:
        return given
    if os.environ.get("PA"):
        return os.environ["PA"]
    out = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=600, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def concurrency(clients: int) -> list[str]:
    """The load flags for a closed loop of ``clients`` at a time."""
    return ["--concurrency-range", f"{clients}:{clients}"]


def time_limit(flags: Sequence[str]) -> int:
    """Seconds a run with these flags may take: every measurement window, plus 30."""
    interval_s = int(flags[flags.index("-p") + 1]) / 1000 if "-p" in flags else 5.0
    windows = int(flags[flags.index("-r") + 1]) if "-r" in flags else 10
    return int(interval_s * windows + 30)


def command(
    pa: str,
    port: int,
    data: Path,
    load: Sequence[str],
    csv_path: Path,
    flags: Sequence[str],
    limit: int,
    *,
    streaming: bool = False,
    version: str | None = None,
    cpus: str | None = None,
    protocol: str = "grpc",
) -> list[str]:
    """Single-row encoder requests from ``data``; killed after ``limit`` s; taskset ``cpus``;
    ``protocol`` "grpc" or "http" (``port`` is then the daemon's HTTP port)."""
    cmd = [
        "timeout", "-k", "5", str(limit),
        pa, "-i", protocol, "-u", f"127.0.0.1:{port}", "-m", MODEL,
        *(["-x", version] if version else []),
        "-b", "1", "--shape", f"input_ids:{SEQ}", "--shape", f"attention_mask:{SEQ}",
        "--input-data", str(data),
        *load,
        *(["--streaming"] if streaming else []),
        "-f", str(csv_path),
        *flags,
    ]  # fmt: skip
    return ["taskset", "-c", cpus, *cmd] if cpus is not None else cmd


def invoke(cmd: Sequence[str], timeout: float, log_path: Path | None = None) -> tuple[str, int]:
    """(stdout + stderr, exit code; -9 when killed after ``timeout`` s); logged if asked."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        partial = [
            x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)
        ]
        text, rc = "".join(partial) + f"\n(killed after {timeout:.0f} s)", -9
    if log_path is not None:
        log_path.write_text(f"$ {' '.join(cmd)}\n{text}")
    return text, rc


def read_row(csv_path: Path) -> dict[str, str]:
    """The figures of a run with one load level: the CSV's only data row."""
    with csv_path.open() as stream:
        return next(csv.DictReader(stream))


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


@dataclass
class PaResult:
    variant: str
    concurrency: int
    version_flag: bool  # run with -x 1
    ok: bool
    flags: str
    attempts: int
    infer_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    queue_us: int | None = None
    compute_us: int | None = None  # compute input + infer + output, per request
    server_requests: int | None = None
    server_executions: int | None = None
    client_requests: int | None = None
    # perf_analyzer's server "overhead": request latency - queue - compute
    server_overhead_us: int | None = None
    raw_now_rate: float | None = None  # raw ORT at the best batch, probed around this run
    raw_now_b1_p50_ms: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def mean_batch(self) -> float | None:
        if self.server_requests and self.server_executions:
            return self.server_requests / self.server_executions
        return None

    def fill(self, row: dict[str, str], text: str) -> None:
        """Figures from the CSV row, and the server-side counts from perf_analyzer's output."""
        self.ok = True
        self.infer_per_s = float(row["Inferences/Second"])
        self.p50_ms = int(row["p50 latency"]) / 1e3
        self.p90_ms = int(row["p90 latency"]) / 1e3
        self.p99_ms = int(row["p99 latency"]) / 1e3
        if "Server Queue" in row:
            self.queue_us = int(row["Server Queue"])
            self.compute_us = sum(
                int(row[key])
                for key in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
            )
        self.server_requests = _last_int(r"Successful request count: (\d+)", text)
        self.server_executions = _last_int(r"Execution count: (\d+)", text)
        self.client_requests = _last_int(r"Request count: (\d+)", text)
        self.server_overhead_us = _last_int(r"\(overhead (\d+) usec", text)


def measure(
    pa: str,
    daemon: Daemon,
    variant: str,
    clients: int,
    data: Path,
    out: Path,
    flag_sets: Sequence[Sequence[str]],
    *,
    streaming: bool = False,
    version: str | None = None,
    cpus: str | None = None,
    tag: str = "",
    protocol: str = "grpc",
) -> PaResult:
    """One concurrency; each flag set in turn until one stabilizes. Files: out/<variant>-c<N>*.
    ``protocol`` "http" drives the daemon's HTTP front (KServe v2 REST) instead of gRPC."""
    name = f"{variant}-c{clients}{tag}"
    port = daemon.port
    if protocol == "http":
        if daemon.http_port is None:
            raise RuntimeError("the daemon logged no http_port: is its HTTP front on?")
        port = daemon.http_port
    result = PaResult(variant, clients, version is not None, False, "", 0)
    before = CpuSnapshot.take(daemon.pid)
    for attempt, flags in enumerate(flag_sets, start=1):
        csv_path, log_path = out / f"{name}.csv", out / f"{name}.{attempt}.log"
        csv_path.unlink(missing_ok=True)
        limit = time_limit(flags)
        cmd = command(
            pa, port, data, concurrency(clients), csv_path, flags, limit,
            streaming=streaming, version=version, cpus=cpus, protocol=protocol,
        )  # fmt: skip
        text, rc = invoke(cmd, limit + 20, log_path)
        result.attempts, result.flags = attempt, " ".join(flags)
        if rc == 0 and csv_path.is_file():
            result.fill(read_row(csv_path), text)
            break
        unstable = "Failed to obtain stable measurement" in text
        result.note = "unstable" if unstable else f"perf_analyzer rc {rc}; see {log_path.name}"
        if not unstable:
            break
    result.cpu = cpu_shares(before, CpuSnapshot.take(daemon.pid))
    return result
