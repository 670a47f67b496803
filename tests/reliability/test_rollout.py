"""Rollouts under load, the way a deploy script does them: write the new version into a hidden
staging folder, then `mv model/.st-N model/N; rm -rf model/N-1` in one go, thirty times in a
row while 64 requests are in flight. No request may fail, and every answer comes from the version
it names, never an older one than a version that already answered (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, write_model

SWAPS = 30
CLIENTS = 64
SWAP_TIMEOUT_S = 30.0  # for one version to serve; the whole run is bounded by SWAPS times this


@dataclass(frozen=True)
class Answer:
    started: float
    finished: float
    version: int
    value: float


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    return request


def _stage(model_dir: Path, version: int) -> None:
    """The new version, complete, in a hidden folder that the daemon ignores."""
    staging = model_dir / f".st-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(add_model(offset=float(version)).SerializeToString())


async def _serving(stub: pb_grpc.GRPCInferenceServiceStub, version: int) -> None:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            reply = await stub.ModelMetadata(pb.ModelMetadataRequest(name="m"), timeout=5)
            if list(reply.versions) == [str(version)]:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"version {version} did not serve within {SWAP_TIMEOUT_S}s")


async def _rollouts_under_load(address: str, model_dir: Path) -> tuple[Counter[str], list[Answer]]:
    statuses: Counter[str] = Counter()
    answers: list[Answer] = []
    stop = asyncio.Event()
    request = _request()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    reply = await stub.ModelInfer(request, timeout=10)
                except grpc.aio.AioRpcError as error:
                    statuses[error.code().name] += 1
                    await asyncio.sleep(0.01)  # a failing daemon is not spun against
                    continue
                statuses["OK"] += 1
                value = float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0])
                answers.append(Answer(started, time.monotonic(), int(reply.model_version), value))

        async def roll() -> None:
            try:
                await asyncio.sleep(0.5)  # the load is running before the first swap
                for version in range(2, SWAPS + 2):
                    await asyncio.to_thread(_stage, model_dir, version)
                    script = f"mv .st-{version} {version}; rm -rf {version - 1}"
                    await asyncio.to_thread(subprocess.run, ["sh", "-c", script], cwd=model_dir,
                                            check=True)  # fmt: skip
                    await _serving(stub, version)
                    await asyncio.sleep(0.1)  # traffic on the new version before the next swap
            finally:
                stop.set()

        await asyncio.gather(roll(), *(client() for _ in range(CLIENTS)))
    return statuses, answers


def test_thirty_rename_then_delete_rollouts_under_64_way_load_fail_no_request(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo)  # the default settle period: a rename must not wait for it

    statuses, answers = asyncio.run(_rollouts_under_load(daemon.address, repo / "m"))

    failed = sum(count for status, count in statuses.items() if status != "OK")
    print(f"\n{SWAPS} rollouts, {CLIENTS} clients: {dict(statuses)}; failed requests: {failed}")
    assert failed == 0, dict(statuses)
    assert statuses["OK"] > SWAPS * CLIENTS
    assert {a.value for a in answers if a.value != a.version} == set()  # the version it names
    assert max(a.version for a in answers) == SWAPS + 1
    # Once a version has answered, no request sent after that answer runs on an older one.
    first_answer: dict[int, float] = {}
    for answer in answers:
        first_answer[answer.version] = min(first_answer.get(answer.version, 1e18), answer.finished)
    newest = sorted(first_answer.items(), key=lambda item: item[1])
    for answer in answers:
        seen = [v for v, done in newest if done < answer.started]
        assert answer.version >= max(seen, default=1), answer
