"""CPU per request of the daemon's Python data plane, ONNX Runtime replaced by a no-op.

    .venv/bin/python -m bench.overhead [--concurrency 1 64] [--requests 6400] [--profile]

In process, no gRPC: protobuf parse, codec decode, InferenceService.infer (checks, batcher,
statistics, metrics) and response encode + serialize, timed with the thread's CPU clock (so a
busy host changes it far less than wall time). The session's ``run`` answers zeros after one
``await asyncio.sleep(0)``, so batches still form under concurrency. --profile adds cProfile's
top functions (cProfile roughly doubles the figures; compare shares, not µs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import BENCH
from bench.lib.encoder import MODEL, feed_row
from bench.lib.inprocess import data_plane
from bench.lib.variants import build_repos


async def measure(repo: Path, concurrency: int, requests: int, profile: bool) -> str:
    from ortserve.protocol import codec
    from ortserve_client.proto import grpc_service_pb2 as pb

    async with data_plane(repo) as (served, service):
        zeros = np.zeros((64, 384), np.float32)

        async def no_op_run(feeds: Mapping[str, Any], outputs: Sequence[str]) -> list[Any]:
            rows = next(iter(feeds.values())).shape[0]
            await asyncio.sleep(0)
            return [zeros[:rows]]

        served.sessions.run = no_op_run  # type: ignore[method-assign]
        request = pb.ModelInferRequest(model_name=MODEL)
        for name, array in feed_row().items():
            request.inputs.add(name=name, datatype="INT64", shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        wire = request.SerializeToString()
        stages = dict.fromkeys(("parse", "decode", "encode"), 0.0)

        async def one() -> None:
            t0 = time.thread_time()
            message = pb.ModelInferRequest.FromString(wire)
            t1 = time.thread_time()
            decoded = codec.decode_infer_request(message)
            t2 = time.thread_time()
            response = await service.infer(decoded)
            t3 = time.thread_time()
            codec.encode_infer_response(response).SerializeToString()
            t4 = time.thread_time()
            stages["parse"] += t1 - t0
            stages["decode"] += t2 - t1
            stages["encode"] += t4 - t3

        async def client(count: int) -> None:
            for _ in range(count):
                await one()

        for _ in range(200):  # warm-up
            await one()
        stages.update(dict.fromkeys(stages, 0.0))
        stats = served.recorder.statistics
        before = (stats.success.count, stats.execution_count)
        profiler = cProfile.Profile() if profile else None
        cpu0 = time.thread_time()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
        if profiler is not None:
            profiler.disable()
        cpu = time.thread_time() - cpu0
        done = stats.success.count - before[0]
        batches = stats.execution_count - before[1]
        rest = cpu - sum(stages.values())
        text = (
            f"c={concurrency}: {done} requests, mean batch {done / max(batches, 1):.1f}: "
            f"{1e6 * cpu / done:.0f} µs CPU per request = parse {1e6 * stages['parse'] / done:.1f}"
            f" + decode {1e6 * stages['decode'] / done:.1f} + InferenceService.infer (checks, "
            f"batcher, statistics, metrics) {1e6 * rest / done:.1f} + encode/serialize "
            f"{1e6 * stages['encode'] / done:.1f}"
        )
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
            text += "\n" + out.getvalue()
        return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    repos, _ = build_repos(BENCH / ".ratio", ["spin"], rebuild=False)
    for concurrency in args.concurrency:
        print(asyncio.run(measure(repos["spin"], concurrency, args.requests, args.profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
