"""Server settings: one typed schema, read from flags and ORTSERVE_* variables in one place.

Each field of ``ServeSettings`` is a flag (``--grpc-port``) and a variable (``ORTSERVE_GRPC_PORT``);
a flag wins over its variable, which wins over the default written here. Booleans read 1/true/yes
from the environment; lists (``--load-model``) are repeated flags or comma-separated variables.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ortserve.repository.config import DEFAULT_MAX_BATCH_SIZE


@dataclass(frozen=True, slots=True)
class ServeSettings:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_port: int | None = None  # see metrics_port_to_bind()
    http_port: int | None = None  # see http_port_to_bind()
    no_http: bool = False
    log_format: str = "console"
    log_level: str = "info"
    model_control_mode: str = "poll"
    enable_repository_control: bool = False
    load_model: tuple[str, ...] = field(default_factory=tuple)
    settle_seconds: float = 1.0
    watch_polling: bool = False
    allow_symlinks_outside_repository: bool = False
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_message_bytes: int = 64 * 2**20
    max_concurrent_rpcs: int = 0
    grace_seconds: float = 5.0
    drain_seconds: float = 0.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token_file: Path | None = None
    event_loop: str = "auto"

    def metrics_port_to_bind(self) -> int:
        """--metrics-port as given; when not given, 8002, or 0 (a free one) when --grpc-port is
        0: two daemons started on free gRPC ports must not both reach for 8002."""
        if self.metrics_port is not None:
            return self.metrics_port
        return 0 if self.grpc_port == 0 else DEFAULT_METRICS_PORT

    def http_port_to_bind(self) -> int | None:
        """The HTTP front's port: None with --no-http; --http-port as given; when not given,
        8000 (Triton's), or 0 (a free one) when --grpc-port is 0, as for the metrics port."""
        if self.no_http:
            return None
        if self.http_port is not None:
            return self.http_port
        return 0 if self.grpc_port == 0 else DEFAULT_HTTP_PORT


#: The HTTP port when neither --http-port nor ORTSERVE_HTTP_PORT is given (Triton's).
DEFAULT_HTTP_PORT = 8000
#: The metrics port when neither --metrics-port nor ORTSERVE_METRICS_PORT is given.
DEFAULT_METRICS_PORT = 8002


@dataclass(frozen=True, slots=True)
class _Flag:
    help: str
    kind: Any = str  # str, int, float, Path, bool (a switch) or list (repeatable)
    choices: Sequence[str] | None = None


_FLAGS: dict[str, _Flag] = {
    "model_repository": _Flag(
        "folder holding <model>/config.pbtxt and <model>/<version>/model.onnx (required)", Path
    ),
    "host": _Flag("address to listen on (pass 0.0.0.0 in a container to accept outside traffic)"),
    "grpc_port": _Flag("gRPC port; 0 picks a free one and logs it on one line", int),
    "metrics_port": _Flag(
        "Prometheus /metrics port on the same host; 0 picks a free one, -1 turns it off "
        f"(default: {DEFAULT_METRICS_PORT}, or 0 when --grpc-port is 0, so that daemons started "
        "on free ports do not collide; the bound port is logged on the 'listening' line)",
        int,
    ),
    "http_port": _Flag(
        "HTTP port (KServe v2 REST, OpenAI-compatible routes) on the same host; 0 picks a free "
        f"one (default: {DEFAULT_HTTP_PORT}, or 0 when --grpc-port is 0; the bound port is logged "
        "on the 'listening' line)",
        int,
    ),
    "no_http": _Flag("serve gRPC only: no HTTP front", bool),
    "log_format": _Flag("console (human) or json (one object per line)", str, ("console", "json")),
    "log_level": _Flag("debug, info, warning or error", str, ("debug", "info", "warning", "error")),
    "model_control_mode": _Flag(
        "poll: load every model at start and watch the repository for new, changed and removed "
        "versions; none: load at start, never reload; explicit: load only --load-model models "
        "and what RepositoryModelLoad asks for",
        str,
        ("none", "poll", "explicit"),
    ),
    "enable_repository_control": _Flag(
        "allow RepositoryModelLoad/Unload over gRPC in poll and none modes (always on in explicit)",
        bool,
    ),
    "load_model": _Flag("in explicit mode, a model to load at start (repeat the flag)", list),
    "settle_seconds": _Flag(
        "a new or changed version folder is loaded once nothing in it changed for this long "
        "(a READY file in it, or publishing it by one atomic rename, skips the wait)",
        float,
    ),
    "allow_symlinks_outside_repository": _Flag(
        "follow symbolic links (a model, version, model file or config) that lead outside the "
        "model repository, as Triton does; without it such a model is refused with the link named",
        bool,
    ),
    "watch_polling": _Flag(
        "watch the repository by polling instead of file-system events (network file systems)",
        bool,
    ),
    "default_max_batch_size": _Flag(
        "max_batch_size given to a model with no explicit one whose inputs and outputs all have "
        "a dynamic first dimension",
        int,
    ),
    "max_message_bytes": _Flag(
        "largest gRPC request accepted, in bytes (64 MiB); a larger one gets RESOURCE_EXHAUSTED "
        "from gRPC, and a larger HTTP body 413 (answers may be up to 2 GiB)",
        int,
    ),
    "max_concurrent_rpcs": _Flag(
        "most RPCs in progress at once; more get RESOURCE_EXHAUSTED from gRPC (0 = no limit)", int
    ),
    "grace_seconds": _Flag(
        "on SIGTERM/SIGINT, how long admitted requests may take to finish", float
    ),
    "drain_seconds": _Flag(
        "on SIGTERM/SIGINT, how long to keep serving after health turns NOT_SERVING, so that "
        "load balancers stop routing first (e.g. 5 behind Kubernetes)",
        float,
    ),
    "tls_cert": _Flag("PEM certificate chain: serve TLS (with --tls-key)", Path),
    "tls_key": _Flag("PEM private key of --tls-cert", Path),
    "tls_client_ca": _Flag("PEM CA bundle: require client certificates signed by it (mTLS)", Path),
    "auth_token_file": _Flag(
        "file with the bearer token(s) callers must send (one a line); health stays open", Path
    ),
    "event_loop": _Flag(
        "asyncio loop: uvloop (less CPU and latency per request), asyncio (the standard one), "
        "or auto (uvloop when installed)",
        str,
        ("auto", "uvloop", "asyncio"),
    ),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_name(field_name: str) -> str:
    return "ORTSERVE_" + field_name.upper()


def add_serve_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Every setting as a flag; each flag's default is its ORTSERVE_* variable when set."""
    defaults = {f.name: f for f in fields(ServeSettings)}
    for name, flag in _FLAGS.items():
        option = "--" + name.replace("_", "-")
        env = env_name(name)
        raw = environ.get(env)
        spec = defaults[name]
        fallback = spec.default_factory() if spec.default_factory is not MISSING else spec.default
        if flag.kind is bool:
            default: Any = _env_bool(parser, env, raw) if raw is not None else fallback
            parser.add_argument(option, dest=name, action="store_true", default=default,
                                help=f"{flag.help}; env {env}=1")  # fmt: skip
            continue
        if flag.kind is list:
            default = [v.strip() for v in raw.split(",") if v.strip()] if raw else []
            parser.add_argument(option, dest=name, action="append", default=default,
                                metavar="NAME", help=f"{flag.help}; env {env}=a,b")  # fmt: skip
            continue
        default = _env_value(parser, env, raw, flag) if raw is not None else fallback
        required = default is MISSING
        # None: no value of its own; the flag's help says what it means.
        shown = "" if required or default is None else f" (default: {default})"
        parser.add_argument(
            option,
            dest=name,
            type=flag.kind,
            default=None if required else default,
            choices=flag.choices,
            required=required,
            help=f"{flag.help}{shown}; env {env}",
        )


def _env_value(parser: argparse.ArgumentParser, env: str, raw: str, flag: _Flag) -> Any:
    """A variable's value, held to the same type and choices as its flag (argparse checks
    neither on a default)."""
    try:
        value = flag.kind(raw)
    except ValueError:
        parser.error(f"{env}={raw!r} is not a valid {flag.kind.__name__}")
    if flag.choices and value not in flag.choices:
        lowered = value.lower() if isinstance(value, str) else value
        if lowered not in flag.choices:  # INFO for info is common in environment files
            parser.error(f"{env}={raw!r}: choose from {', '.join(map(str, flag.choices))}")
        value = lowered
    return value


def _env_bool(parser: argparse.ArgumentParser, env: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word not in _TRUE + _FALSE:
        parser.error(f"{env}={raw!r}: use 1/true/yes/on or 0/false/no/off")
    return word in _TRUE


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    values = {f.name: getattr(args, f.name) for f in fields(ServeSettings)}
    values["load_model"] = tuple(values["load_model"])
    return ServeSettings(**values)


def environ() -> Mapping[str, str]:
    return os.environ
