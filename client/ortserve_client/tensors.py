"""numpy <-> KServe v2 tensors: the datatype table, BYTES length prefixes, raw and typed contents.

This is the single codec used by both the client and the daemon. Decoding raw contents is
zero-copy (``np.frombuffer``) for every fixed-size datatype; the resulting arrays are read-only
views over the request's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from ortserve_client.proto import grpc_service_pb2 as pb

Array: TypeAlias = npt.NDArray[Any]  # any numpy array; the one alias client and server use


def _bf16_dtype() -> np.dtype[Any]:
    """ml_dtypes gives numpy a real bfloat16; without it BF16 travels as its raw uint16 bits."""
    try:
        from ml_dtypes import bfloat16
    except ImportError:  # pragma: no cover - ml_dtypes comes with onnx and tritonclient
        return np.dtype(np.uint16)
    dtype: np.dtype[Any] = np.dtype(bfloat16)
    return dtype


BF16_DTYPE: Final[np.dtype[Any]] = _bf16_dtype()


class TensorError(ValueError):
    """A tensor on the wire does not match what it declares (names the tensor)."""


#: Triton/KServe datatype name -> numpy dtype. BYTES is an object array of ``bytes``.
DATATYPE_TO_DTYPE: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": BF16_DTYPE,
    "BYTES": np.dtype(np.object_),
}

# Which typed ``InferTensorContents`` field carries each datatype (FP16/BF16 have none).
_CONTENTS_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")
#: More elements than a 2 GiB message could carry is a malformed shape, whatever the payload.
MAX_ELEMENTS = 2**31


def datatype_of(array: Array) -> str:
    """The wire datatype name for a numpy array (``str``/``bytes`` arrays are BYTES)."""
    dtype = array.dtype
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    if dtype == BF16_DTYPE and dtype != np.dtype(np.uint16):
        return "BF16"
    for name, candidate in DATATYPE_TO_DTYPE.items():
        if candidate == dtype:
            return name
    raise TensorError(f"numpy dtype {dtype} has no KServe v2 datatype")


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


@dataclass(frozen=True, slots=True)
class DecodedTensor:
    name: str
    datatype: str
    array: Array


def serialize_bytes(array: Array) -> bytes:
    """BYTES elements, each as a 4-byte little-endian length followed by its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(name: str, raw: bytes, count: int) -> npt.NDArray[np.object_]:
    """Split length-prefixed BYTES contents into exactly ``count`` elements."""
    if count * 4 > len(raw):  # every element has a 4-byte prefix: refuse before allocating
        raise TensorError(
            f"input '{name}': {count} BYTES elements need at least {count * 4} bytes of length "
            f"prefixes, got {len(raw)} bytes"
        )
    out = np.empty(count, dtype=np.object_)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise TensorError(
                f"input '{name}': BYTES contents end after {i} of {count} elements "
                f"(a 4-byte length prefix is missing at byte {offset})"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise TensorError(
                f"input '{name}': BYTES element {i} declares {length} bytes but only "
                f"{len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise TensorError(
            f"input '{name}': {len(view) - offset} trailing bytes after {count} BYTES elements"
        )
    return out


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Array:
    """Decode one tensor's raw contents (zero-copy for fixed-size types)."""
    dtype = _dtype_for(name, datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"input '{name}': expected {expected} bytes for {datatype} shape {list(shape)}, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents
) -> Array:
    """Decode one tensor given as typed ``contents`` (the non-raw form)."""
    dtype = _dtype_for(name, datatype)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(
            f"input '{name}': {datatype} has no typed contents field; send it as raw contents"
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise TensorError(
            f"input '{name}': shape {list(shape)} needs {count} elements, {field} has {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise TensorError(f"input '{name}': a value does not fit {datatype}") from exc


def encode_raw(array: Array) -> bytes:
    """Raw contents for one tensor: C-order bytes, or length-prefixed elements for BYTES."""
    if array.dtype.kind in ("O", "S", "U"):
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def _dtype_for(name: str, datatype: str) -> np.dtype[Any]:
    dtype = DATATYPE_TO_DTYPE.get(datatype)
    if dtype is None:
        known = ", ".join(DATATYPE_TO_DTYPE)
        raise TensorError(f"input '{name}': unknown datatype '{datatype}' (known: {known})")
    return dtype


def parameter_value(param: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (whichever of its fields is set), or None."""
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def decode_request_inputs(
    request: pb.ModelInferRequest, max_bytes_elements: int | None = None
) -> list[DecodedTensor]:
    """All inputs of a ModelInferRequest as numpy arrays, checking counts and sizes.

    ``max_bytes_elements``: the most elements one BYTES tensor may declare (None: no limit),
    checked on the declared shape before anything is decoded: each element becomes a Python
    object, so the count, not the payload's size, is what decoding costs.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents"
        )
    decoded: list[DecodedTensor] = []
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        shape = list(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise TensorError(f"input '{name}': shape {shape} has a negative dimension")
        if element_count([dim for dim in shape if dim]) > MAX_ELEMENTS:  # zeros hide nothing
            raise TensorError(
                f"input '{name}': shape {shape} declares more than {MAX_ELEMENTS} elements"
            )
        if (
            max_bytes_elements is not None
            and tensor.datatype == "BYTES"
            and element_count(shape) > max_bytes_elements
        ):
            raise TensorError(
                f"input '{name}': shape {shape} declares {element_count(shape)} BYTES elements, "
                f"more than the {max_bytes_elements} one BYTES tensor may carry"
            )
        has_contents = tensor.HasField("contents")
        if raw and has_contents:
            raise TensorError(
                f"input '{name}': given both as contents and raw_input_contents; use one form"
            )
        if raw:
            array = decode_raw(name, tensor.datatype, shape, raw[index])
        elif has_contents:
            array = decode_contents(name, tensor.datatype, shape, tensor.contents)
        elif element_count(shape) == 0:
            array = np.empty(shape, dtype=_dtype_for(name, tensor.datatype))
        else:
            raise TensorError(f"input '{name}': no data (neither contents nor raw contents)")
        decoded.append(DecodedTensor(name, tensor.datatype, array))
    return decoded
