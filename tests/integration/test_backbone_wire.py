"""The daemon driven with our generated stubs: wire-level checks, every RPC, health, reflection."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon
from tests.factories.onnx_models import (
    WIRE_TO_ONNX,
    add_model,
    identity_model,
    two_output_model,
    write_model,
)

TYPED = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
         "FP32", "FP64"]  # fmt: skip


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("wire")
    repo = root / "repo"
    write_model(repo, "add", add_model())
    write_model(repo, "ids", two_output_model(), config="max_batch_size: 8\n")
    write_model(repo, "alltypes", identity_model([dt for dt in WIRE_TO_ONNX if dt != "BYTES"]))
    write_model(repo, "bytes", identity_model(["BYTES"]))
    write_model(repo, "typed", identity_model(TYPED))
    write_model(repo, "broken", b"garbage")
    started = start_daemon(repo, root / "daemon.log")
    yield started
    assert started.stop() == 0


@pytest.fixture
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    return error.code(), error.details()  # type: ignore[attr-defined]


def _raw_request(
    model: str, name: str, datatype: str, shape: list[int], raw: bytes
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}  # fmt: skip


def test_typed_contents_are_accepted_for_every_datatype(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = pb.ModelInferRequest(model_name="typed")
    for dt in TYPED:
        values = [True, False, True, True, False, False] if dt == "BOOL" else [1, 2, 3, 4, 5, 6]
        tensor = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[2, 3])
        getattr(tensor.contents, CONTENTS_FIELD[dt]).extend(values)
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == [f"out_{dt}" for dt in TYPED]
    for dt, output, raw in zip(TYPED, response.outputs, response.raw_output_contents, strict=True):
        assert output.datatype == dt
        assert list(output.shape) == [2, 3]
        expected = request.inputs[TYPED.index(dt)].contents
        got = np.frombuffer(
            raw, dtype=np.bool_ if dt == "BOOL" else dt.lower().replace("fp", "float")
        )
        np.testing.assert_array_equal(got, list(getattr(expected, CONTENTS_FIELD[dt])))


def test_typed_contents_round_trip_on_a_single_input_model(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = pb.ModelInferRequest(model_name="ids", id="typed")
    tensor = request.inputs.add(name="ids", datatype="INT64", shape=[2, 2])
    tensor.contents.int64_contents.extend([1, 2, 3, 4])
    response = stub.ModelInfer(request, timeout=10)
    assert response.id == "typed"
    doubled = np.frombuffer(response.raw_output_contents[0], dtype=np.int64).reshape(2, 2)
    np.testing.assert_array_equal(doubled, [[2, 4], [6, 8]])
    bytes_request = pb.ModelInferRequest(model_name="bytes")
    tensor = bytes_request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 3])
    tensor.contents.bytes_contents.extend([b"a", b"", b"xyz"])
    out = stub.ModelInfer(bytes_request, timeout=10).raw_output_contents[0]
    assert out == struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"


WIRE_ERRORS: dict[str, tuple[Callable[[], pb.ModelInferRequest], list[str]]] = {
    "raw_count": (
        lambda: _with_extra_raw(_raw_request("add", "x", "FP32", [1, 4], bytes(16))),
        ["1 inputs but 2 raw_input_contents"],
    ),
    "byte_size": (
        lambda: _raw_request("add", "x", "FP32", [1, 4], bytes(15)),
        ["input 'x'", "expected 16 bytes", "got 15"],
    ),
    "mixed_forms": (lambda: _mixed(), ["input 'x'", "both as contents and raw_input_contents"]),
    "truncated_prefix": (
        lambda: _raw_request("bytes", "in_BYTES", "BYTES", [1, 2], struct.pack("<I", 1) + b"abcd"),
        ["input 'in_BYTES'", "length prefix is missing"],
    ),
    "too_few_prefixes": (
        lambda: _raw_request("bytes", "in_BYTES", "BYTES", [1, 3], struct.pack("<I", 1) + b"a\x01"),
        ["input 'in_BYTES'", "3 BYTES elements need at least 12 bytes"],
    ),
    "overlong_element": (
        lambda: _raw_request("bytes", "in_BYTES", "BYTES", [1, 1], struct.pack("<I", 99) + b"ab"),
        ["input 'in_BYTES'", "declares 99 bytes"],
    ),
    "trailing_bytes": (
        lambda: _raw_request("bytes", "in_BYTES", "BYTES", [1, 1], struct.pack("<I", 1) + b"ab"),
        ["input 'in_BYTES'", "1 trailing bytes"],
    ),
    "contents_count": (lambda: _short_contents(), ["input 'ids'", "needs 4 elements", "has 3"]),
    "fp16_contents": (lambda: _fp16_contents(), ["input 'in_FP16'", "no typed contents field"]),
    "unknown_datatype": (
        lambda: _raw_request("add", "x", "FP128", [1, 4], bytes(16)),
        ["input 'x'", "unknown datatype 'FP128'"],
    ),
    "no_data": (lambda: _no_data(), ["input 'x'", "no data"]),
    "negative_dim": (
        lambda: _raw_request("add", "x", "FP32", [-1, 4], bytes(16)),
        ["input 'x'", "negative dimension"],
    ),
    "huge_shape_tiny_payload": (
        lambda: _raw_request("add", "x", "FP32", [2**40, 4], bytes(16)),
        ["input 'x'", "declares more than 2147483648 elements"],
    ),
}


def _with_extra_raw(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.raw_input_contents.append(bytes(16))
    return request


def _mixed() -> pb.ModelInferRequest:
    request = _raw_request("add", "x", "FP32", [1, 4], bytes(16))
    request.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    return request


def _short_contents() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ids")
    request.inputs.add(name="ids", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend(
        [1, 2, 3]
    )
    return request


def _fp16_contents() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="alltypes")
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend(
        [1, 2, 3]
    )
    return request


def _no_data() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    return request


@pytest.mark.parametrize("case", sorted(WIRE_ERRORS))
def test_malformed_tensors_are_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    build, fragments = WIRE_ERRORS[case]
    code, details = _code(lambda: stub.ModelInfer(build(), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in details


# Every RPC of the service, called with bad input: each answers a clear status, never INTERNAL.
BAD_CALLS: dict[str, tuple[str, object, grpc.StatusCode]] = {
    "ModelReady": ("ModelReady", pb.ModelReadyRequest(name="../x"), grpc.StatusCode.OK),
    "ModelMetadata": ("ModelMetadata", pb.ModelMetadataRequest(name="nope"), grpc.StatusCode.NOT_FOUND),
    "ModelMetadata-version": (
        "ModelMetadata", pb.ModelMetadataRequest(name="add", version="x"), grpc.StatusCode.NOT_FOUND),
    "ModelConfig": ("ModelConfig", pb.ModelConfigRequest(name="broken"), grpc.StatusCode.UNAVAILABLE),
    "ModelInfer": ("ModelInfer", pb.ModelInferRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    "ModelStatistics": ("ModelStatistics", pb.ModelStatisticsRequest(name="nope"),
                        grpc.StatusCode.NOT_FOUND),
    "ModelStatistics-version-only": ("ModelStatistics", pb.ModelStatisticsRequest(version="1"),
                                     grpc.StatusCode.INVALID_ARGUMENT),
    "RepositoryIndex": ("RepositoryIndex", pb.RepositoryIndexRequest(repository_name="other"),
                        grpc.StatusCode.UNIMPLEMENTED),
    "RepositoryModelLoad": ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="../x"),
                            grpc.StatusCode.UNAVAILABLE),
    "RepositoryModelUnload": ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=""),
                              grpc.StatusCode.UNAVAILABLE),
    "SystemSharedMemoryRegister": ("SystemSharedMemoryRegister",
                                   pb.SystemSharedMemoryRegisterRequest(name="r", key="/nope"),
                                   grpc.StatusCode.UNIMPLEMENTED),
    "SystemSharedMemoryUnregister": ("SystemSharedMemoryUnregister",
                                     pb.SystemSharedMemoryUnregisterRequest(name="r"),
                                     grpc.StatusCode.UNIMPLEMENTED),
    "SystemSharedMemoryStatus": ("SystemSharedMemoryStatus",
                                 pb.SystemSharedMemoryStatusRequest(name="r"), grpc.StatusCode.OK),
    "CudaSharedMemoryRegister": ("CudaSharedMemoryRegister",
                                 pb.CudaSharedMemoryRegisterRequest(name="r", raw_handle=b"\x00"),
                                 grpc.StatusCode.UNIMPLEMENTED),
    "CudaSharedMemoryUnregister": ("CudaSharedMemoryUnregister",
                                   pb.CudaSharedMemoryUnregisterRequest(name="r"),
                                   grpc.StatusCode.UNIMPLEMENTED),
    "CudaSharedMemoryStatus": ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(name="r"),
                               grpc.StatusCode.OK),
    "TraceSetting": ("TraceSetting", pb.TraceSettingRequest(model_name="nope"),
                     grpc.StatusCode.UNIMPLEMENTED),
    "LogSettings": ("LogSettings", pb.LogSettingsRequest(), grpc.StatusCode.UNIMPLEMENTED),
    "ServerLive": ("ServerLive", pb.ServerLiveRequest(), grpc.StatusCode.OK),
    "ServerReady": ("ServerReady", pb.ServerReadyRequest(), grpc.StatusCode.OK),
    "ServerMetadata": ("ServerMetadata", pb.ServerMetadataRequest(), grpc.StatusCode.OK),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_every_rpc_answers_bad_input_with_a_clear_status(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    method, request, expected = BAD_CALLS[case]
    call = getattr(stub, method)
    if expected == grpc.StatusCode.OK:
        call(request, timeout=10)
        return
    code, details = _code(lambda: call(request, timeout=10))
    assert code == expected, details
    assert details
    assert "internal error" not in details


def test_stream_infer_answers_each_request(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    good = _raw_request("add", "x", "FP32", [1, 4], np.zeros((1, 4), np.float32).tobytes())
    good.id = "good"
    bad = pb.ModelInferRequest(model_name="add", id="bad")
    answers = list(stub.ModelStreamInfer(iter([good, bad, good]), timeout=10))
    assert len(answers) == 3
    errors = [a for a in answers if a.error_message]
    assert len(errors) == 1
    assert errors[0].error_message.startswith("[INVALID_ARGUMENT] ")
    assert errors[0].infer_response.id == "bad"
    assert sum(a.infer_response.id == "good" for a in answers if not a.error_message) == 2


def test_unknown_model_name_in_infer_names_the_model(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    code, details = _code(
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="ghost"), timeout=10)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "ghost" in details


def test_daemon_is_still_healthy_after_all_of_that(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    request = _raw_request("add", "x", "FP32", [1, 4], np.zeros((1, 4), np.float32).tobytes())
    out = stub.ModelInfer(request, timeout=10).raw_output_contents[0]
    np.testing.assert_array_equal(np.frombuffer(out, np.float32), np.ones(4, np.float32))


def test_health_overall_and_per_model(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(check(service=""), timeout=5).status == serving
    assert (
        health.Check(check(service="inference.GRPCInferenceService"), timeout=5).status == serving
    )
    assert health.Check(check(service="add"), timeout=5).status == serving
    broken = health.Check(check(service="broken"), timeout=5).status
    assert broken == health_pb2.HealthCheckResponse.NOT_SERVING
    code, _ = _code(lambda: health.Check(check(service="nope"), timeout=5))
    assert code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        ),
    ]
    listing, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listing.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]  # fmt: skip
    service = next(f for f in files if f.name == "grpc_service.proto").service[0]
    infer = next(m for m in service.method if m.name == "ModelInfer")
    assert infer.input_type == ".inference.ModelInferRequest"
    assert infer.output_type == ".inference.ModelInferResponse"


def test_json_log_says_the_port_once(daemon: Daemon) -> None:
    listening = [r for r in daemon.log_records() if r.get("event") == "listening"]
    assert len(listening) == 1
    assert listening[0]["grpc_port"] == daemon.port
    assert listening[0]["address"] == f"127.0.0.1:{daemon.port}"


def test_ready_log_lists_models(daemon: Daemon) -> None:
    ready = [r for r in daemon.log_records() if r.get("event") == "version loaded"]
    assert {r["model"] for r in ready} == {"add", "ids", "alltypes", "bytes", "typed"}
    assert all(r["provider"] == "CPUExecutionProvider" for r in ready)
