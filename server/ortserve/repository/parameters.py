"""A model config's ``parameters`` (string values in config.pbtxt), read with their types.

One reader for every module that takes settings from there (session options, batching, text),
so that every bad value fails the same way: a ConfigError naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping

from ortserve.errors import ConfigError
from ortserve_client._proto import model_config_pb2 as mc

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Parameters:
    def __init__(self, values: mc.ModelConfig | Mapping[str, str], source: str) -> None:
        if isinstance(values, mc.ModelConfig):
            values = {key: value.string_value for key, value in values.parameters.items()}
        self._values = dict(values)
        self._source = source

    def _raw(self, key: str) -> str | None:
        raw = self._values.get(key)
        return raw.strip() if raw and raw.strip() else None

    def _error(self, key: str, wanted: str, raw: str) -> ConfigError:
        return ConfigError(f"{self._source}: parameters '{key}' must be {wanted}, got {raw!r}")

    def where(self, key: str) -> str:
        """Names a parameter in a message: "<file>: parameters '<key>'"."""
        return f"{self._source}: parameters '{key}'"

    def text(self, key: str, default: str = "") -> str:
        return self._raw(key) or default

    def integer(self, key: str, default: int) -> int:
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise self._error(key, "an integer", raw) from None

    def number(self, key: str) -> float | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise self._error(key, "a number", raw) from None

    def flag(self, key: str, default: bool) -> bool:
        raw = self._raw(key)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._error(key, "true or false", raw)

    def items(self) -> list[tuple[str, str]]:
        return list(self._values.items())
