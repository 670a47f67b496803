"""A generation request's sampling parameters, as Triton's vLLM backend takes them.

``sampling_parameters`` is a JSON object (an input tensor); a field it leaves out is taken from
the request parameter of the same name, else vLLM's default (``types.SamplingParams``). Values
may be JSON numbers or numbers written as strings (the vLLM backend's own examples send
``{"temperature": "0.1"}``). Every refusal is InvalidInput naming the field.

A key of the JSON object that is not read here is refused (it would otherwise be silently
ignored); request parameters are an open namespace (``priority``, ``timeout``, Triton's own), so
only the names below are read from there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ortserve.errors import InvalidInput, shown
from ortserve.generation.types import SamplingParams

#: The most UTF-8 bytes a ``sampling_parameters`` JSON object may have.
MAX_SAMPLING_JSON_BYTES = 64 * 1024
#: The most stop strings one request may give, and the longest one (characters).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _where(field: str) -> str:
    return f"sampling parameter '{field}'"


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{_where(field)} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isascii() and text.lstrip("+-").isdigit() and len(text) <= 20:
            return int(text)
    raise InvalidInput(f"{_where(field)} must be an integer, got {_shown(value)}")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidInput(f"{_where(field)} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            raise InvalidInput(f"{_where(field)} must be a number, got {_shown(value)}") from None
    else:
        raise InvalidInput(f"{_where(field)} must be a number, got {_shown(value)}")
    if not math.isfinite(number):
        raise InvalidInput(f"{_where(field)} must be a finite number, got {_shown(value)}")
    return number


def _flag(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidInput(f"{_where(field)} must be true or false, got {_shown(value)}")


def _seed(field: str, value: Any) -> int | None:
    return None if value is None else _integer(field, value)


def _stop(field: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise InvalidInput(f"{_where(field)} must be a string or a list of strings")
    if len(items) > MAX_STOP_STRINGS:
        raise InvalidInput(f"{_where(field)}: at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    for item in items:
        if not item:
            raise InvalidInput(f"{_where(field)}: a stop string must not be empty")
        if len(item) > MAX_STOP_CHARS:
            raise InvalidInput(
                f"{_where(field)}: a stop string has {len(item)} characters, more than "
                f"{MAX_STOP_CHARS}"
            )
    return tuple(items)


#: Every field read, with its reader: the one table of what a request may set.
FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "max_tokens": _integer,
    "temperature": _number,
    "top_k": _integer,
    "top_p": _number,
    "repetition_penalty": _number,
    "seed": _seed,
    "stop": _stop,
    "ignore_eos": _flag,
}


def _shown(value: Any) -> str:
    return shown(value) if isinstance(value, str) else shown(json.dumps(value, default=str))


def parse_json(text: str | None) -> dict[str, Any]:
    """The ``sampling_parameters`` object (empty when not given)."""
    if text is None or not text.strip():
        return {}
    if len(text.encode("utf-8")) > MAX_SAMPLING_JSON_BYTES:
        raise InvalidInput(
            f"input 'sampling_parameters': more than {MAX_SAMPLING_JSON_BYTES} bytes of JSON"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"input 'sampling_parameters' is not valid JSON: {exc.msg} at character {exc.pos}"
        ) from None
    if not isinstance(value, dict):
        raise InvalidInput(
            f"input 'sampling_parameters' must be a JSON object, got {type(value).__name__}"
        )
    unknown = sorted(key for key in value if key not in FIELDS)
    if unknown:
        raise InvalidInput(
            f"input 'sampling_parameters': unknown key {shown(unknown[0])} (accepted: "
            f"{', '.join(FIELDS)})"
        )
    return value


def sampling_params(text: str | None, parameters: Mapping[str, Any]) -> SamplingParams:
    """The request's ``SamplingParams``: ``text`` (the ``sampling_parameters`` JSON, or None)
    first, then the request ``parameters`` of the same names; checked (InvalidInput naming the
    field)."""
    given = parse_json(text)
    values: dict[str, Any] = {}
    for field, read in FIELDS.items():
        if field in given:
            values[field] = read(field, given[field])
        elif field in parameters:
            values[field] = read(field, parameters[field])
    params = SamplingParams(**values)
    try:
        params.check()
    except InvalidInput as exc:
        raise InvalidInput(f"sampling parameter {exc}") from None
    return params
