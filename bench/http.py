"""HTTP beside gRPC: one daemon, both fronts, perf_analyzer ``-i http`` against ``-i grpc``.

    .venv/bin/python -m bench.http [--rounds 2] [--concurrency 1 64] [--raw-seconds 1]

One run (~4-5 min with the defaults), in this order:

1. builds (or reuses) bench/.ratio/http/spin: the encoder bench.ratio serves (tests/factories
   encoder_model(), seq 32, max_batch_size 64, ``dynamic_batching { }``, intra_op_thread_count
   "2") and its perf_analyzer input-data file, plus ``floor`` (y = x + 1 on 4 floats, batched
   the same way): next to no compute, so its rate is what each front itself can carry;
2. measures raw in-process ONNX Runtime with the daemon's own session options at batch 1, 8, 32
   and 64 (``bench.lib.raw.measure_raw``): the reference both fronts are divided by;
3. starts ONE daemon (127.0.0.1, ``--grpc-port 0 --http-port 0``, JSON logs; both ports read
   from its "listening" line) and runs perf_analyzer against it, single-row unary requests,
   the encoder at c=64 then c=1, then the floor model (unless --no-floor) in each round, the
   two protocols interleaved and their order swapped every round (gRPC first in odd rounds,
   HTTP first in even ones) so that neither always runs on the warmer or the quieter host; each
   run under `timeout`, retried once with looser -s/-r when it cannot stabilize;
4. stops the daemon (always), prints the table and the HTTP/gRPC ratio per concurrency (median
   over the rounds) and writes bench/results/http-<UTC>/ (table.md, results.json, perf_analyzer
   CSVs and logs, the daemon's log).

perf_analyzer ``-i http`` sends KServe v2 REST with Triton's binary tensor extension (its
default tensor format), the way ``tritonclient.http`` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.lib import BENCH, ROOT, perf_analyzer
from bench.lib.daemon import Daemon, running, serve_command
from bench.lib.perf_analyzer import PaResult
from bench.lib.procstat import CpuSnapshot, cpu_shares
from bench.lib.raw import RawResult, measure_raw
from bench.lib.tables import HostLoad
from bench.lib.variants import build_repos

VARIANT = "spin"  # bench.ratio's default session options
PROTOCOLS = ("grpc", "http")
RAW_SIZES = (1, 8, 32, 64)
FLAG_SETS = [["-p", "2000", "-s", "25", "-r", "6"], ["-p", "2000", "-s", "40", "-r", "10"]]
TARGET = 0.85  # HTTP throughput at c=64 / gRPC unary throughput
FLOOR = "floor"  # y = x + 1 on [batch, 4] FP32: next to no compute, what each front costs


def build_repo(rebuild: bool) -> tuple[Path, Path]:
    """bench/.ratio/http/spin (git-ignored, beside bench.ratio's own): bench.ratio's spin
    repository, the same encoder and config, plus the floor model; and the encoder's
    perf_analyzer input-data file."""
    repos, data = build_repos(BENCH / ".ratio" / "http", [VARIANT], rebuild)
    from tests.factories.onnx_models import add_model, write_model

    config = f'name: "{FLOOR}"\nmax_batch_size: 64\ndynamic_batching {{ }}\n'
    write_model(repos[VARIANT], FLOOR, add_model(), config=config)
    return repos[VARIANT], data


def measure_floor(
    pa: str, daemon: Daemon, protocol: str, clients: int, out: Path, tag: str
) -> PaResult:
    """perf_analyzer against the floor model (random FP32 rows), as perf_analyzer.measure does
    against the encoder: each flag set in turn until one stabilizes."""
    port = daemon.http_port if protocol == "http" else daemon.port
    result = PaResult(f"{protocol} floor", clients, False, False, "", 0)
    before = CpuSnapshot.take(daemon.pid)
    for attempt, flags in enumerate(FLAG_SETS, start=1):
        csv_path = out / f"floor-{protocol}-c{clients}{tag}.csv"
        limit = perf_analyzer.time_limit(flags)
        cmd = [
            "timeout", "-k", "5", str(limit), pa, "-i", protocol, "-u", f"127.0.0.1:{port}",
            "-m", FLOOR, "-b", "1", *perf_analyzer.concurrency(clients), "-f", str(csv_path),
            *flags,
        ]  # fmt: skip
        log_path = csv_path.with_suffix(f".{attempt}.log")
        text, rc = perf_analyzer.invoke(cmd, limit + 20, log_path)
        result.attempts, result.flags = attempt, " ".join(flags)
        if rc == 0 and csv_path.is_file():
            result.fill(perf_analyzer.read_row(csv_path), text)
            break
        result.note = f"perf_analyzer rc {rc}; see {log_path.name}"
        if "Failed to obtain stable measurement" not in text:
            break
    result.cpu = cpu_shares(before, CpuSnapshot.take(daemon.pid))
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--raw-seconds", type=float, default=1.0, help="per raw batch size")
    parser.add_argument("--pa", help="perf_analyzer (default: $PA or the shared setup script)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the model file")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the floor model (the fronts' own cost)"
    )
    return parser.parse_args(argv)


def plan(rounds: int, concurrencies: Sequence[int], floor: bool) -> list[tuple[int, str, int, str]]:
    """(round, model, clients, protocol): the encoder at every concurrency each round, then the
    floor model; the protocols' order swapped every round."""
    models = ["encoder", FLOOR] if floor else ["encoder"]
    runs: list[tuple[int, str, int, str]] = []
    for number in range(1, rounds + 1):
        order = PROTOCOLS if number % 2 else tuple(reversed(PROTOCOLS))
        runs += [
            (number, model, clients, protocol)
            for model in models
            for clients in concurrencies
            for protocol in order
        ]
    return runs


def paired_ratios(results: Sequence[tuple[int, PaResult]], model: str, clients: int) -> list[float]:
    """HTTP / gRPC infer/s per round, each pair measured back to back: the host's load moves
    between rounds far more than within one, so the ratio is taken within a round."""
    rates: dict[tuple[int, str], float] = {
        (n, r.variant): r.infer_per_s for n, r in results if r.ok and r.concurrency == clients
    }
    suffix = f" {FLOOR}" if model == FLOOR else ""
    rounds = sorted({n for n, _ in results})
    return [
        rates[(n, "http" + suffix)] / rates[(n, "grpc" + suffix)]
        for n in rounds
        if (n, "http" + suffix) in rates and (n, "grpc" + suffix) in rates
    ]


def table(results: Sequence[tuple[int, PaResult]], raw: RawResult) -> list[str]:
    lines = [
        "| round | c | protocol | infer/s | ÷ raw best | p50 / p99 ms "
        "| server queue / compute / overhead µs | mean batch "
        "| daemon CPU (loop) | perf_analyzer | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, r in results:
        if not r.ok:
            lines.append(f"| {number} | {r.concurrency} | {r.variant} | failed: {r.note} |")
            continue
        cpu = r.cpu
        of_raw = "—" if FLOOR in r.variant else f"{r.infer_per_s / raw.best_rate:.2f}"
        lines.append(
            f"| {number} | {r.concurrency} | {r.variant} | {r.infer_per_s:.0f} "
            f"| {of_raw} | {r.p50_ms:.2f} / {r.p99_ms:.2f} "
            f"| {r.queue_us} / {r.compute_us} / {r.server_overhead_us} "
            f"| {r.mean_batch or 0:.1f} "
            f"| {cpu['daemon_pct']}% ({cpu['daemon_loop_pct']}%) | {cpu['perf_analyzer_pct']}% "
            f"| {cpu['other_pct']}% |"
        )
    return lines


def ratio_lines(
    results: Sequence[tuple[int, PaResult]], concurrencies: Sequence[int], floor: bool
) -> list[str]:
    lines = []
    for model in ["encoder", FLOOR] if floor else ["encoder"]:
        for clients in concurrencies:
            ratios = paired_ratios(results, model, clients)
            if not ratios:
                lines.append(f"{model} c={clients}: no ratio (no round with both protocols)")
                continue
            median = statistics.median(ratios)
            verdict = ""
            if model == "encoder" and clients == 64:
                verdict = f" (target ≥ {TARGET}: {'met' if median >= TARGET else 'NOT met'})"
            each = ", ".join(f"{x:.2f}" for x in ratios)
            lines.append(
                f"{model} c={clients}: HTTP / gRPC per round {each}; median **{median:.2f}**"
                + verdict
            )
    return lines


def report(
    stamp: str,
    raw: RawResult,
    results: Sequence[tuple[int, PaResult]],
    loads: tuple[HostLoad, HostLoad],
    concurrencies: Sequence[int],
    command: str,
) -> str:
    before, after = loads
    floor = any(FLOOR in r.variant for _, r in results)
    lines = [
        f"# bench.http {stamp}",
        "",
        f"`{command}`; load average {before.load[0]:.2f} → {after.load[0]:.2f}, "
        f"CPU pressure avg10 {before.psi} → {after.psi}",
        "",
        f"Raw ONNX Runtime (spin options): best {raw.best_rate:.0f} seq/s at batch "
        f"{raw.best_batch}; batch 1 p50 {raw.b1_p50_ms:.2f} ms; other CPU {raw.other_pct}%",
        "",
        *table(results, raw),
        "",
        *ratio_lines(results, concurrencies, floor),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pa = perf_analyzer.find(args.pa)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = BENCH / "results" / f"http-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    repo, data = build_repo(args.rebuild)
    before = HostLoad.read()
    print(f"bench.http {stamp}: load {before.load[0]:.2f}, cpu pressure {before.psi}", flush=True)
    raw = measure_raw(repo, args.raw_seconds, RAW_SIZES)
    print(f"raw ORT: best {raw.best_rate:.0f} seq/s at batch {raw.best_batch}", flush=True)

    cmd = serve_command(repo, "--http-port", "0", "--grace-seconds", "1")
    daemon = Daemon(cmd, out / "daemon.log")
    results: list[tuple[int, PaResult]] = []
    with running([daemon]):
        print(f"daemon: grpc {daemon.port}, http {daemon.http_port}", flush=True)
        for number, model, clients, protocol in plan(
            args.rounds, args.concurrency, not args.no_floor
        ):
            if model == FLOOR:
                result = measure_floor(pa, daemon, protocol, clients, out, f"-r{number}")
            else:
                result = perf_analyzer.measure(
                    pa, daemon, protocol, clients, data, out, FLAG_SETS,
                    tag=f"-r{number}", protocol=protocol,
                )  # fmt: skip
            results.append((number, result))
            status = f"{result.infer_per_s:.0f} infer/s, p50 {result.p50_ms:.2f} ms"
            print(
                f"round {number} {model} c={clients} {protocol}: "
                f"{status if result.ok else 'failed: ' + result.note}",
                flush=True,
            )
    after = HostLoad.read()

    given = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python", "-m", "bench.http", *given])
    text = report(stamp, raw, results, (before, after), args.concurrency, command)
    print("\n" + text)
    (out / "table.md").write_text(text)
    payload = {
        "raw": asdict(raw),
        "runs": [{"round": n, **asdict(r)} for n, r in results],
        "load": [asdict(before), asdict(after)],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"results: {Path(out).relative_to(ROOT)}")
    return 0 if all(r.ok for _, r in results) else 1


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    raise SystemExit(code)
