"""Served vs raw ONNX Runtime: the dynamic batcher's throughput ratio and single-client latency.

    .venv/bin/python -m bench.ratio [--quick] [--variants spin,nospin,spin+stream] [--profile]

One run (default ~6 min, --quick ~2 min), in this order:

1. builds (or reuses) bench/.ratio/: the encoder (tests/factories encoder_model(), seq 32) once,
   and one repository per variant, whose config.pbtxt has max_batch_size 64,
   ``dynamic_batching { }`` (no delay: batch what queued while the session was busy) and
   intra_op_thread_count "2"; variant ``nospin`` adds session.intra_op.allow_spinning "0"
   (``intra1``, ``2x1``, ``2x2``, ``dyn``... exist for exploring, not run by default); a name
   ending in ``+stream`` (run by default for spin and nospin) is the same daemon driven by
   perf_analyzer --streaming: one ModelStreamInfer stream per client instead of unary calls;
2. measures raw in-process ONNX Runtime per variant (the daemon's own session options, read
   from that config.pbtxt by ortserve.runtime.options) at batch 1, 2, 4, ... 64, each size
   bounded to --raw-seconds (default 2); keeps the best seq/s and the batch-1 p50/p99;
3. unless --no-layers, runs the daemon's own layers in process (no gRPC, no load generator):
   batch-1 p50 through ModelSessions.run, VersionExecutor.submit, InferenceService.infer and the
   protobuf codec, then the whole path with 64 concurrent tasks;
4. starts one daemon per variant (127.0.0.1, --grpc-port 0, --metrics-port -1, JSON logs; the
   port is read from the "listening" line) and runs perf_analyzer against them, interleaved
   (c=64 for every variant, then c=1, c=32, c=8), single-row requests, each run under
   `timeout`, retried once with looser -s/-r when it cannot stabilize; around every run a short
   raw ORT probe at the best batch size gives "raw now" (the host's load moves within seconds);
   then once more at c=8 with and without `-x 1` (the model version) to check that the
   server-side statistics come through both ways; if the time budget (--budget) runs short,
   the variant that did worse at the highest concurrency measured so far is dropped and the
   output says so;
5. stops the daemons (always), prints the table and writes
   bench/results/ratio-<UTC>/ (table.md, results.json, perf_analyzer CSVs and logs, daemon logs).

Per run it also reports the CPU the daemon (and its event-loop thread) and perf_analyzer used
and the CPU that *other* processes took meanwhile (machine busy time from /proc/stat minus
ours), as % of one core: on this shared 2-core VM that is the noise gauge.

--pin: daemon on CPU 0, perf_analyzer on CPU 1 (taskset), raw ORT and its probes on CPU 0.
--profile: after the measured runs, holds c=64 against the better variant for ~27 s and records
the daemon with py-spy for 20 s (``--native`` at 50 Hz, blocking; --no-native: Python frames
only, non-blocking) plus per-thread CPU from /proc; prints where the daemon's CPU went.
Needs `.venv/bin/pip install py-spy`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.lib import BENCH, ROOT, perf_analyzer, tables
from bench.lib.daemon import Daemon, running, serve_command
from bench.lib.layers import measure_layers
from bench.lib.raw import Prober, RawResult, measure_raw, on_cpu0
from bench.lib.served import Budget, ServedRuns, plan_runs
from bench.lib.variants import VARIANTS, base, build_repos

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
CONCURRENCY = (1, 8, 32, 64)


@dataclass
class Options:
    """The command line, with what --quick and --pin imply worked out."""

    args: argparse.Namespace
    variants: list[str]
    concurrencies: Sequence[int]
    raw_seconds: float
    probe_seconds: float
    budget: float
    interval: str  # perf_analyzer -p, ms
    x_check: bool
    cpus_daemon: str | None
    cpus_pa: str | None

    @property
    def bases(self) -> list[str]:
        """The daemons (and raw measurements) behind the variants: ``+stream`` shares one."""
        return list(dict.fromkeys(base(v) for v in self.variants))

    @property
    def flag_sets(self) -> list[list[str]]:
        """perf_analyzer's stability flags, and the looser ones for a second try."""
        return [["-p", self.interval, "-s", s, "-r", r] for s, r in (("25", "6"), ("40", "10"))]


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="~1 min: raw 1 s per size, c=1 and 64 only, -p 2000, no -x check",
    )
    add(
        "--variants",
        default="spin,nospin,spin+stream,nospin+stream",
        help="comma-separated, from: " + ", ".join(VARIANTS) + "; NAME+stream: perf_analyzer "
        "--streaming (ModelStreamInfer) against NAME's daemon",
    )
    add("--concurrency", type=int, nargs="+", default=None)
    add("--raw-seconds", type=float, default=None, help="per batch size (default 2, --quick 1)")
    add(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run (default 420, --quick 150)",
    )
    add(
        "--pin",
        action="store_true",
        help="taskset: daemon and raw ORT on CPU 0, perf_analyzer on CPU 1",
    )
    add("--no-x-check", action="store_true", help="skip the -x 1 run")
    add(
        "--no-layers",
        action="store_true",
        help="skip the in-process per-layer latency and c=64 measurement",
    )
    add("--profile", action="store_true", help="py-spy the daemon at c=64 after the measured runs")
    add("--no-native", action="store_true", help="py-spy without --native")
    add("--pa", help="perf_analyzer (default: $PA or the shared setup script)")
    add("--rebuild", action="store_true", help="rewrite the model file")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if base(v) not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)} (+stream)")
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("--pin needs 2 CPUs")
    cpus_daemon, cpus_pa = ("0", "1") if args.pin else (None, None)
    return Options(
        args=args,
        variants=variants,
        concurrencies=args.concurrency or ((1, 64) if args.quick else CONCURRENCY),
        raw_seconds=args.raw_seconds or (1.0 if args.quick else 2.0),
        probe_seconds=0.5 if args.quick else 0.8,
        budget=args.budget or (150.0 if args.quick else 420.0),
        interval="2000" if args.quick else "3000",
        x_check=not (args.no_x_check or args.quick),
        cpus_daemon=cpus_daemon,
        cpus_pa=cpus_pa,
    )


def measure_ceilings(repos: dict[str, Path], opts: Options) -> dict[str, RawResult]:
    """Raw ORT per variant's options (and the daemon's layers in process), printed as they come."""
    raw: dict[str, RawResult] = {}
    with on_cpu0(opts.args.pin):
        for name in opts.bases:
            raw[name] = measure_raw(repos[name], opts.raw_seconds, BATCH_SIZES)
            print(tables.raw_lines({name: raw[name]})[0], flush=True)
        if not opts.args.no_layers:
            for name in opts.bases:
                raw[name].layers = measure_layers(repos[name], min(opts.raw_seconds / 2, 0.8))
            for line in tables.layer_lines(raw, []):
                print(line, flush=True)
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    opts, t0 = parse_args(argv), time.monotonic()
    pa = perf_analyzer.find(opts.args.pa)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = BENCH / "results" / f"ratio-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    repos, data = build_repos(BENCH / ".ratio", opts.bases, opts.args.rebuild)
    run = tables.Outcome(stamp, tables.HostLoad.read())
    print(
        f"ratio benchmark {stamp}: variants {', '.join(opts.variants)}, concurrency "
        f"{', '.join(map(str, opts.concurrencies))}{', pinned' if opts.args.pin else ''}; "
        f"load {run.before.load[0]:.2f}, cpu pressure avg10 {run.before.psi}",
        flush=True,
    )
    run.raw = measure_ceilings(repos, opts)

    prober = Prober(repos, run.raw, opts.probe_seconds, opts.args.pin)
    run.probes = prober.log
    daemons = {
        name: Daemon(
            serve_command(repos[name], "--grace-seconds", "1"),
            out / f"daemon-{name}.log",
            opts.cpus_daemon,
        )
        for name in opts.bases
    }
    with contextlib.ExitStack() as stack:
        stack.callback(prober.close)
        stack.enter_context(running(list(daemons.values())))
        served = ServedRuns(pa, daemons, prober, data, out, opts.flag_sets, opts.cpus_pa)
        reserve = (20 if opts.x_check else 0) + 10
        budget = Budget(opts.budget, t0, reserve, opts.interval, opts.probe_seconds)
        plan = plan_runs(opts.variants, opts.concurrencies)
        run.served = served.run_all(plan, budget, run.notes)
        if opts.x_check:
            run.served.append(served.x_check(opts.bases[0], run.notes))
        if opts.args.profile:
            run.profile = served.profile(run.served, opts.variants, not opts.args.no_native)
    run.after = tables.HostLoad.read()

    given = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python", "-m", "bench.ratio", *given])
    text = tables.report(run, time.monotonic() - t0, command)
    print("\n" + text)
    tables.write(out, run, text)
    print(f"results: {out.relative_to(ROOT)}")
    return 0 if any(r.ok for r in run.served) else 1


if __name__ == "__main__":
    raise SystemExit(main())
