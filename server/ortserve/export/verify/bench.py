"""Latency benchmark: PyTorch and each ONNX variant, each in a process of its own.

ONNX Runtime's and torch's thread pools fight when both run in one process, so the parent writes
the inputs to an .npz file and starts ``python -m ortserve.export.verify.bench`` once per variant;
the child loads one model, warms it up, times single-input and batch-32 runs and prints JSON. torch
and ONNX Runtime get the same number of threads (``--bench-threads``, default: every CPU).
p50/p95/p99 are over ``iterations`` timed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BATCH_SIZES = (1, 32)
TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """What one benchmark process loads: a PyTorch model folder or an ONNX file."""

    name: str
    kind: str  # "pytorch" or "onnx"
    path: Path
    task: str


@dataclass(frozen=True, slots=True)
class BenchRow:
    variant: str
    batch: int
    sequence_length: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_inputs(path: Path, feeds_by_batch: dict[int, dict[str, np.ndarray[Any, Any]]]) -> Path:
    """One .npz holding each batch size's graph feeds, keyed ``<batch>/<input name>``."""
    arrays = {f"{b}/{name}": a for b, feeds in feeds_by_batch.items() for name, a in feeds.items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def run_benchmarks(
    candidates: Sequence[Candidate],
    inputs: Path,
    iterations: int,
    threads: int,
    on_done: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Benchmark each candidate in its own process; a failing child names its variant."""

    rows: list[BenchRow] = []
    for candidate in candidates:
        cmd = [
            sys.executable, "-m", "ortserve.export.verify.bench",
            "--kind", candidate.kind, "--path", str(candidate.path), "--task", candidate.task,
            "--inputs", str(inputs), "--iterations", str(iterations), "--name", candidate.name,
            "--threads", str(threads),
        ]  # fmt: skip
        result = run_child(cmd, TIMEOUT_S, f"benchmark of {candidate.name}")
        rows += [BenchRow(**row) for row in result["rows"]]
        if on_done is not None:
            on_done(candidate.name)
    return rows


def run_child(cmd: list[str], timeout_s: float, what: str) -> dict[str, Any]:
    """Run a measuring child (``python -m ...``) and read the JSON object it prints last; a
    failure, a timeout or no result is an ExportError naming ``what``."""
    from ortserve.export.errors import ExportError

    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=child_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what} ran past {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ExportError(f"{what} failed:\n{tail}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ExportError(f"{what} printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child_env() -> dict[str, str]:
    """The environment of a measuring child: offline, and importing this very ortserve (a
    checkout on PYTHONPATH or an install)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    here = str(Path(__file__).resolve().parents[3])  # the folder holding ortserve/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return env


def p50(rows: Sequence[BenchRow], variant: str, batch: int) -> float | None:
    for row in rows:
        if row.variant == variant and row.batch == batch:
            return row.p50_ms
    return None


# -- the child process -------------------------------------------------------------------------


def _load_feeds(path: Path) -> dict[int, dict[str, np.ndarray[Any, Any]]]:
    feeds: dict[int, dict[str, np.ndarray[Any, Any]]] = {}
    with np.load(path) as data:
        for key in data.files:
            batch, name = key.split("/", 1)
            feeds.setdefault(int(batch), {})[name] = data[key]
    return feeds


def _runner(kind: str, path: Path, task: str, threads: int) -> Callable[[dict[str, Any]], object]:
    if kind == "onnx":
        from ortserve.export.verify.check import open_session

        session = open_session(path, threads)
        wanted = {i.name for i in session.get_inputs()}
        return lambda feeds: session.run(None, {k: v for k, v in feeds.items() if k in wanted})
    import torch

    from ortserve.export.convert.export import load_torch_model
    from ortserve.export.verify.samples import torch_inputs

    torch.set_num_threads(threads)
    model = load_torch_model(path, task)
    sentence_transformer = type(model).__name__ == "SentenceTransformer"

    def run(feeds: dict[str, Any]) -> object:
        inputs = {k: torch.from_numpy(v) for k, v in torch_inputs(feeds).items()}
        with torch.inference_mode():
            return model(inputs) if sentence_transformer else model(**inputs)

    return run


def _time(run: Callable[[dict[str, Any]], object], feeds: dict[str, Any], n: int) -> list[float]:
    for _ in range(max(2, n // 10)):  # warm-up: allocations, kernels, caches
        run(feeds)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ortserve.export.verify.bench")
    parser.add_argument("--kind", choices=("pytorch", "onnx"), required=True)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--name", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    run = _runner(args.kind, args.path, args.task, args.threads)
    rows = []
    for batch, feeds in sorted(_load_feeds(args.inputs).items()):
        times = _time(run, feeds, args.iterations)
        ids = feeds.get("input_ids", next(iter(feeds.values())))
        length = int(ids.shape[1]) if ids.ndim > 1 else 0
        p = np.percentile(times, [50, 95, 99])
        rows.append(
            BenchRow(args.name, batch, length, args.iterations, *(round(float(x), 3) for x in p))
        )
    print(json.dumps({"rows": [row.as_dict() for row in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
