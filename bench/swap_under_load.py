"""Hot swaps under load: perf_analyzer at concurrency 32 while new versions are published.

    .venv/bin/python -m bench.swap_under_load [--every 3] [--seconds 30]

Builds the synthetic encoder repository (bench.make_repo), starts the daemon on 127.0.0.1,
then runs perf_analyzer twice at concurrency 32 for the same time: once in steady state, once
while a new version is published every ``--every`` seconds (by atomic rename, as the exporter
does; the old one is deleted after the swap). perf_analyzer stops with an error on the first
failed request, so a clean run means zero failed requests. Prints throughput and p50/p99 of both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.lib import perf_analyzer
from bench.lib.daemon import serving
from bench.lib.encoder import MODEL
from bench.make_repo import build
from ortserve_client import Client


def run_pa(pa: str, port: int, data: Path, out: Path, seconds: float) -> dict[str, str]:
    """Closed loop of 32 clients in 5 s windows for ``seconds``; the CSV row. Any failed
    request stops perf_analyzer: an error here means one failed."""
    flags = ["-p", "5000", "-r", str(max(int(seconds // 5), 1)), "-s", "1000"]
    load = perf_analyzer.concurrency(32)
    cmd = perf_analyzer.command(pa, port, data, load, out, flags, int(seconds) + 60)
    text, rc = perf_analyzer.invoke(cmd, seconds + 90)
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"perf_analyzer failed (rc {rc}):\n{text[-2000:]}")
    return perf_analyzer.read_row(out)


def swapper(
    repo: Path, every: float, stop: threading.Event, address: str, swaps: list[float]
) -> None:
    model = repo / MODEL
    source = (model / "1" / "model.onnx").read_bytes()
    version = 1
    with Client(address, validate=False) as client:
        while not stop.wait(every):
            version += 1
            staging = model / f".staging-{version}"
            staging.mkdir()
            (staging / "model.onnx").write_bytes(source)
            os.rename(staging, model / str(version))
            started = time.monotonic()
            while client.model_metadata(MODEL).versions != [str(version)]:
                if time.monotonic() - started > 60:
                    raise TimeoutError(f"version {version} never came in")
                time.sleep(0.02)
            swaps.append(time.monotonic() - started)
            shutil.rmtree(model / str(version - 1), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=3.0, help="seconds between new versions")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measurement")
    parser.add_argument("--pa", help="perf_analyzer path (default: the shared setup script's)")
    args = parser.parse_args()
    pa = perf_analyzer.find(args.pa)
    work = Path(tempfile.mkdtemp(prefix="ortserve-swap-"))
    repo = work / "repo"
    data = build(repo)
    swaps: list[float] = []
    extra = ("--settle-seconds", "1", "--log-level", "info")
    try:
        with serving(repo, work / "daemon.log", *extra, metrics_port=0) as daemon:
            steady = run_pa(pa, daemon.port, data, work / "steady.csv", args.seconds)
            stop = threading.Event()
            thread = threading.Thread(
                target=swapper, args=(repo, args.every, stop, daemon.address, swaps)
            )
            thread.start()
            try:
                swapping = run_pa(pa, daemon.port, data, work / "swapping.csv", args.seconds)
            finally:
                stop.set()
                thread.join(120)
        log = (work / "daemon.log").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(swaps)} swaps during the second run (each served within "
          f"{max(swaps, default=0):.2f} s of its rename); 'unexpected error' in the log: "
          f"{log.count('unexpected error')}")  # fmt: skip
    print(f"{'run':10} {'infer/s':>8} {'p50 ms':>8} {'p99 ms':>8}  failed")
    for name, row in (("steady", steady), ("swapping", swapping)):
        p50, p99 = int(row["p50 latency"]) / 1e3, int(row["p99 latency"]) / 1e3
        print(f"{name:10} {float(row['Inferences/Second']):8.1f} {p50:8.2f} {p99:8.2f}  0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
