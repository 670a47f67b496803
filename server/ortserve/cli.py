"""`ortserve` command line: thin; each subcommand hands its settings to the module that works."""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import sys
from collections.abc import Callable, Sequence
from importlib import metadata as importlib_metadata

from ortserve.settings import add_serve_arguments, environ, settings_from_args
from ortserve.status_command import add_status_arguments, run_status

#: The companion tool's commands. ``main`` hands them to ``ortserve.export.cli`` unparsed and
#: imports it only then: the daemon never loads the export code (torch, transformers, optimum).
TOOL_COMMANDS = {
    "export": "export a Hugging Face model to ONNX, check, benchmark and publish it",
    "publish": "publish an existing ONNX file or folder into the model repository",
    "inspect": "show an ONNX model's opset, inputs, outputs, dynamic axes and manifest",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortserve",
        description="Serve ONNX models over the KServe v2 / Triton gRPC API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")
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
    status = commands.add_parser(
        "status",
        help="show a running daemon's models (state, reason) and statistics as tables",
        description="Ask a running daemon, over gRPC, for its repository index and statistics.",
    )
    add_status_arguments(status)
    for name, summary in TOOL_COMMANDS.items():
        # Listed for `ortserve --help`; `ortserve NAME --help` is answered by the tool itself.
        commands.add_parser(name, help=f"{summary} (needs the export extra; see {name} --help)")
    return parser


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for ``--event-loop``: None is asyncio's own.

    uvloop costs the loop thread 11-18 % less CPU per gRPC request here (bench/README.md),
    which on a small machine is CPU handed back to ONNX Runtime.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "ortserve serve: --event-loop uvloop, but uvloop is not installed "
                "(pip install uvloop, or --event-loop asyncio)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def distribution_version() -> str:
    """The installed ortserve distribution's version (what the daemon reports in
    ServerMetadata)."""
    try:
        return importlib_metadata.version("ortserve")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Output cut short by its reader (``ortserve status | head``) ends the
    command quietly, as for other command-line tools: no traceback, exit status 1 (what rich,
    which prints the export tool's tables, and Python's own recipe give). The exception still
    unwinds, so the export tool's cleanups run."""
    try:
        try:
            code = _run(list(sys.argv[1:] if argv is None else argv))
        except SystemExit:  # --help, --version, a usage error: their text is in the buffer too
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # output that fit in the buffer meets the closed pipe only here
    except BrokenPipeError:
        if not _silence_closed_outputs():
            raise  # a pipe of the command's own (a subprocess, a socket), not its output
        return 1
    return code


def _silence_closed_outputs() -> bool:
    """Point stdout/stderr whose reader has gone at /dev/null, so the interpreter's last flush
    does not print 'Exception ignored ... BrokenPipeError'; whether any had gone."""
    closed = [fd for fd in (1, 2) if _reader_gone(fd)]
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in closed:
            os.dup2(devnull, fd)
        os.close(devnull)
    return bool(closed)


def _reader_gone(fd: int) -> bool:
    """A pipe (or socket) whose other end is closed polls as an error on the writing end."""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows: no SIGPIPE, no poll
        return fd == 1
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _run(arguments: list[str]) -> int:
    if arguments and arguments[0] in TOOL_COMMANDS:
        from ortserve.export.cli import main as tool_main

        return tool_main(arguments)
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        from ortserve.app import serve
        from ortserve.observability.logging import configure_logging

        settings = settings_from_args(args)
        configure_logging(settings.log_format, settings.log_level)
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            return runner.run(serve(settings))
    if args.command == "status":
        return run_status(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
