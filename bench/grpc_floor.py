"""The transport's floor: a grpc.aio ModelInfer server answering from a cache, under load.

    .venv/bin/python bench/grpc_floor.py [--streaming] [--loop uvloop]

No ONNX Runtime, no batcher, no checks: the same protos and the same grpc.aio server the daemon
uses, answering the encoder's ModelMetadata/ModelConfig and a fixed [1, 384] FP32 response.
Runs perf_analyzer (the same flags as bench/ratio.py) at concurrency 1 and 64 and at a paced
300 requests/s, and prints infer/s, p50/p99 and the server's CPU per request (its event-loop
thread, and the whole process). What no Python gRPC server on this host can go below.
--streaming: perf_analyzer over ModelStreamInfer (one stream per client); --loop uvloop: the
server on uvloop (the daemon's default event loop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.make_repo import MODEL, SEQ  # noqa: E402
from bench.ratio import build_repos, pa_path, proc_cpu, proc_cpu_path  # noqa: E402


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
        print(json.dumps({"event": "listening", "grpc_port": port}), flush=True)
        await server.wait_for_termination()

    if loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


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
    pa = pa_path(args.pa)
    _, data = build_repos(BENCH / ".ratio", [], rebuild=False)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--loop", args.loop],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        port = int(json.loads(proc.stdout.readline())["grpc_port"])
        loop_stat = Path(f"/proc/{proc.pid}/task/{proc.pid}/stat")
        for label, mode in (
            ("c=1", ["--concurrency-range", "1:1"]),
            ("c=64", ["--concurrency-range", "64:64"]),
            ("300/s paced", ["--request-rate-range", "300:300"]),
        ):
            loop0, all0, wall0 = proc_cpu_path(loop_stat), proc_cpu(proc.pid), time.monotonic()
            out = subprocess.run(
                ["timeout", "-k", "5", "60", pa, "-i", "grpc", "-u", f"127.0.0.1:{port}",
                 "-m", MODEL, "-b", "1", "--shape", f"input_ids:{SEQ}",
                 "--shape", f"attention_mask:{SEQ}", "--input-data", str(data),
                 *mode, *(["--streaming"] if args.streaming else []),
                 "-p", "3000", "-s", "1000", "-r", "3"],
                capture_output=True, text=True, timeout=80, check=False,
            )  # fmt: skip
            wall = time.monotonic() - wall0
            loop_s, all_s = proc_cpu_path(loop_stat) - loop0, proc_cpu(proc.pid) - all0
            text = out.stdout + out.stderr
            rate = [line for line in text.splitlines() if "Throughput:" in line]
            p50 = [line for line in text.splitlines() if "p50 latency" in line]
            p99 = [line for line in text.splitlines() if "p99 latency" in line]
            if out.returncode != 0 or not rate:
                print(f"{label}: perf_analyzer failed (rc {out.returncode})\n{text[-2000:]}")
                continue
            per_s = float(rate[-1].split()[1])
            served = per_s * wall  # requests over the whole run, windows and warm-up alike
            print(
                f"{label}: {per_s:.0f} infer/s, p50 {int(p50[-1].split()[2]) / 1e3:.2f} ms, "
                f"p99 {int(p99[-1].split()[2]) / 1e3:.2f} ms; server CPU per request ≈ "
                f"{1e6 * loop_s / served:.0f} µs event-loop thread, "
                f"{1e6 * all_s / served:.0f} µs whole process"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
