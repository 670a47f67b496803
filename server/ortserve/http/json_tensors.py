"""KServe v2 JSON tensors <-> numpy: ``{"name", "shape", "datatype", "data"}``.

``data`` is a flat or nested list in row-major order; BYTES elements are strings (UTF-8). An
input may instead carry its contents in the binary part of the body (``binary.py``): then its
``parameters.binary_data_size`` says how many bytes, and it has no ``data``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ortserve.errors import InvalidInput, shown
from ortserve.protocol.codec import MAX_BYTES_ELEMENTS
from ortserve_client.tensors import (
    DATATYPE_TO_DTYPE,
    MAX_ELEMENTS,
    Array,
    DecodedTensor,
    TensorError,
    decode_raw,
    element_count,
)

#: Datatypes JSON can carry as numbers or booleans (BF16 has no JSON form in KServe v2).
_JSON_NUMERIC = frozenset(DATATYPE_TO_DTYPE) - {"BYTES", "BF16"}


def tensor_header(entry: Any, index: int) -> tuple[str, str, list[int], dict[str, Any]]:
    """An input's name, datatype, shape and parameters, checked (InvalidInput names the field)."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{index}] must be an object, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}].name must be a non-empty string")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_DTYPE:
        known = ", ".join(DATATYPE_TO_DTYPE)
        raise InvalidInput(f"input '{name}': datatype {shown(str(datatype))} unknown ({known})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    if element_count([dim for dim in shape if dim]) > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}': shape {shape} declares too many elements")
    if datatype == "BYTES" and element_count(shape) > MAX_BYTES_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {shape} declares more than {MAX_BYTES_ELEMENTS} BYTES elements"
        )
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input '{name}': parameters must be an object")
    return name, datatype, shape, parameters


def decode_json_input(name: str, datatype: str, shape: list[int], data: Any) -> DecodedTensor:
    """One input whose elements are in ``data`` (a flat or nested list)."""
    if data is None:
        raise InvalidInput(f"input '{name}': no 'data' and no binary_data_size parameter")
    flat = _flatten(data if isinstance(data, list) else [data])
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, 'data' has {len(flat)}"
        )
    if datatype == "BYTES":
        array: Array = np.empty(count, dtype=np.object_)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidInput(f"input '{name}': BYTES data must be strings, got {item!r:.40}")
            array[i] = item.encode("utf-8")
        return DecodedTensor(name, datatype, array.reshape(shape))
    if datatype not in _JSON_NUMERIC:
        raise InvalidInput(f"input '{name}': {datatype} has no JSON form; send it as binary data")
    if any(isinstance(item, (str, dict, type(None))) for item in flat):
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers")
    if datatype != "BOOL" and any(isinstance(item, bool) for item in flat):
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers, not booleans")
    try:
        array = np.asarray(flat, dtype=DATATYPE_TO_DTYPE[datatype])
    except (OverflowError, ValueError, TypeError):
        raise InvalidInput(f"input '{name}': a value in 'data' does not fit {datatype}") from None
    return DecodedTensor(name, datatype, array.reshape(shape))


def decode_binary_input(name: str, datatype: str, shape: list[int], raw: bytes) -> DecodedTensor:
    """One input whose contents came in the body's binary part (zero-copy for fixed sizes)."""
    try:
        return DecodedTensor(name, datatype, decode_raw(name, datatype, shape, raw))
    except TensorError as exc:
        raise InvalidInput(str(exc)) from None


def _flatten(data: Sequence[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return list(data)
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def output_json(
    name: str, datatype: str, array: Array, parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One output as JSON, its elements in ``data`` (BYTES decoded as UTF-8 strings)."""
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if parameters:
        entry["parameters"] = dict(parameters)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        entry["data"] = [_text(item) for item in flat]
    elif datatype in ("FP16", "BF16"):
        entry["data"] = flat.astype(np.float32).tolist()
    else:
        entry["data"] = flat.tolist()
    return entry


def _text(item: Any) -> str:
    if isinstance(item, str):
        return item
    return bytes(item).decode("utf-8", errors="replace")
