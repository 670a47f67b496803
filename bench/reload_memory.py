"""RSS of the daemon over many load/swap/unload cycles of a ~50 MB model (hot-reload memory).

    .venv/bin/python -m bench.reload_memory [--cycles 100] [--settle 0.2]

Each cycle publishes a new version by atomic rename (the daemon loads it beside the serving one,
swaps, drains and closes the old one), serves a request from it, and every tenth cycle also
unloads and reloads the model over gRPC. The daemon's RSS (VmRSS) is read from /proc after a
warm-up of 5 cycles and at the end. Loopback only; bounded in cycles and time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lib.daemon import serving
from bench.lib.procstat import rss_mb
from ortserve_client import Client
from tests.factories.onnx_models import encoder_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.2, help="daemon --settle-seconds")
    parser.add_argument("--time-limit", type=float, default=900.0, help="stop after this long")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ortserve-rss-"))
    repo = work / "repo"
    (repo / "m").mkdir(parents=True)
    model = encoder_model(vocab=20_000).SerializeToString()  # ~50 MB
    print(f"model size: {len(model) / 1e6:.1f} MB", flush=True)
    threads = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    (repo / "m" / "config.pbtxt").write_text("max_batch_size: 8\n" + threads)

    def publish(version: int) -> None:
        staging = repo / "m" / f".staging-{version}"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(model)
        os.rename(staging, repo / "m" / str(version))

    publish(1)
    feeds = {"input_ids": np.ones((1, 16), np.int64), "attention_mask": np.ones((1, 16), np.int64)}
    samples: list[tuple[int, float]] = []
    deadline = time.monotonic() + args.time_limit
    extra = ("--settle-seconds", str(args.settle), "--enable-repository-control")
    try:
        with (
            serving(repo, work / "daemon.log", *extra, "--log-level", "info", metrics_port=0) as d,
            Client(d.address, timeout=60, validate=False) as client,
        ):
            for cycle in range(2, args.cycles + 2):
                if time.monotonic() > deadline:
                    print("time limit reached", flush=True)
                    break
                publish(cycle)
                while client.model_metadata("m").versions != [str(cycle)]:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"version {cycle} never came in")
                    time.sleep(0.02)
                assert client.infer("m", feeds).model_version == str(cycle)
                shutil.rmtree(repo / "m" / str(cycle - 1))
                if cycle % 10 == 0:
                    client.unload_model("m")
                    client.load_model("m")
                if cycle in (6, args.cycles + 1) or cycle % 10 == 0:
                    time.sleep(0.5)  # let the drained version close
                    samples.append((cycle - 1, rss_mb(d.pid)))
                    print(f"cycle {cycle - 1:4d}: RSS {samples[-1][1]:7.1f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next(mb for cycle, mb in samples if cycle >= 5)
    print(f"RSS after 5 warm-up cycles: {base:.1f} MB; after {samples[-1][0]} cycles: "
          f"{samples[-1][1]:.1f} MB; growth {samples[-1][1] - base:+.1f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
