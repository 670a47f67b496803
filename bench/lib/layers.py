"""The daemon's own layers in process, no gRPC and no load generator: where c=1 latency goes.

The batch-1 p50 through each layer in turn (an executor-thread hop alone, ModelSessions.run,
VersionExecutor.submit, InferenceService.infer, the protobuf codec), then the whole path with 64
concurrent tasks, on the daemon's own event loop and GIL switch interval.
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib.encoder import MODEL, feed_row
from bench.lib.inprocess import data_plane

LAYERS = (
    ("sessions", "ModelSessions.run (executor-thread hop)"),
    ("executor", "+ VersionExecutor.submit (batcher, stack/split, statistics)"),
    ("service", "+ InferenceService.infer (checks, metrics, response)"),
    ("full", "+ protobuf parse/serialize and protocol codec (all but the transport)"),
)


async def _layers(repo: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    """p50 per layer at one request at a time, then the full path with ``concurrency`` tasks."""
    from ortserve.protocol import codec
    from ortserve_client.proto import grpc_service_pb2 as pb

    async with data_plane(repo) as (served, service):
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
        stats = served.recorder.statistics
        executed = (stats.success.count, stats.execution_count)

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
        out["full_concurrency"] = concurrency
        out["full_infer_per_s"] = counts[0] / elapsed
        batches = stats.execution_count - executed[1]
        out["full_mean_batch"] = (stats.success.count - executed[0]) / batches if batches else None
        return out


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
