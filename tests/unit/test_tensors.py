"""The shared numpy <-> wire tensor codec."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.tensors import (
    BF16_DTYPE,
    TensorError,
    datatype_of,
    decode_raw,
    decode_request_inputs,
    deserialize_bytes,
    encode_raw,
    serialize_bytes,
)


def test_raw_decoding_is_zero_copy() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    array = decode_raw("x", "FP32", [2, 3], raw)
    assert not array.flags.owndata  # a view over the request's bytes
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_bytes_round_trip_with_length_prefixes() -> None:
    values = np.array([b"", b"a", "€".encode(), b"\x00\xff"], dtype=np.object_)
    raw = serialize_bytes(values)
    assert raw[:4] == struct.pack("<I", 0)
    np.testing.assert_array_equal(deserialize_bytes("t", raw, 4), values)
    assert encode_raw(np.array(["hé"], dtype=np.object_)) == struct.pack("<I", 3) + "hé".encode()


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.zeros(2, np.float16), "FP16"),
        (np.zeros(2, np.uint64), "UINT64"),
        (np.zeros(2, np.bool_), "BOOL"),
        (np.array([b"x"], np.object_), "BYTES"),
        (np.array(["x"]), "BYTES"),
        (np.zeros(2, BF16_DTYPE), "BF16"),
    ],
)
def test_datatype_of(array: np.ndarray, datatype: str) -> None:
    assert datatype_of(array) == datatype


def test_datatype_of_unknown_dtype() -> None:
    with pytest.raises(TensorError, match="complex64"):
        datatype_of(np.zeros(1, np.complex64))


def test_typed_contents_overflow_is_a_tensor_error() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(1000)
    with pytest.raises(TensorError, match="input 'x'"):
        decode_request_inputs(request)


def test_empty_tensor_needs_no_data() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[0, 4])
    (decoded,) = decode_request_inputs(request)
    assert decoded.array.shape == (0, 4)
