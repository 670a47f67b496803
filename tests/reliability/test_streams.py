"""ModelStreamInfer under misuse: an unreadable message, a client that writes far ahead of what
it reads; and requests whose tensors cannot be decoded, counted like any other refusal."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory
from tests.factories.onnx_models import add_model, slow_model, write_model

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
WINDOW = 128  # ortserve.protocol.servicer.STREAM_WINDOW


def _request(model: str, request_id: str = "", raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(raw if raw is not None else np.ones((1, 4), "f4").tobytes())
    return request


def _metric(daemon: Daemon, pattern: str) -> float | None:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(found.group(1)) if found else None


def test_an_unreadable_stream_message_ends_the_stream_with_invalid_argument(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    good = _request("add", "a").SerializeToString()
    started = time.monotonic()
    with grpc.insecure_channel(daemon.address) as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )(iter([good, b"\xff\xff\xff\xff", good]), timeout=20)
        with pytest.raises(grpc.RpcError) as error:
            for _ in call:
                pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a stream message is not a ModelInferRequest" in (error.value.details() or "")
    assert time.monotonic() - started < 10, "the stream hung instead of ending"


def test_an_unreadable_stream_message_ends_the_stream_only_after_answering_the_earlier_ones(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """20 requests still running when a bad message arrives: each is answered, then the stream
    ends with INVALID_ARGUMENT naming the bad message; what came after it is not run."""
    repo = tmp_path / "repo"
    write_model(
        repo,
        "slow",
        slow_model(size=768),
        config="max_batch_size: 1\ndynamic_batching { }\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n',
    )
    daemon = daemon_factory(repo)
    messages = [_request("slow", str(index)).SerializeToString() for index in range(20)]
    messages += [b"\xff\xff\xff\xff", _request("slow", "after").SerializeToString()]
    answers: list[pb.ModelStreamInferResponse] = []
    with grpc.insecure_channel(daemon.address) as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )(iter(messages), timeout=60)
        with pytest.raises(grpc.RpcError) as error:
            answers.extend(call)
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(20))
    assert [a.error_message for a in answers if a.error_message] == []
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a stream message is not a ModelInferRequest: message 21 of the stream" in (
        error.value.details() or ""
    )


def test_undecodable_request_bytes_are_invalid_argument_not_unknown(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Bytes that are not the RPC's message: INVALID_ARGUMENT naming the message type (gRPC's
    own deserializer would end the call as UNKNOWN "Unexpected DecodeError")."""
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    with grpc.insecure_channel(daemon.address) as channel:
        for method, expected in (
            ("ModelInfer", "ModelInferRequest"),
            ("ModelMetadata", "ModelMetadataRequest"),
        ):
            call = channel.unary_unary(
                f"/inference.GRPCInferenceService/{method}",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            with pytest.raises(grpc.RpcError) as error:
                call(b"\xff\xff\xff\xff", timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
            assert f"{method}: the request is not a {expected} message" in (
                error.value.details() or ""
            )
        # and the daemon serves on
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request("add"), timeout=10)
        assert reply.model_name == "add"


def test_a_stream_holds_at_most_its_window_unanswered(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "slow",
        slow_model(size=768),
        config="max_batch_size: 8\ndynamic_batching { }\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n',
    )
    daemon = daemon_factory(repo)
    sent = 3 * WINDOW
    pending_seen: list[float] = []

    async def scenario() -> list[pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=120)

            async def write() -> None:
                for index in range(sent):
                    await call.write(_request("slow", str(index)))
                await call.done_writing()

            writer = asyncio.ensure_future(write())
            for _ in range(10):  # read nothing for a while: the daemon must stop reading too
                await asyncio.sleep(0.1)
                value = await asyncio.to_thread(
                    _metric, daemon, r'ortserve_pending_requests\{model="slow"\}'
                )
                pending_seen.append(value or 0.0)
            answers = [answer async for answer in call]
            await writer
            return answers

    answers = asyncio.run(scenario())
    assert max(pending_seen) > 0
    assert max(pending_seen) <= WINDOW
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(sent))
    assert not [a.error_message for a in answers if a.error_message]


def test_undecodable_tensors_are_counted_and_an_unknown_model_comes_first(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    short = b"\x00" * 12  # an FP32 [1, 4] tensor needs 16 bytes
    with grpc.insecure_channel(daemon.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(_request("add", raw=short), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x': expected 16 bytes" in (error.value.details() or "")
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(_request("nope", raw=short), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    failures = r'ortserve_request_failures_total\{model="%s",reason="%s"\}'
    assert _metric(daemon, failures % ("add", "invalid_input")) == 1.0
    assert _metric(daemon, failures % ("", "model_not_found")) == 1.0
