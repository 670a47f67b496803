"""Triton's binary tensor data extension: a JSON header, then the tensors' raw bytes.

A request body is ``Inference-Header-Content-Length`` bytes of JSON followed by the raw contents
of each input whose ``parameters.binary_data_size`` is set, in the order of ``inputs``. An answer
does the same for the outputs asked for with ``parameters.binary_data: true`` (or all of them
with the request parameter ``binary_data_output: true``); its header says where the JSON ends.
"""

from __future__ import annotations

import json
from typing import Any

from ortserve.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"


def split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The request's JSON and the binary part after it (empty without the header)."""
    view = memoryview(body)
    if header_length is None:
        json_part, rest = view, view[len(view) :]
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise InvalidInput(
                f"header Inference-Header-Content-Length: {header_length!r} is not a length "
                f"within the {len(body)}-byte body"
            )
        json_part, rest = view[:size], view[size:]
    try:
        return json.loads(bytes(json_part)), rest
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None


class BinaryReader:
    """Hands out the binary part's chunks in order, each of its declared size."""

    def __init__(self, rest: memoryview) -> None:
        self._rest = rest
        self._offset = 0

    def take(self, name: str, size: Any) -> bytes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"input '{name}': parameter binary_data_size must be a non-negative integer"
            )
        end = self._offset + size
        if end > len(self._rest):
            raise InvalidInput(
                f"input '{name}': binary_data_size {size} goes past the end of the body "
                f"({len(self._rest) - self._offset} bytes left)"
            )
        chunk = self._rest[self._offset : end]
        self._offset = end
        return bytes(chunk)

    def check_consumed(self) -> None:
        left = len(self._rest) - self._offset
        if left:
            raise InvalidInput(f"{left} bytes after the last input's binary data")


def join_body(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    """The answer's body and its JSON length (None when there is no binary part)."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)
