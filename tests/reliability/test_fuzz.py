"""Fuzzed ModelInfer requests against the real daemon: no crash, only clear refusals, healthy after.

Random datatypes (real and made up), shapes (huge ones too), payload lengths, truncated BYTES
prefixes, invalid UTF-8, NaN/inf, unknown parameters and mixed content forms.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon
from tests.factories.onnx_models import add_model, identity_model, two_output_model, write_model

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES",
             "FP128", "", "fp32", "STRING"]  # fmt: skip
MODELS = ["add", "ids", "text", "nope", "", "../etc"]
INPUT_NAMES = ["x", "ids", "in_BYTES", "y", ""]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fuzz")
    write_model(root / "repo", "add", add_model())
    write_model(root / "repo", "ids", two_output_model(), config="max_batch_size: 8\n")
    write_model(root / "repo", "text", identity_model(["BYTES"]))
    started = start_daemon(root / "repo", root / "daemon.log")
    yield started
    assert started.stop() == 0


@pytest.fixture(scope="module")
def stub(daemon: Daemon) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@st.composite
def payloads(draw: st.DrawFn, datatype: str, count: int) -> bytes:
    kind = draw(st.sampled_from(["exact", "random", "bytes", "floats"]))
    if kind == "random" or count > 4096:
        return draw(st.binary(max_size=64))
    if kind == "bytes" or datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=8), min_size=0, max_size=count + 1))
        raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
        cut = draw(st.integers(0, len(raw)))
        return raw[:cut] if draw(st.booleans()) else raw
    if kind == "floats":
        values = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e38, -1.5]),
                               min_size=count, max_size=count))  # fmt: skip
        return np.array(values, dtype=np.float32).tobytes()
    size = {"BOOL": 1, "UINT8": 1, "INT8": 1, "FP16": 2, "BF16": 2, "INT32": 4, "FP32": 4}.get(
        datatype, 8
    )
    return draw(st.binary(min_size=count * size, max_size=count * size))


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(MODELS)))
    raw_form = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.one_of(st.integers(-2, 6), st.sampled_from([2**31, 2**40, 2**62])),
                              min_size=0, max_size=4))  # fmt: skip
        tensor = request.inputs.add(
            name=draw(st.sampled_from(INPUT_NAMES)), datatype=datatype, shape=shape
        )
        count = math.prod(max(d, 0) for d in shape)
        if raw_form:
            request.raw_input_contents.append(draw(payloads(datatype, count)))
        elif draw(st.booleans()):
            tensor.contents.fp32_contents.extend(
                draw(st.lists(st.floats(allow_nan=True), max_size=8))
            )
        else:
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=6), max_size=8)))
    if draw(st.booleans()):  # stray raw contents
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for key in draw(
        st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "zzz"]), max_size=3)
    ):
        choice = draw(
            st.sampled_from(["uint64_param", "string_param", "bool_param", "int64_param"])
        )
        value = {"uint64_param": draw(st.integers(0, 2**63)), "string_param": "x",
                 "bool_param": True, "int64_param": draw(st.integers(-5, 5))}[choice]  # fmt: skip
        setattr(request.parameters[key], choice, value)
    for name in draw(st.lists(st.sampled_from(["y", "doubled", "nope", "out_BYTES"]), max_size=2)):
        out = request.outputs.add(name=name)
        if draw(st.booleans()):
            out.parameters["classification"].int64_param = draw(st.integers(-1, 3))
    return request


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip
@given(request=requests())
def test_fuzzed_requests_get_clear_answers(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> None:
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details()  # type: ignore[attr-defined]
        assert code in ALLOWED, f"{code}: {details}"
        assert details


def test_daemon_is_healthy_after_the_fuzzing(
    daemon: Daemon, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert daemon.process.poll() is None
    request = pb.ModelInferRequest(model_name="add")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    out = stub.ModelInfer(request, timeout=10).raw_output_contents[0]
    np.testing.assert_array_equal(np.frombuffer(out, np.float32), np.ones(4, np.float32))
    assert "unexpected error" not in daemon.log_path.read_text()
