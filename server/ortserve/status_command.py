"""`ortserve status`: a running daemon's repository index and statistics, as a table.

Talks to the daemon over gRPC with ortserve_client, like any other client (TLS and token too).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ortserve.protocol.auth import read_tokens
from ortserve_client import Client, InferenceServerError
from ortserve_client.proto import grpc_service_pb2 as pb


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="127.0.0.1:8001", help="daemon address (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per call (default: %(default)s)"
    )
    parser.add_argument("--ca", type=Path, help="PEM CA bundle: connect with TLS")
    parser.add_argument("--cert", type=Path, help="PEM client certificate (mTLS)")
    parser.add_argument("--key", type=Path, help="PEM client key (mTLS)")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file with the bearer token (its first token line, as the daemon reads it)",
    )


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        token = read_tokens(args.token_file)[0] if args.token_file else None
        ca, cert, key = (
            path.read_bytes() if path else None for path in (args.ca, args.cert, args.key)
        )
    except (OSError, ValueError) as exc:  # a missing file, or a token file with no token
        print(f"ortserve status: {exc}", file=sys.stderr)
        return 2
    try:
        with Client(
            args.target,
            timeout=args.timeout,
            root_certificates=ca,
            certificate_chain=cert,
            private_key=key,
            token=token,
            retries=0,
        ) as client:
            meta = client.server_metadata()
            ready = client.ready()
            index = client.repository_index()
            stats = client.statistics()
    except InferenceServerError as exc:
        print(f"ortserve status: {args.target}: {exc}", file=sys.stderr)
        return 1
    print(
        f"{meta.name} {meta.version} at {args.target}: {'ready' if ready else 'NOT ready'}",
        file=out,
    )
    print(f"extensions: {', '.join(meta.extensions)}", file=out)
    print(file=out)
    _table(out, ["MODEL", "VERSION", "STATE", "REASON"],
           [[m.name, m.version or "-", m.state or "-", m.reason] for m in index])  # fmt: skip
    print(file=out)
    _table(out, STATS_HEADER, [_stats_row(s) for s in stats.model_stats])
    return 0


STATS_HEADER = ["MODEL", "VERSION", "INFERENCES", "EXECUTIONS", "AVG BATCH", "QUEUE ms",
                "COMPUTE ms", "FAILED"]  # fmt: skip


def _stats_row(s: pb.ModelStatistics) -> list[str]:
    infer = s.inference_stats
    done = infer.success.count or 1
    compute = infer.compute_input.ns + infer.compute_infer.ns + infer.compute_output.ns
    batch = s.inference_count / s.execution_count if s.execution_count else 0.0
    queue_ms = infer.queue.ns / done / 1e6
    return [s.name, s.version, str(s.inference_count), str(s.execution_count), f"{batch:.1f}",
            f"{queue_ms:.3f}", f"{compute / done / 1e6:.3f}", str(infer.fail.count)]  # fmt: skip


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for row in [list(header), *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
