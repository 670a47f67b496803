"""The daemon's domain errors. No transport here: protocol/status.py maps each kind to a gRPC code.

Every message names what it is about (model, version, tensor, file or field), because it is
sent to the caller as it is.
"""

from __future__ import annotations

from collections.abc import Callable


class OrtserveError(Exception):
    """Root of every error the daemon raises on purpose."""


class InvalidInput(OrtserveError):
    """The request is malformed: unknown tensor, wrong datatype or shape, bad bytes."""


class ModelNotFound(OrtserveError):
    """No such model, or no such version of it."""


class ModelNotReady(OrtserveError):
    """The model exists but cannot serve now (loading, failed to load, unloading)."""


class Overloaded(OrtserveError):
    """Admission refused: a queue is full."""


class DeadlineExpired(OrtserveError):
    """The request's deadline or queue timeout passed before it could run."""


class Disabled(OrtserveError):
    """The call is offered but switched off by the daemon's settings; the message says how."""


class Unsupported(OrtserveError):
    """The call is valid but this daemon does not offer it (or not with these settings)."""


class ModelLoadError(OrtserveError):
    """A model version could not be loaded; the message names the file and the cause."""


class ConfigError(ModelLoadError):
    """A configuration file is invalid; the message names the file and the field or line."""


def shown(text: str, limit: int = 64) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters: a value a caller sent is named,
    never echoed back kilobytes long."""
    return _clipped(text, limit, repr)


def cut(text: str, limit: int = 300) -> str:
    """``text`` (a message built from what a caller sent) cut to ``limit`` characters."""
    return _clipped(text, limit, str)


def _clipped(text: str, limit: int, form: Callable[[str], str]) -> str:
    if len(text) <= limit:
        return form(text)
    return f"{form(text[:limit])}... ({len(text)} characters)"
