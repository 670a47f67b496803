"""`ortserve` command line: thin; each subcommand hands its settings to the module that works."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ortserve.settings import add_serve_arguments, environ, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortserve",
        description="Serve ONNX models over the KServe v2 / Triton gRPC API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description=(
            "Serve every model of a Triton-layout model repository over the KServe v2 / Triton "
            "gRPC API (inference.GRPCInferenceService), with grpc.health.v1 and server "
            "reflection. Each flag can also be set by the ORTSERVE_* variable named in its help."
        ),
    )
    add_serve_arguments(serve, environ())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from ortserve.app import serve
        from ortserve.observability.logging import configure_logging

        settings = settings_from_args(args)
        configure_logging(settings.log_format, settings.log_level)
        return asyncio.run(serve(settings))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
