"""Server settings: one typed schema, read from flags and ORTSERVE_* variables in one place."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ServeSettings:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_format: str = "console"
    log_level: str = "info"
    default_max_batch_size: int = 32
    max_message_bytes: int = 2**31 - 1
    grace_seconds: float = 5.0


# flag name -> (help, type, choices); the default comes from the dataclass field.
_FLAGS: dict[str, tuple[str, Any, Sequence[str] | None]] = {
    "model_repository": (
        "folder holding <model>/config.pbtxt and <model>/<version>/model.onnx (required)",
        Path,
        None,
    ),
    "host": (
        "address to listen on (pass 0.0.0.0 in a container to accept outside traffic)",
        str,
        None,
    ),
    "grpc_port": ("gRPC port; 0 picks a free one and logs it on one line", int, None),
    "metrics_port": (
        "Prometheus /metrics port on the same host; 0 picks a free one, -1 turns it off",
        int,
        None,
    ),
    "log_format": ("console (human) or json (one object per line)", str, ("console", "json")),
    "log_level": ("debug, info, warning or error", str, ("debug", "info", "warning", "error")),
    "default_max_batch_size": (
        "max_batch_size given to a model with no explicit one whose inputs and outputs all "
        "have a dynamic first dimension",
        int,
        None,
    ),
    "max_message_bytes": ("largest gRPC message accepted or sent, in bytes", int, None),
    "grace_seconds": ("on SIGTERM/SIGINT, how long in-flight requests may finish", float, None),
}


def env_name(field_name: str) -> str:
    return "ORTSERVE_" + field_name.upper()


def add_serve_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Every setting as a flag; each flag's default is its ORTSERVE_* variable when set."""
    defaults: dict[str, Any] = {f.name: f.default for f in fields(ServeSettings)}
    for name, (help_text, kind, choices) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        env = env_name(name)
        default: Any = environ.get(env)
        if default is None:
            default = defaults[name] if name in defaults and name != "model_repository" else None
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=kind(default) if default is not None else None,
            choices=choices,
            required=name == "model_repository" and default is None,
            help=f"{help_text}{shown}; env {env}",
        )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    values = {f.name: getattr(args, f.name) for f in fields(ServeSettings)}
    return ServeSettings(**values)


def environ() -> Mapping[str, str]:
    return os.environ
