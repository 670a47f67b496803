"""Noise probe: in-process ONNX Runtime throughput of bench/.repo's encoder at batch 1, seq 32.

    .venv/bin/python -m bench.ort_probe [REPO] [--seconds 3]

Same session settings as the model's config (2 intra-op threads), no server. Run it before and
after a perf_analyzer run: on this shared 2-core VM it swings ~3x with load from outside the VM
(invisible to `uptime` and to steal time), so a served figure means little without it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.lib import BENCH
from bench.lib.encoder import MODEL, SEQ, VOCAB


def probe(model: Path, seconds: float, threads: int = 2) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.random.default_rng(0).integers(1, VOCAB, (1, SEQ), dtype=np.int64),
        "attention_mask": np.ones((1, SEQ), dtype=np.int64),
    }
    for _ in range(50):
        session.run(None, feed)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feed)
        count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", type=Path, default=BENCH / ".repo")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    rate = probe(args.repo / MODEL / "1" / "model.onnx", args.seconds)
    print(f"in-process ORT, batch 1, 2 threads: {rate:.0f} seq/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
