"""Dynamic batching over real gRPC: correctness under concurrency, statistics, queue policy codes."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory, start_daemon
from tests.factories.onnx_models import add_model, slow_model, two_output_model, write_model

SLOW = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("batching")
    repo = root / "repo"
    write_model(
        repo,
        "batched",
        add_model(offset=10.0),
        config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n",
    )
    write_model(repo, "auto", add_model())
    write_model(
        repo,
        "ids",
        two_output_model(),
        config="max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 5000 }\n",
    )  # auto-completed: max_batch_size 32 + dynamic_batching
    write_model(
        repo,
        "tinyqueue",
        slow_model(size=1024),
        config="max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 2 } }\n"
        + SLOW,
    )
    write_model(
        repo,
        "shortwait",
        slow_model(size=1024),
        config="max_batch_size: 1\n"
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 20000 } }\n"
        + SLOW,
    )
    write_model(
        repo,
        "override",
        slow_model(size=1024),
        config="max_batch_size: 1\ndynamic_batching { default_queue_policy "
        "{ allow_timeout_override: true } }\n" + SLOW,
    )
    started = start_daemon(repo, root / "daemon.log")
    yield started
    assert started.stop() == 0


def _request(model: str, x: np.ndarray, **params: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    for key, value in params.items():
        request.parameters[key].uint64_param = value
    return request


def _output(response: pb.ModelInferResponse) -> np.ndarray:
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(shape)


async def _concurrent(address: str, model: str, inputs: list[np.ndarray], grpc_timeout: float = 30.0,
                      **params: int) -> list[pb.ModelInferResponse | grpc.aio.AioRpcError]:  # fmt: skip
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            stub.ModelInfer(_request(model, x, **params), timeout=grpc_timeout) for x in inputs
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]


def _statistics(address: str, model: str) -> dict[str, object]:
    with tg.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    assert len(stats) == 1
    return stats[0]  # type: ignore[no-any-return]


def test_64_concurrent_clients_get_their_own_rows(daemon: Daemon) -> None:
    rng = np.random.default_rng(1)
    # Mixed request sizes (1-3 rows) so that batches hold requests of several rows.
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(64)]
    before = _statistics(daemon.address, "batched")
    responses = asyncio.run(_concurrent(daemon.address, "batched", inputs))
    for x, response in zip(inputs, responses, strict=True):
        assert isinstance(response, pb.ModelInferResponse), response
        # Each request's rows equal a batch-1 run of the same rows: x + 10.
        np.testing.assert_array_equal(_output(response), x + np.float32(10.0))
        assert 1 <= response.parameters["batch_size"].int64_param <= 8
        assert response.parameters["queue_us"].int64_param >= 0
        assert response.parameters["compute_us"].int64_param >= 0
    after = _statistics(daemon.address, "batched")
    rows = sum(x.shape[0] for x in inputs)
    inference = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inference == rows
    assert executions < inference, "requests should have been batched"
    batch_sizes = [int(b["batch_size"]) for b in after["batch_stats"]]  # type: ignore[attr-defined]
    assert max(batch_sizes) > 1
    assert max(batch_sizes) <= 8


def test_only_requests_of_the_same_shape_share_a_batch(daemon: Daemon) -> None:
    async def run() -> list[tuple[np.ndarray, pb.ModelInferResponse]]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            inputs = [np.arange(2 + i % 4, dtype=np.int64).reshape(1, -1) + i for i in range(32)]
            requests = []
            for ids in inputs:
                request = pb.ModelInferRequest(model_name="ids")
                request.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
                request.raw_input_contents.append(ids.tobytes())
                requests.append(stub.ModelInfer(request, timeout=30))
            return list(zip(inputs, await asyncio.gather(*requests), strict=True))

    for ids, response in asyncio.run(run()):
        doubled = np.frombuffer(response.raw_output_contents[0], np.int64)
        np.testing.assert_array_equal(doubled.reshape(ids.shape), ids * 2)
    stats = _statistics(daemon.address, "ids")
    assert int(stats["execution_count"]) < int(stats["inference_count"]) == 32


def test_auto_completed_model_batches_too(daemon: Daemon) -> None:
    with tg.InferenceServerClient(daemon.address) as client:
        config = client.get_model_config("auto", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert "dynamic_batching" in config
    inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(32)]
    responses = asyncio.run(_concurrent(daemon.address, "auto", inputs))
    for x, response in zip(inputs, responses, strict=True):
        assert isinstance(response, pb.ModelInferResponse), response
        np.testing.assert_array_equal(_output(response), x + 1)


def test_statistics_follow_triton_semantics(daemon: Daemon) -> None:
    stats = _statistics(daemon.address, "batched")
    assert stats["name"] == "batched"
    assert stats["version"] == "1"
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) >= 64  # type: ignore[index]
    assert int(inference["queue"]["count"]) == int(inference["success"]["count"])  # type: ignore[index]
    assert int(inference["compute_infer"]["ns"]) > 0  # type: ignore[index]
    assert int(stats["last_inference"]) > 0
    with tg.InferenceServerClient(daemon.address) as client:
        everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} >= {"batched", "auto", "tinyqueue"}


def test_full_queue_is_resource_exhausted_at_once(daemon: Daemon) -> None:
    inputs = [np.ones((1, 4), np.float32)] * 12
    results = asyncio.run(_concurrent(daemon.address, "tinyqueue", inputs))
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if isinstance(r, pb.ModelInferResponse)]
    assert served, "the running request and the queued ones are answered"
    assert refused, "a queue of 2 cannot hold 12 requests sent at once"
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full (2 requests waiting)" in (error.details() or "")
        assert "tinyqueue" in (error.details() or "")


def test_queue_timeout_expires_while_the_session_is_busy(daemon: Daemon) -> None:
    inputs = [np.ones((1, 4), np.float32)] * 6
    before = int(_statistics(daemon.address, "shortwait").get("execution_count", 0))
    results = asyncio.run(_concurrent(daemon.address, "shortwait", inputs))
    expired = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if isinstance(r, pb.ModelInferResponse)]
    assert served
    assert expired, "requests queued behind a busy session must expire after 20 ms"
    for error in expired:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline passed" in (error.details() or "")
    # Expired requests never reached ONNX Runtime: one session run per served request.
    after = int(_statistics(daemon.address, "shortwait")["execution_count"])
    assert after - before == len(served)


def test_request_timeout_parameter_and_grpc_deadline(daemon: Daemon) -> None:
    inputs = [np.ones((1, 4), np.float32)] * 6
    # The request's own timeout (µs) applies because the model allows overrides.
    results = asyncio.run(_concurrent(daemon.address, "override", inputs))
    assert all(isinstance(r, pb.ModelInferResponse) for r in results), "no timeout: all served"
    results = asyncio.run(_concurrent(daemon.address, "override", inputs, timeout=20000))
    codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
    # A gRPC deadline shorter than the queue wait: the call ends with DEADLINE_EXCEEDED too,
    # and the queued requests are dropped before they reach ONNX Runtime.
    before = int(_statistics(daemon.address, "override").get("execution_count", 0))
    results = asyncio.run(_concurrent(daemon.address, "override", inputs, grpc_timeout=0.05))
    codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
    after = int(_statistics(daemon.address, "override").get("execution_count", 0))
    assert after - before <= 2, "only the request already running (or about to) may have run"
    # ...and the daemon is fine afterwards.
    ok = asyncio.run(_concurrent(daemon.address, "override", inputs[:1]))
    assert isinstance(ok[0], pb.ModelInferResponse)


def _pending(daemon: Daemon, model: str) -> float:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'ortserve_pending_requests{{model="{model}"}}'):
                return float(line.split()[-1])
    return 0.0


def test_cancelled_requests_never_reach_the_session(daemon: Daemon) -> None:
    async def scenario() -> tuple[pb.ModelInferResponse, list[BaseException | object]]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.ones((1, 4), np.float32)
            deadline = asyncio.get_running_loop().time() + 10

            async def admitted(count: int) -> None:
                while _pending(daemon, "override") < count:
                    assert asyncio.get_running_loop().time() < deadline, "requests never queued"
                    await asyncio.sleep(0.005)

            # The first one alone, so that it is the one running; then three that must wait.
            calls = [stub.ModelInfer(_request("override", x), timeout=30)]
            tasks = [asyncio.ensure_future(calls[0])]
            await admitted(1)
            calls += [stub.ModelInfer(_request("override", x), timeout=30) for _ in range(3)]
            tasks += [asyncio.ensure_future(call) for call in calls[1:]]
            await admitted(4)
            for call in calls[1:]:
                call.cancel()
            rest = await asyncio.gather(*tasks[1:], return_exceptions=True)
            return await tasks[0], rest

    before = int(_statistics(daemon.address, "override").get("execution_count", 0))
    first, rest = asyncio.run(scenario())
    assert isinstance(first, pb.ModelInferResponse)
    assert all(isinstance(r, asyncio.CancelledError) for r in rest)
    after = int(_statistics(daemon.address, "override").get("execution_count", 0))
    assert after - before == 1, "the cancelled requests must not have run"


def test_bad_queue_parameters_are_invalid_argument(daemon: Daemon) -> None:
    request = _request("batched", np.ones((1, 4), np.float32))
    request.parameters["priority"].string_param = "high"
    with grpc.insecure_channel(daemon.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        too_big = _request("batched", np.ones((9, 4), np.float32))
        with pytest.raises(grpc.RpcError) as big:
            stub.ModelInfer(too_big, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "parameter 'priority'" in info.value.details()  # type: ignore[attr-defined]
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_prometheus_metrics(daemon: Daemon) -> None:
    assert daemon.metrics_port
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert 'ortserve_requests_total{model="batched"}' in text
    assert 'ortserve_request_failures_total{model="tinyqueue",reason="overloaded"}' in text
    assert "ortserve_batch_size_bucket" in text
    assert "ortserve_queue_duration_seconds_bucket" in text
    assert "ortserve_pending_requests" in text


def test_streamed_requests_are_batched_too(daemon: Daemon) -> None:
    """perf_analyzer --streaming's path: many requests in flight on one stream form batches,
    and each answer (matched by id) holds its own request's rows."""
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(48)]
    requests = []
    for index, x in enumerate(inputs):
        request = _request("batched", x)
        request.id = f"r{index}"
        requests.append(request)
    with grpc.insecure_channel(daemon.address) as channel:
        answers = list(
            pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=30)
        )
    assert len(answers) == len(inputs)
    sizes = set()
    for answer in answers:
        assert answer.error_message == ""
        response = answer.infer_response
        x = inputs[int(response.id.removeprefix("r"))]
        np.testing.assert_array_equal(_output(response), x + np.float32(10.0))
        sizes.add(response.parameters["batch_size"].int64_param)
    assert max(sizes) > 1  # 48 requests in flight at once did not run one by one


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_either_event_loop_serves_and_says_which(loop: str, daemon_factory: DaemonFactory,
                                                 tmp_path: Path) -> None:  # fmt: skip
    write_model(
        tmp_path / "repo",
        "batched",
        add_model(offset=10.0),
        config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n",
    )
    started = daemon_factory(tmp_path / "repo", "--event-loop", loop)
    listening = [r for r in started.log_records() if r.get("event") == "listening"]
    assert listening[0]["event_loop"] == loop
    inputs = [np.full((1, 4), i, np.float32) for i in range(16)]
    responses = asyncio.run(_concurrent(started.address, "batched", inputs))
    for x, response in zip(inputs, responses, strict=True):
        assert isinstance(response, pb.ModelInferResponse), response
        np.testing.assert_array_equal(_output(response), x + np.float32(10.0))
