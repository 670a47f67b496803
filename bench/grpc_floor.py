"""The transport's floor: a grpc.aio ModelInfer server answering from a cache, under load.

    .venv/bin/python -m bench.grpc_floor [--streaming] [--loop uvloop]

No ONNX Runtime, no batcher, no checks: the same protos and the same grpc.aio server the daemon
uses, answering the encoder's ModelMetadata/ModelConfig and a fixed [1, 384] FP32 response.
Runs perf_analyzer (the same flags as bench.ratio) at concurrency 1 and 64 and at a paced
300 requests/s, and prints infer/s, p50/p99 and the server's CPU per request (its event-loop
thread, and the whole process). What no Python gRPC server on this host can go below.
--streaming: perf_analyzer over ModelStreamInfer (one stream per client); --loop uvloop: the
server on uvloop (the daemon's default event loop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.lib import BENCH, perf_analyzer
from bench.lib.daemon import Daemon, running
from bench.lib.encoder import MODEL, SEQ
from bench.lib.procstat import main_thread_cpu, process_cpu
from bench.lib.variants import build_repos

LOADS = (
    ("c=1", perf_analyzer.concurrency(1)),
    ("c=64", perf_analyzer.concurrency(64)),
    ("300/s paced", ["--request-rate-range", "300:300"]),
)
FLAGS = ["-p", "3000", "-s", "1000", "-r", "3"]


def serve(loop: str) -> None:
    import grpc
    import numpy as np

    from ortserve_client.proto import grpc_service_pb2 as pb
    from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
    from ortserve_client.proto import model_config_pb2 as mc

    names = ("input_ids", "attention_mask")
    tensor = pb.ModelMetadataResponse.TensorMetadata
    metadata = pb.ModelMetadataResponse(
        name=MODEL,
        versions=["1"],
        platform="onnxruntime_onnx",
        inputs=[tensor(name=n, datatype="INT64", shape=[-1, SEQ]) for n in names],
        outputs=[tensor(name="embedding_out", datatype="FP32", shape=[-1, 384])],
    )
    config = mc.ModelConfig(
        name=MODEL,
        platform="onnxruntime_onnx",
        max_batch_size=64,
        input=[mc.ModelInput(name=n, data_type=mc.TYPE_INT64, dims=[SEQ]) for n in names],
        output=[mc.ModelOutput(name="embedding_out", data_type=mc.TYPE_FP32, dims=[384])],
    )
    answer = pb.ModelInferResponse(
        model_name=MODEL,
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="embedding_out", datatype="FP32", shape=[1, 384]
            )
        ],
        raw_output_contents=[np.zeros((1, 384), np.float32).tobytes()],
    )

    class Cached(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name="grpc-floor", version="0")

        async def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=True)

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            return metadata

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            return pb.ModelConfigResponse(config=config)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return answer

        async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
            async for request in requests:  # perf_analyzer matches answers by request id
                streamed = pb.ModelStreamInferResponse(infer_response=answer)
                streamed.infer_response.id = request.id
                yield streamed

    async def run() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Cached(), server)  # type: ignore[abstract]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        # the lines bench.lib.daemon waits for, as the daemon logs them
        print(json.dumps({"event": "listening", "grpc_port": port}), flush=True)
        print(json.dumps({"event": "ready"}), flush=True)
        await server.wait_for_termination()

    if loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def measure(
    pa: str, server: Daemon, data: Path, work: Path, label: str, load: list[str], streaming: bool
) -> str:
    """One perf_analyzer run, and the server's CPU per request over it."""
    csv_path = work / "run.csv"
    csv_path.unlink(missing_ok=True)
    cmd = perf_analyzer.command(
        pa, server.port, data, load, csv_path, FLAGS, 60, streaming=streaming
    )
    loop0, all0, wall0 = main_thread_cpu(server.pid), process_cpu(server.pid), time.monotonic()
    text, rc = perf_analyzer.invoke(cmd, 80)
    wall = time.monotonic() - wall0
    loop_s = main_thread_cpu(server.pid) - loop0
    all_s = process_cpu(server.pid) - all0
    if rc != 0 or not csv_path.is_file():
        return f"{label}: perf_analyzer failed (rc {rc})\n{text[-2000:]}"
    row = perf_analyzer.read_row(csv_path)
    per_s = float(row["Inferences/Second"])
    served = per_s * wall  # requests over the whole run, windows and warm-up alike
    return (
        f"{label}: {per_s:.0f} infer/s, p50 {int(row['p50 latency']) / 1e3:.2f} ms, "
        f"p99 {int(row['p99 latency']) / 1e3:.2f} ms; server CPU per request ≈ "
        f"{1e6 * loop_s / served:.0f} µs event-loop thread, "
        f"{1e6 * all_s / served:.0f} µs whole process"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help="perf_analyzer --streaming")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--pa", help="perf_analyzer (default: $PA or the shared setup script)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.loop)
        return 0
    pa = perf_analyzer.find(args.pa)
    _, data = build_repos(BENCH / ".ratio", [], rebuild=False)
    cmd = [sys.executable, "-m", "bench.grpc_floor", "--serve", "--loop", args.loop]
    with tempfile.TemporaryDirectory(prefix="ortserve-grpc-floor-") as work:
        server = Daemon(cmd, Path(work) / "server.log")
        with running([server]):
            for label, load in LOADS:
                print(measure(pa, server, data, Path(work), label, load, args.streaming))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
