"""A soak at moderate load: no failed request, no RSS growth trend.

    .venv/bin/python -m bench.soak [--seconds 120] [--clients 8] [--rate 200]

Runs the synthetic encoder (bench/make_repo.py's model) on a daemon on 127.0.0.1, with
``--clients`` asyncio clients sending single-row requests at about ``--rate`` requests/s in all,
for ``--seconds``; samples the daemon's RSS every 5 s and prints the samples, the failures and
the RSS slope (least squares, MB per minute) after the first 20 s of warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.lib.daemon import serving
from bench.lib.procstat import rss_mb
from ortserve_client import AsyncClient, InferenceServerError
from tests.factories.onnx_models import encoder_model, write_model

CONFIG = """max_batch_size: 64
dynamic_batching { }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


async def load(
    address: str, seconds: float, clients: int, rate: float, pid: int
) -> tuple[Counter[str], list[tuple[float, float]]]:
    outcomes: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 29000, size=(1, 32), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 32), np.int64)}
    start = time.monotonic()
    stop = start + seconds
    gap = clients / rate

    async def client(c: AsyncClient) -> None:
        while time.monotonic() < stop:
            began = time.monotonic()
            try:
                await c.infer("encoder", feeds, timeout=10)
                outcomes["OK"] += 1
            except InferenceServerError as exc:
                outcomes[exc.code.name] += 1
            await asyncio.sleep(max(gap - (time.monotonic() - began), 0))

    async def sampler() -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic() - start, rss_mb(pid)))
            await asyncio.sleep(5)

    async with AsyncClient(address, validate=False) as c:
        await asyncio.gather(sampler(), *(client(c) for _ in range(clients)))
    return outcomes, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ortserve-soak-"))
    write_model(work / "repo", "encoder", encoder_model(), config=CONFIG)
    log = work / "daemon.log"
    try:
        with serving(work / "repo", log, "--log-level", "info", metrics_port=0) as daemon:
            outcomes, samples = asyncio.run(
                load(daemon.address, args.seconds, args.clients, args.rate, daemon.pid)
            )
            code = daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for t, mb in samples:
        print(f"t={t:6.1f}s RSS {mb:7.1f} MB")
    steady = [(t, mb) for t, mb in samples if t >= 20]
    slope = (
        float(np.polyfit([t for t, _ in steady], [mb for _, mb in steady], 1)[0]) * 60
        if len(steady) > 2
        else 0.0
    )
    total = sum(outcomes.values())
    print(f"requests: {total} ({total / args.seconds:.0f}/s), outcomes: {dict(outcomes)}")
    first, last = steady[0][1], steady[-1][1]
    print(f"RSS {first:.1f} -> {last:.1f} MB after warm-up; slope {slope:+.2f} MB/min; exit {code}")
    return 0 if set(outcomes) == {"OK"} and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
