"""Served vs raw ONNX Runtime: the dynamic batcher's throughput ratio and single-client latency.

    .venv/bin/python bench/ratio.py [--quick] [--variants spin,nospin,spin+stream] [--profile]

One run (default ~6 min, --quick ~2 min), in this order:

1. builds (or reuses) bench/.ratio/: the encoder (tests/factories encoder_model(), seq 32) once,
   and one repository per variant, whose config.pbtxt has max_batch_size 64,
   ``dynamic_batching { }`` (no delay: batch what queued while the session was busy) and
   intra_op_thread_count "2"; variant ``nospin`` adds session.intra_op.allow_spinning "0"
   (``intra1``, ``2x1``, ``2x2``, ``dyn``... exist for exploring, not run by default); a name
   ending in ``+stream`` (run by default for spin and nospin) is the same daemon driven by
   perf_analyzer --streaming: one ModelStreamInfer stream per client instead of unary calls;
2. measures raw in-process ONNX Runtime per variant (the daemon's own session options, read
   from that config.pbtxt by ortserve.runtime.options) at batch 1, 2, 4, ... 64, each size
   bounded to --raw-seconds (default 2); keeps the best seq/s and the batch-1 p50/p99;
3. unless --no-layers, runs the daemon's own layers in process (no gRPC, no load generator):
   batch-1 p50 through ModelSessions.run, VersionExecutor.submit, InferenceService.infer and the
   protobuf codec, then the whole path with 64 concurrent tasks;
4. starts one daemon per variant (127.0.0.1, --grpc-port 0, --metrics-port -1, JSON logs; the
   port is read from the "listening" line) and runs perf_analyzer against them, interleaved
   (c=64 for every variant, then c=1, c=32, c=8), single-row requests, each run under
   `timeout`, retried once with looser -s/-r when it cannot stabilize; around every run a short
   raw ORT probe at the best batch size gives "raw now" (the host's load moves within seconds);
   then once more at c=8 with and without `-x 1` (the model version) to check that the
   server-side statistics come through both ways; if the time budget (--budget) runs short,
   the variant that did worse at the highest concurrency measured so far is dropped and the
   output says so;
5. stops the daemons (always, try/finally), prints the table and writes
   bench/results/ratio-<UTC>/ (table.md, results.json, perf_analyzer CSVs and logs, daemon logs).

Per run it also reports the CPU the daemon (and its event-loop thread) and perf_analyzer used
and the CPU that *other* processes took meanwhile (machine busy time from /proc/stat minus
ours), as % of one core: on this shared 2-core VM that is the noise gauge.

--pin: daemon on CPU 0, perf_analyzer on CPU 1 (taskset), raw ORT and its probes on CPU 0.
--profile: after the measured runs, holds c=64 against the better variant for ~27 s and records
the daemon with py-spy for 20 s (``--native`` at 50 Hz, blocking; --no-native: Python frames
only, non-blocking) plus per-thread CPU from /proc; prints where the daemon's CPU went.
Needs `.venv/bin/pip install py-spy`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import gc
import itertools
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.make_repo import MODEL, SEQ, VOCAB, input_data  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
CONCURRENCY = (1, 8, 32, 64)
X_CHECK_CONCURRENCY = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name -> (config parameters over intra_op_thread_count "2", extra config.pbtxt text)
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "spin": ({}, ""),  # ONNX Runtime's default: intra-op threads spin while waiting for work
    "nospin": ({"session.intra_op.allow_spinning": "0"}, ""),
    # parallel loops hand out shrinking blocks on demand: a preempted thread holds less back
    "dyn": ({"session.dynamic_block_base": "4"}, ""),
    "nospin-dyn": (
        {"session.intra_op.allow_spinning": "0", "session.dynamic_block_base": "4"},
        "",
    ),
    # not in the default run: one intra-op thread leaves a core to the event loop and the client
    "intra1": ({"intra_op_thread_count": "1"}, ""),
    # two single-threaded sessions: no parallel-for barrier, one batch forms while one runs
    "2x1": ({"intra_op_thread_count": "1"}, "instance_group { count: 2 kind: KIND_CPU }\n"),
    # two 2-thread sessions: one fills the cores while the other's threads wait on each other
    "2x2": ({}, "instance_group { count: 2 kind: KIND_CPU }\n"),
    "2x2-nospin": (
        {"session.intra_op.allow_spinning": "0"},
        "instance_group { count: 2 kind: KIND_CPU }\n",
    ),
}


#: A variant name ending in this runs perf_analyzer with --streaming (ModelStreamInfer) against
#: the daemon of the variant before it: ``nospin+stream`` is nospin's daemon, over one stream.
STREAM = "+stream"


def base(variant: str) -> str:
    """The repository / daemon / raw measurement behind a run label."""
    return variant.removesuffix(STREAM)


def config_text(variant: str) -> str:
    params, extra = VARIANTS[variant]
    lines = [
        f'name: "{MODEL}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        "dynamic_batching { }",
    ]
    for key, value in {"intra_op_thread_count": "2", **params}.items():
        lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
    return "\n".join(lines) + "\n" + extra


# ---------------------------------------------------------------------------------------------
# repository


def build_repos(root: Path, variants: Sequence[str], rebuild: bool) -> tuple[dict[str, Path], Path]:
    """bench/.ratio/{model.onnx, encoder-input-seq32.json, <variant>/encoder/...}."""
    root.mkdir(parents=True, exist_ok=True)
    master = root / "model.onnx"
    stamp = root / "model.stamp"
    want = f"encoder_model(vocab={VOCAB}) seq {SEQ}"
    if rebuild or not master.is_file() or not stamp.is_file() or stamp.read_text() != want:
        from tests.factories.onnx_models import encoder_model

        tmp = master.with_suffix(".tmp")
        tmp.write_bytes(encoder_model(vocab=VOCAB).SerializeToString())
        tmp.replace(master)
        stamp.write_text(want)
    data = root / f"{MODEL}-input-seq{SEQ}.json"
    data.write_text(json.dumps(input_data()) + "\n")
    repos: dict[str, Path] = {}
    for name in variants:
        repo = root / name
        version = repo / MODEL / "1"
        version.mkdir(parents=True, exist_ok=True)
        target = version / "model.onnx"
        if not target.is_file() or target.stat().st_ino != master.stat().st_ino:
            target.unlink(missing_ok=True)
            try:
                os.link(master, target)
            except OSError:
                shutil.copyfile(master, target)
        (repo / MODEL / "config.pbtxt").write_text(config_text(name))
        repos[name] = repo
    return repos, data


def feed_row() -> dict[str, np.ndarray]:
    row = input_data()["data"][0]
    return {
        "input_ids": np.asarray(row["input_ids"]["content"], dtype=np.int64)[None, :],
        "attention_mask": np.asarray(row["attention_mask"]["content"], dtype=np.int64)[None, :],
    }


# ---------------------------------------------------------------------------------------------
# raw ONNX Runtime, in process


@dataclass
class RawResult:
    rates: dict[int, float]  # batch size -> seq/s
    best_batch: int
    best_rate: float
    b1_p50_ms: float
    b1_p99_ms: float
    other_pct: float = 0.0  # CPU that other processes took meanwhile, % of one core
    layers: dict[str, Any] = field(default_factory=dict)


def ort_sessions(repo: Path) -> list[Any]:
    """One session per instance, with exactly the options the daemon builds from the config."""
    import onnxruntime as ort

    from ortserve.repository.config import read_config
    from ortserve.runtime.options import ort_available_providers, provider_plan, session_options

    parsed = read_config(repo / MODEL)
    options = session_options(parsed.config, parsed.source)
    plan = provider_plan(parsed.config, ort_available_providers(), parsed.source)
    count = sum(group.count for group in parsed.config.instance_group) or 1
    return [
        ort.InferenceSession(
            str(repo / MODEL / "1" / "model.onnx"),
            sess_options=options,
            providers=[name for name, _ in plan.providers],
            provider_options=[opts for _, opts in plan.providers],
        )
        for _ in range(count)
    ]


def time_runs(session: Any, batch: int, seconds: float, warm: float = 0.3) -> list[float]:
    """Per-call seconds of back-to-back runs at ``batch``: ``warm`` s warm-up, then ``seconds``."""
    row = feed_row()
    feed = {name: np.repeat(array, batch, axis=0) for name, array in row.items()}
    for phase_seconds, keep in ((warm, False), (seconds, True)):
        times: list[float] = []
        start = time.perf_counter()
        for _ in range(200_000):  # bounded in count as well as in time
            t0 = time.perf_counter()
            session.run(None, feed)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 - start >= phase_seconds:
                break
        if keep:
            return times
    raise AssertionError("unreachable")


def rate_of(
    sessions: Sequence[Any], batch: int, seconds: float, warm: float = 0.3
) -> tuple[float, list[float]]:
    """Rows/s of all instances running back to back at once (as the daemon's runners would)."""
    if len(sessions) == 1:
        times = time_runs(sessions[0], batch, seconds, warm)
        return batch * len(times) / sum(times), times
    results: list[list[float]] = [[] for _ in sessions]

    def work(index: int) -> None:
        results[index] = time_runs(sessions[index], batch, seconds, warm)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return sum(batch * len(t) / sum(t) for t in results if t), results[0]


def measure_raw(repo: Path, seconds: float, sizes: Sequence[int]) -> RawResult:
    sessions = ort_sessions(repo)
    rates: dict[int, float] = {}
    wall, busy, mine = time.perf_counter(), machine_busy(), _self_cpu()
    b1: list[float] = []
    # Two sweeps, up then down, each size keeping its better figure: one slow second of this
    # shared host must not make the ceiling (and so the served ratio) look better than it is.
    for order in (list(sizes), list(reversed(sizes))):
        for batch in order:
            rate, _ = rate_of(sessions, batch, seconds)
            rates[batch] = max(rates.get(batch, 0.0), rate)
        times = time_runs(sessions[0], 1, seconds)  # one request at a time: one instance busy
        if not b1 or np.percentile(times, 50) < np.percentile(b1, 50):
            b1 = times
    other = (machine_busy() - busy) - (_self_cpu() - mine)
    other_pct = round(100 * max(other, 0.0) / (time.perf_counter() - wall))
    del sessions
    gc.collect()
    best = max(rates, key=lambda b: rates[b])
    return RawResult(
        rates,
        best,
        rates[best],
        float(np.percentile(b1, 50) * 1e3),
        float(np.percentile(b1, 99) * 1e3),
        other_pct,
    )


class Prober:
    """Short raw ORT probes right before and after each served run: the ceiling *now*.

    The host's load moves within seconds, so a served figure is divided by the raw rate
    measured around it (mean of the probe before and the one after) as well as by the sweep's.
    """

    def __init__(
        self, repos: dict[str, Path], raw: dict[str, RawResult], seconds: float, pin: bool
    ) -> None:
        self._raw = raw
        self._seconds = seconds
        self._pin = pin
        affinity = os.sched_getaffinity(0)
        try:  # ORT's pool threads take the affinity of the thread that creates the session
            if pin:
                os.sched_setaffinity(0, {0})
            self._sessions = {name: ort_sessions(repos[name]) for name in raw}
        finally:
            os.sched_setaffinity(0, affinity)
        self.log: list[dict[str, Any]] = []

    def probe(self, variant: str) -> tuple[float, float]:
        """(seq/s at the sweep's best batch, batch-1 p50 ms)."""
        affinity = os.sched_getaffinity(0)
        try:
            if self._pin:
                os.sched_setaffinity(0, {0})
            sessions = self._sessions[variant]
            rate, _ = rate_of(sessions, self._raw[variant].best_batch, self._seconds, 0.05)
            p50 = float(np.percentile(time_runs(sessions[0], 1, self._seconds / 2, 0.05), 50))
        finally:
            os.sched_setaffinity(0, affinity)
        self.log.append(
            {"variant": variant, "t": time.time(), "rate": rate, "b1_p50_ms": p50 * 1e3}
        )
        return rate, p50 * 1e3

    def close(self) -> None:
        self._sessions.clear()
        gc.collect()


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# the daemon's own layers, in process (no gRPC, no load generator)


LAYERS = (
    ("sessions", "ModelSessions.run (executor-thread hop)"),
    ("executor", "+ VersionExecutor.submit (batcher, stack/split, statistics)"),
    ("service", "+ InferenceService.infer (checks, metrics, response)"),
    ("full", "+ protobuf parse/serialize and protocol codec (all but the transport)"),
)


async def _layers(repo: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    """p50 per layer at one request at a time, then the full path with ``concurrency`` tasks."""
    import structlog

    from ortserve.inference import InferenceService
    from ortserve.observability.metrics import Metrics
    from ortserve.protocol import codec
    from ortserve.registry.registry import ModelRegistry
    from ortserve_client.proto import grpc_service_pb2 as pb

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    metrics = Metrics()
    registry = ModelRegistry(repo, 32, metrics)
    await registry.load_all()
    try:
        served = registry.resolve(MODEL)
        service = InferenceService(registry, metrics)
        row = feed_row()
        names = [output.name for output in served.config.output]
        request = pb.ModelInferRequest(model_name=MODEL)
        for name, array in row.items():
            request.inputs.add(name=name, datatype="INT64", shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        wire = request.SerializeToString()
        decoded = codec.decode_infer_request(pb.ModelInferRequest.FromString(wire))

        async def sessions() -> None:
            await served.sessions.run(row, names)

        async def executor() -> None:
            await served.executor.submit(row)

        async def service_only() -> None:
            await service.infer(decoded)

        async def full() -> None:
            message = codec.decode_infer_request(pb.ModelInferRequest.FromString(wire))
            codec.encode_infer_response(await service.infer(message)).SerializeToString()

        hop_pool = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()

        async def hop() -> None:  # the thread round trip alone: no ORT, no GIL contention
            await loop.run_in_executor(hop_pool, int)

        calls = {
            "hop": hop,
            "sessions": sessions,
            "executor": executor,
            "service": service_only,
            "full": full,
        }
        out: dict[str, Any] = {}
        for name, call in calls.items():
            for phase in (0.2, seconds):  # warm-up, then measure
                times: list[float] = []
                start = time.perf_counter()
                for _ in range(100_000):
                    t0 = time.perf_counter()
                    await call()
                    t1 = time.perf_counter()
                    times.append(t1 - t0)
                    if t1 - start >= phase:
                        break
            out[f"{name}_p50_ms"] = float(np.percentile(times, 50) * 1e3)
        hop_pool.shutdown()
        executed = served.executor.batcher.stats

        async def client(stop_at: float, counts: list[int]) -> None:
            for _ in range(100_000):
                if time.perf_counter() >= stop_at:
                    return
                await full()
                counts[0] += 1

        counts = [0]
        start = time.perf_counter()
        await asyncio.gather(*(client(start + seconds, counts) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = served.executor.batcher.stats
        out["full_concurrency"] = concurrency
        out["full_infer_per_s"] = counts[0] / elapsed
        batches = after.batches_executed - executed.batches_executed
        out["full_mean_batch"] = (
            (after.requests_executed - executed.requests_executed) / batches if batches else None
        )
        return out
    finally:
        await registry.close()


def measure_layers(repo: Path, seconds: float, concurrency: int = 64) -> dict[str, Any]:
    """On the daemon's own event loop and GIL switch interval (ortserve.cli / ortserve.app)."""
    from ortserve.app import SWITCH_INTERVAL_S
    from ortserve.cli import loop_factory

    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            return runner.run(_layers(repo, seconds, concurrency))
    except Exception as exc:  # the server's internals move under us: report, do not stop
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        sys.setswitchinterval(interval)


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc


def proc_cpu(pid: int) -> float:
    """User + system seconds of a process (all its threads)."""
    return proc_cpu_path(Path(f"/proc/{pid}/stat"))


def proc_cpu_path(path: Path) -> float:
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def cpu_pressure() -> str:
    with contextlib.suppress(OSError):
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return line.split()[1].split("=")[1]  # "some avg10"
    return "n/a"


@dataclass
class CpuSnapshot:
    wall: float
    machine: float
    daemon: float
    daemon_loop: (
        float  # the daemon's main thread: the event loop, where all per-request Python runs
    )
    children: float
    me: float

    @classmethod
    def take(cls, daemon_pid: int) -> CpuSnapshot:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            time.perf_counter(),
            machine_busy(),
            proc_cpu(daemon_pid),
            proc_cpu_path(Path(f"/proc/{daemon_pid}/task/{daemon_pid}/stat")),
            kids.ru_utime + kids.ru_stime,
            mine.ru_utime + mine.ru_stime,
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


# ---------------------------------------------------------------------------------------------
# the daemon


class Daemon:
    """``python -m ortserve serve`` on 127.0.0.1 and a free port; logs to ``log_path``."""

    def __init__(self, repo: Path, log_path: Path, cpus: str | None) -> None:
        self.repo = repo
        self.log_path = log_path
        self.cpus = cpus
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ortserve",
            "serve",
            "--model-repository",
            str(self.repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
            "--log-format",
            "json",
            "--grace-seconds",
            "1",
        ]
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        log = self.log_path.open("w")
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout, log), daemon=True
        )
        self._reader.start()

    def _read(self, stream: TextIO, log: TextIO) -> None:
        with log:
            for line in stream:
                log.write(line)
                log.flush()
                with contextlib.suppress(ValueError):
                    self._events.put(json.loads(line))
        self._events.put(None)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is None:
                raise RuntimeError(f"daemon exited before ready; see {self.log_path}")
            if event.get("event") == "listening":
                self.port = int(event["grpc_port"])
            elif event.get("event") == "ready" and self.port:
                return
            elif event.get("level") == "error":
                raise RuntimeError(f"daemon: {event}; see {self.log_path}")
        raise RuntimeError(f"daemon not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# perf_analyzer


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


def pa_path(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("PA"):
        return os.environ["PA"]
    setup = ROOT.parent / "shared" / "tools" / "perf-analyzer-setup.sh"
    out = subprocess.run(
        ["bash", str(setup)], capture_output=True, text=True, timeout=600, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def run_pa(
    pa: str,
    daemon: Daemon,
    variant: str,
    concurrency: int,
    data: Path,
    out: Path,
    flag_sets: Sequence[Sequence[str]],
    version: str | None = None,
    cpus: str | None = None,
    tag: str = "",
) -> PaResult:
    """One concurrency; each flag set in turn until one stabilizes. Each try under `timeout`."""
    name = f"{variant}-c{concurrency}{tag}"
    result = PaResult(variant, concurrency, version is not None, False, "", 0)
    before = CpuSnapshot.take(daemon.pid)
    for attempt, flags in enumerate(flag_sets, start=1):
        csv_path, log_path = out / f"{name}.csv", out / f"{name}.{attempt}.log"
        csv_path.unlink(missing_ok=True)
        interval_s = int(flags[flags.index("-p") + 1]) / 1000 if "-p" in flags else 5.0
        windows = int(flags[flags.index("-r") + 1]) if "-r" in flags else 10
        limit = int(interval_s * windows + 30)
        cmd = [
            "timeout",
            "-k",
            "5",
            str(limit),
            pa,
            "-i",
            "grpc",
            "-u",
            f"127.0.0.1:{daemon.port}",
            "-m",
            MODEL,
            *(["-x", version] if version else []),
            "-b",
            "1",
            "--shape",
            f"input_ids:{SEQ}",
            "--shape",
            f"attention_mask:{SEQ}",
            "--input-data",
            str(data),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            *(["--streaming"] if variant.endswith(STREAM) else []),
            "-f",
            str(csv_path),
            *flags,
        ]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit + 20, cwd=ROOT)
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            partial = [
                x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)
            ]
            text, rc = "".join(partial) + f"\n(killed after {limit + 20} s)", -9
        log_path.write_text(f"$ {' '.join(cmd)}\n{text}")
        result.attempts, result.flags = attempt, " ".join(flags)
        if rc == 0 and csv_path.is_file():
            row = next(csv.DictReader(csv_path.open()))
            result.ok = True
            result.infer_per_s = float(row["Inferences/Second"])
            result.p50_ms = int(row["p50 latency"]) / 1e3
            result.p90_ms = int(row["p90 latency"]) / 1e3
            result.p99_ms = int(row["p99 latency"]) / 1e3
            if "Server Queue" in row:
                result.queue_us = int(row["Server Queue"])
                result.compute_us = sum(
                    int(row[key])
                    for key in (
                        "Server Compute Input",
                        "Server Compute Infer",
                        "Server Compute Output",
                    )
                )
            result.server_requests = _last_int(r"Successful request count: (\d+)", text)
            result.server_executions = _last_int(r"Execution count: (\d+)", text)
            result.client_requests = _last_int(r"Request count: (\d+)", text)
            result.server_overhead_us = _last_int(r"\(overhead (\d+) usec", text)
            break
        unstable = "Failed to obtain stable measurement" in text
        result.note = "unstable" if unstable else f"perf_analyzer rc {rc}; see {log_path.name}"
        if not unstable:
            break
    result.cpu = cpu_shares(before, CpuSnapshot.take(daemon.pid))
    return result


# ---------------------------------------------------------------------------------------------
# profile


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
    holder: dict[str, PaResult] = {}

    def load() -> None:  # ~27 s of c=64: 3 windows of 9 s, any variation accepted
        holder["pa"] = run_pa(
            pa,
            daemon,
            variant,
            64,
            data,
            out,
            [["-p", "9000", "-s", "1000", "-r", "3"]],
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


# ---------------------------------------------------------------------------------------------
# report


def table(results: Sequence[PaResult], raw: dict[str, RawResult]) -> list[str]:
    ceiling = max((r.best_rate for r in raw.values()), default=float("nan"))
    lines = [
        "| variant | c | infer/s | ÷ raw best | ÷ ceiling | ÷ raw now | p50 ms | p99 ms "
        "| queue µs | compute µs | overhead µs | mean batch | daemon CPU (loop) "
        "| perf_analyzer CPU | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def na(value: Any) -> str:
        return "—" if value is None else str(value)

    for r in sorted(results, key=lambda r: (r.variant, r.concurrency, r.version_flag)):
        c = f"{r.concurrency}{' (-x 1)' if r.version_flag else ''}"
        if r.ok and r.attempts > 1:
            c += f" ({r.flags})"
        cpu = (
            f"{r.cpu.get('daemon_pct', '')}% ({r.cpu.get('daemon_loop_pct', '')}%) "
            f"| {r.cpu.get('perf_analyzer_pct', '')}% | {r.cpu.get('other_pct', '')}%"
        )
        if not r.ok:
            lines.append(f"| {r.variant} | {c} | — ({r.note}) | | | | | | | | | | {cpu} |")
            continue
        mine = raw.get(base(r.variant))
        own = r.infer_per_s / mine.best_rate if mine is not None else float("nan")
        batch = f"{r.mean_batch:.1f}" if r.mean_batch else "—"
        lines.append(
            f"| {r.variant} | {c} | {r.infer_per_s:.0f} | {own:.2f} "
            f"| {r.infer_per_s / ceiling:.2f} "
            f"| {r.infer_per_s / r.raw_now_rate if r.raw_now_rate else float('nan'):.2f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {na(r.queue_us)} | {na(r.compute_us)} "
            f"| {na(r.server_overhead_us)} | {batch} | {cpu} |"
        )
    return lines


def layer_lines(raw: dict[str, RawResult], results: Sequence[PaResult]) -> list[str]:
    lines = []
    for name, r in raw.items():
        layers = r.layers
        if not layers:
            continue
        if "error" in layers:
            lines.append(f"- in-process layers `{name}`: failed ({layers['error']})")
            continue
        steps = [("raw session.run", r.b1_p50_ms)]
        steps += [(label, layers[f"{key}_p50_ms"]) for key, label in LAYERS]
        served = [
            x
            for x in results
            if x.variant == name and x.concurrency == 1 and x.ok and not x.version_flag
        ]
        if served:
            steps.append(
                ("+ gRPC transport and perf_analyzer's client (served, c=1)", served[0].p50_ms)
            )
        parts = [f"{steps[0][0]} {steps[0][1]:.2f}"]
        for (_, before), (label, value) in itertools.pairwise(steps):
            parts.append(f"{label} {value:.2f} ({value - before:+.2f})")
        lines.append(
            f"- c=1 p50 by layer, ms, `{name}`: "
            + " → ".join(parts)
            + f" (an executor round trip with a no-op alone: {layers['hop_p50_ms']:.3f})"
        )
        batch = layers.get("full_mean_batch")
        lines.append(
            f"- in-process full path (no gRPC, no load generator) at "
            f"{layers['full_concurrency']} concurrent tasks, `{name}`: "
            f"{layers['full_infer_per_s']:.0f} infer/s = "
            f"{layers['full_infer_per_s'] / r.best_rate:.2f}x raw best"
            + (f", mean batch {batch:.1f}" if batch else "")
        )
    return lines


def raw_lines(raw: dict[str, RawResult]) -> list[str]:
    lines = []
    for name, r in raw.items():
        rates = ", ".join(f"{b}: {v:.0f}" for b, v in r.rates.items())
        lines.append(
            f"- raw ORT `{name}`: best {r.best_rate:.0f} seq/s at batch {r.best_batch}; "
            f"batch-1 p50 {r.b1_p50_ms:.2f} ms, p99 {r.b1_p99_ms:.2f} ms "
            f"(seq/s by batch: {rates}; other processes {r.other_pct}% CPU)"
        )
    return lines


def target_lines(results: Sequence[PaResult], raw: dict[str, RawResult]) -> list[str]:
    """c=64 is judged against the ceiling: the best raw rate of any variant's options."""
    lines = []
    labels = dict.fromkeys(x.variant for x in results if base(x.variant) in raw)
    ceiling = max(raw.values(), key=lambda r: r.best_rate)
    for name in labels:
        r = raw[base(name)]
        mine = {
            x.concurrency: x for x in results if x.variant == name and x.ok and not x.version_flag
        }
        if 64 in mine:
            ratio = mine[64].infer_per_s / ceiling.best_rate
            verdict = "met" if ratio >= 0.9 else "NOT met"
            now = mine[64].raw_now_rate
            lines.append(
                f"- `{name}` c=64: {mine[64].infer_per_s:.0f} / {ceiling.best_rate:.0f} = "
                f"{ratio:.2f}x the raw ceiling (target ≥ 0.90: {verdict}); "
                f"{mine[64].infer_per_s / r.best_rate:.2f}x its own options' raw best"
                + (
                    f"; against raw probed around the run ({now:.0f}): "
                    f"{mine[64].infer_per_s / now:.2f}x"
                    if now
                    else ""
                )
            )
        if 1 in mine:
            diff = mine[1].p50_ms - r.b1_p50_ms
            verdict = "met" if diff <= 0.5 else "NOT met"
            now_p50 = mine[1].raw_now_b1_p50_ms
            lines.append(
                f"- `{name}` c=1: served p50 {mine[1].p50_ms:.2f} ms - raw batch-1 p50 "
                f"{r.b1_p50_ms:.2f} ms = {diff:+.2f} ms (target ≤ +0.50: {verdict})"
                + (
                    f"; against raw probed around the run ({now_p50:.2f} ms): "
                    f"{mine[1].p50_ms - now_p50:+.2f} ms"
                    if now_p50
                    else ""
                )
            )
    return lines


def print_profile(summary: dict[str, Any]) -> list[str]:
    served = summary.get("served") or {}
    lines = [
        f"- daemon CPU over the 20 s: {summary['daemon_cpu_s']} s "
        f"({100 * summary['daemon_cpu_s'] / 20:.0f}% of one core); py-spy samples "
        f"{summary['samples']}; served meanwhile {served.get('infer_per_s', 0):.0f} infer/s "
        "(py-spy slows what it samples: compare with the table's c=64 row)",
        "- % of daemon CPU by category: "
        + ", ".join(f"{k} {v}%" for k, v in summary["categories_pct_of_daemon_cpu"].items()),
    ]
    for thread in summary["threads"][:6]:
        split = ", ".join(f"{k} {v}%" for k, v in thread["split_pct_of_daemon"].items())
        lines.append(
            f"  - {thread['name']} ({thread['tid']}): {thread['cpu_s']} s = "
            f"{thread['cpu_pct_of_daemon']}%: {split}"
        )
    lines.append(
        "- event-loop thread, busy samples by leaf ← caller: "
        + "; ".join(
            f"{k} {v}%"
            for k, v in list(summary["main_thread_top_pct_of_its_busy_samples"].items())[:10]
        )
    )
    return lines


# ---------------------------------------------------------------------------------------------
# main


def plan_runs(variants: Sequence[str], concurrencies: Sequence[int]) -> list[tuple[int, str]]:
    """Most important first (c=64, then c=1, then the rest high to low), variants interleaved."""
    order = sorted(concurrencies, key=lambda c: (c != 64, c != 1, -c))
    return [(c, v) for c in order for v in variants]


@contextlib.contextmanager
def daemons(repos: dict[str, Path], out: Path, cpus: str | None) -> Iterator[dict[str, Daemon]]:
    started: dict[str, Daemon] = {}
    try:
        for name, repo in repos.items():
            daemon = Daemon(repo, out / f"daemon-{name}.log", cpus)
            started[name] = daemon
            daemon.start()
        for daemon in started.values():
            daemon.wait_ready()
        yield started
    finally:
        for daemon in started.values():
            daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="~1 min: raw 1 s per size, c=1 and 64 only, -p 2000, no -x check",
    )
    parser.add_argument(
        "--variants",
        default="spin,nospin,spin+stream,nospin+stream",
        help="comma-separated, from: " + ", ".join(VARIANTS) + "; NAME+stream: perf_analyzer "
        "--streaming (ModelStreamInfer) against NAME's daemon",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument(
        "--raw-seconds", type=float, default=None, help="per batch size (default 2, --quick 1)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run (default 420, --quick 150)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="taskset: daemon and raw ORT on CPU 0, perf_analyzer on CPU 1",
    )
    parser.add_argument("--no-x-check", action="store_true", help="skip the -x 1 run")
    parser.add_argument(
        "--no-layers",
        action="store_true",
        help="skip the in-process per-layer latency and c=64 measurement",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the daemon at c=64 after the measured runs"
    )
    parser.add_argument("--no-native", action="store_true", help="py-spy without --native")
    parser.add_argument("--pa", help="perf_analyzer (default: $PA or the shared setup script)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the model file")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if base(v) not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)} (+stream)")
    bases = list(dict.fromkeys(base(v) for v in variants))
    concurrencies = args.concurrency or ((1, 64) if args.quick else CONCURRENCY)
    raw_seconds = args.raw_seconds or (1.0 if args.quick else 2.0)
    budget = args.budget or (150.0 if args.quick else 420.0)
    interval = "2000" if args.quick else "3000"
    flag_sets = [["-p", interval, "-s", "25", "-r", "6"], ["-p", interval, "-s", "40", "-r", "10"]]
    x_check = not (args.no_x_check or args.quick)
    cpus_daemon, cpus_pa = ("0", "1") if args.pin else (None, None)
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("--pin needs 2 CPUs")

    pa = pa_path(args.pa)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = BENCH / "results" / f"ratio-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    repos, data = build_repos(BENCH / ".ratio", bases, args.rebuild)
    notes: list[str] = []
    load_before, psi_before = os.getloadavg(), cpu_pressure()
    print(
        f"ratio benchmark {stamp}: variants {', '.join(variants)}, concurrency "
        f"{', '.join(map(str, concurrencies))}{', pinned' if args.pin else ''}; "
        f"load {load_before[0]:.2f}, cpu pressure avg10 {psi_before}",
        flush=True,
    )

    raw: dict[str, RawResult] = {}
    affinity = os.sched_getaffinity(0)
    try:
        if args.pin:
            os.sched_setaffinity(0, {0})
        for name in bases:
            raw[name] = measure_raw(repos[name], raw_seconds, BATCH_SIZES)
            print(raw_lines({name: raw[name]})[0], flush=True)
        if not args.no_layers:
            for name in bases:
                raw[name].layers = measure_layers(repos[name], min(raw_seconds / 2, 0.8))
            for line in layer_lines(raw, []):
                print(line, flush=True)
    finally:
        os.sched_setaffinity(0, affinity)

    results: list[PaResult] = []
    profile: dict[str, Any] | None = None
    probe_seconds = 0.5 if args.quick else 0.8
    prober = Prober(repos, raw, probe_seconds, args.pin)
    with contextlib.ExitStack() as stack:
        stack.callback(prober.close)
        running = stack.enter_context(daemons(repos, out, cpus_daemon))
        pending = plan_runs(variants, concurrencies)
        run_estimate = float(interval) / 1000 * 4 + 4  # a run that stabilizes in 3-4 windows
        while pending:
            if results:  # what runs really take here, probes included
                seen = [r.cpu["wall_s"] + 2 * probe_seconds for r in results]
                run_estimate = max(run_estimate, sum(seen) / len(seen))
            left = budget - (time.monotonic() - t0) - (20 if x_check else 0) - 10
            alive = sorted({v for _, v in pending})
            if len(pending) * run_estimate > left and len(alive) > 1:
                done = [r for r in results if r.ok and not r.version_flag and r.variant in alive]
                top_c = max((r.concurrency for r in done), default=None)
                if top_c is not None:
                    at_top = {r.variant: r.infer_per_s for r in done if r.concurrency == top_c}
                    if len(at_top) == len(alive):
                        worse = min(at_top, key=lambda v: at_top[v])
                        skipped = ", ".join(f"c={c}" for c, v in pending if v == worse)
                        pending = [(c, v) for c, v in pending if v != worse]
                        notes.append(
                            f"time budget ({budget:.0f} s) short: dropped variant `{worse}` at "
                            f"{skipped} (it did worse at c={top_c}: {at_top[worse]:.0f} vs "
                            f"{max(at_top.values()):.0f} infer/s)"
                        )
                        continue
            if run_estimate > left + 10:
                notes.append(
                    f"time budget ({budget:.0f} s) spent: skipped "
                    + ", ".join(f"{v} c={c}" for c, v in pending)
                )
                break
            c, name = pending.pop(0)
            before = prober.probe(base(name))
            result = run_pa(pa, running[base(name)], name, c, data, out, flag_sets, cpus=cpus_pa)
            after = prober.probe(base(name))
            result.raw_now_rate = (before[0] + after[0]) / 2
            result.raw_now_b1_p50_ms = (before[1] + after[1]) / 2
            results.append(result)
            mean = f", mean batch {result.mean_batch:.1f}" if result.mean_batch else ""
            print(
                f"  {name} c={c}: "
                + (
                    f"{result.infer_per_s:.0f} infer/s, p50 {result.p50_ms:.2f} ms, p99 "
                    f"{result.p99_ms:.2f} ms, queue {result.queue_us} µs, compute "
                    f"{result.compute_us} µs{mean}"
                    if result.ok
                    else result.note
                )
                + f" [daemon {result.cpu['daemon_pct']}%, other {result.cpu['other_pct']}% CPU;"
                f" raw probes {before[0]:.0f} → {after[0]:.0f} seq/s]",
                flush=True,
            )
        if x_check:
            name = bases[0]
            flags = [
                ["-p", "2000", "-s", "1000", "-r", "3"]
            ]  # any variation: a check, not a figure
            pair = []
            for version in (None, "1"):
                r = run_pa(
                    pa,
                    running[name],
                    name,
                    X_CHECK_CONCURRENCY,
                    data,
                    out,
                    flags,
                    version=version,
                    cpus=cpus_pa,
                    tag="-xcheck" + ("-x1" if version else ""),
                )
                pair.append(r)
            results.append(pair[1])
            for r in pair:
                has = r.ok and r.queue_us is not None and r.server_requests is not None
                notes.append(
                    f"-x check ({name}, c={X_CHECK_CONCURRENCY}, "
                    f"{'-x 1' if r.version_flag else 'no -x'}): "
                    + (
                        f"ok, server stats present: {r.server_requests} requests / "
                        f"{r.server_executions} executions, queue {r.queue_us} µs, compute "
                        f"{r.compute_us} µs (client counted {r.client_requests})"
                        if has
                        else f"FAILED or no server stats ({r.note})"
                    )
                )
        if args.profile:
            name = sorted({r.variant for r in results if r.ok} or {variants[0]})[0]
            if len(variants) > 1:
                scored = {
                    r.variant: r.infer_per_s
                    for r in results
                    if r.ok and r.concurrency == 64 and not r.version_flag
                }
                if scored:
                    name = max(scored, key=lambda v: scored[v])
            print(f"  profiling `{name}` at c=64 with py-spy (20 s)...", flush=True)
            profile = profile_daemon(
                pa, running[base(name)], name, data, out, not args.no_native, cpus_pa
            )
            if profile is not None:
                profile["variant"] = name

    load_after, psi_after = os.getloadavg(), cpu_pressure()

    lines = [
        f"Run {stamp} ({time.monotonic() - t0:.0f} s): "
        f"`{' '.join(['.venv/bin/python', 'bench/ratio.py', *(argv if argv is not None else sys.argv[1:])])}`",  # noqa: E501
        f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)} → "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}; "
        f"cpu pressure avg10 {psi_before} → {psi_after}",
        "",
        *raw_lines(raw),
        "",
        *table(results, raw),
        "",
        *target_lines(results, raw),
        *layer_lines(raw, results),
        *(f"- {note}" for note in notes),
    ]
    if profile is not None:
        lines += ["", f"Profile (`{profile['variant']}`, c=64):", *print_profile(profile)]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "stamp": stamp,
                "load_before": load_before,
                "load_after": load_after,
                "psi_before": psi_before,
                "psi_after": psi_after,
                "raw": {k: asdict(v) for k, v in raw.items()},
                "served": [asdict(r) for r in results],
                "notes": notes,
                "probes": prober.log,
                "profile": profile,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out.relative_to(ROOT)}")
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
