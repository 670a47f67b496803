"""Text generation with continuous batching: one stream at a time vs 16 concurrent, in process
and served.

    .venv/bin/python -m bench.generation [--requests 32] [--streams 16] [--new-tokens 64]
                                         [--rounds 3] [--budget 180] [--wait-quiet 0]
                                         [--rebuild]

A distilgpt2-sized random GPT-2 (6 layers, 768 wide, vocabulary 50257; ``bench.lib.gpt2bench``,
built once into ``bench/.generation/`` and exported with ``ortserve export --task
text-generation``) answers ``--requests`` prompts of 8-64 tokens (fixed seed), each asking for
``--new-tokens`` tokens, greedy, ignore_eos (so every request makes them all). Two targets: the
``GenerationEngine`` in this process (loaded from the same config as the daemon loads it, same
session options, same loop tuning, uvloop), and one daemon on 127.0.0.1 with the same repository,
driven by the client's ``AsyncClient.generate_stream``. Each round runs 1 stream at a time, then
``--streams`` at once (a closed loop: a stream takes the next prompt when its previous one ends),
each concurrency on both targets in turn, every run bounded by ``--budget`` seconds.

Reported per run: aggregate tokens/s, ms/token (wall / tokens), time to first token p50/p99,
inter-token latency p50/p99 (gaps between the streamed pieces of one request), the rows the
engine decoded (sampled), CPU shares; then, from each cell's best round, the N-vs-1 ratio and the
daemon's cost per token (served vs in process: the ms/token difference and ratio). Written to
``bench/results/generation-<UTC>/`` (table.md, results.json, daemon.log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import BENCH
from bench.lib.daemon import Daemon, serving
from bench.lib.gpt2bench import NAME, build, prompts
from bench.lib.procstat import cpu_pressure, machine_busy
from bench.lib.streams import Probe, Run, Stream, measure


@dataclass
class Target:
    """One way to run a request (``stream``), what watches it, and whether its token counts
    are known per request rather than counted (``fixed_tokens``)."""

    mode: str
    stream: Stream
    probe: Probe
    fixed_tokens: int | None = None


# --- in process ---------------------------------------------------------------------------------


def _serving_tuning() -> None:
    """What the daemon does before its first request (ortserve.app), so the loop is the same."""
    from ortserve.app import SWITCH_INTERVAL_S

    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(10_000, 20, 20)


def load_engine(repo: Path) -> Any:
    """The version as the daemon loads it (registry.versions._load_generation, less warm-up)."""
    from ortserve.generation.engine import GenerationEngine
    from ortserve.generation.model import GenerationModel
    from ortserve.generation.types import EngineLimits
    from ortserve.repository.config import ParsedConfig, complete_config, read_config
    from ortserve.signature import Signature
    from ortserve_client.proto import model_config_pb2 as mc

    parsed = read_config(repo / NAME)
    bare = mc.ModelConfig()
    bare.CopyFrom(parsed.config)
    del bare.input[:]
    del bare.output[:]
    config = complete_config(
        ParsedConfig(bare, parsed.source, parsed.max_batch_size_given), NAME, Signature((), ()), 0
    )
    model = GenerationModel.load(repo / NAME / "1", config, parsed.source)
    return GenerationEngine(model, EngineLimits.from_config(config, parsed.source))


@contextlib.asynccontextmanager
async def in_process(
    repo: Path, new_tokens: int, texts: list[str], lengths: list[int]
) -> AsyncIterator[Target]:
    """The engine in this process, driven directly (warmed up); ``lengths`` gets the token
    counts of ``texts`` as the engine counts them."""
    from ortserve.generation.types import SamplingParams

    engine = load_engine(repo)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    async def stream(text: str) -> AsyncIterator[int]:
        async for delta in engine.generate(text, params):
            if delta.token_ids:
                yield len(delta.token_ids)

    async def rows() -> int:
        return int(engine.running)

    lengths.extend(engine.encode_length(t) for t in texts)
    engine.start()
    try:
        async for _ in stream("warm up the session"):
            pass
        yield Target("in-process", stream, Probe(os.getpid(), rows, 0.1))
    finally:
        await engine.aclose()


# --- served -------------------------------------------------------------------------------------


def _running_rows(metrics_url: str) -> int:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    series = re.escape(f'ortserve_running_sequences{{model="{NAME}"}} ')
    match = re.search(f"^{series}(\\S+)", text, re.M)
    return int(float(match.group(1))) if match else 0


@contextlib.asynccontextmanager
async def served(daemon: Daemon, new_tokens: int, budget: float) -> AsyncIterator[Target]:
    """The daemon through ``AsyncClient.generate_stream``: one piece per streamed response;
    every request makes ``new_tokens`` tokens (greedy, ignore_eos: checked on the warm-up)."""
    from ortserve_client import AsyncClient

    sampling: dict[str, Any] = {"max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True}
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"

    async def rows() -> int:  # scraped rarely: the daemon renders the metrics on its own thread
        return await asyncio.to_thread(_running_rows, url)

    async with AsyncClient(daemon.address, timeout=budget, validate=False) as client:
        warm = await client.generate(NAME, "warm up the session", **sampling)
        if warm.output_tokens != new_tokens:
            raise RuntimeError(f"the daemon made {warm.output_tokens} tokens, not {new_tokens}")

        async def stream(text: str) -> AsyncIterator[int]:
            async for _ in client.generate_stream(NAME, text, **sampling):
                yield 1

        yield Target("served", stream, Probe(daemon.pid, rows, 0.5), new_tokens)


async def rounds(
    targets: list[Target], texts: list[str], args: argparse.Namespace, waited: list[float]
) -> list[Run]:
    """``args.rounds`` rounds, each after up to ``args.wait_quiet`` s of waiting for a quiet
    machine (the seconds waited go to ``waited``); in each, every concurrency, and at each the
    targets in turn (so that the host's drift falls on both alike)."""
    _serving_tuning()
    runs = []
    concurrency, budget = [1, args.streams], args.budget
    for rnd in range(1, args.rounds + 1):
        waited.append(await asyncio.to_thread(wait_quiet, args.wait_quiet))
        for streams in concurrency:
            for target in targets:
                run = await measure(
                    target.mode, streams, rnd, texts, target.stream, target.probe, budget
                )
                if target.fixed_tokens is not None:
                    run.count_tokens(target.fixed_tokens)
                runs.append(run)
                print(
                    f"  round {rnd} {target.mode} x{streams}: {run.tokens_per_s:.0f} tokens/s, "
                    f"TTFT p50 {run.ttft_p50_ms:.0f} ms, ITL p50 {run.itl_p50_ms:.1f} ms, "
                    f"rows {run.mean_rows:.1f}, CPU {run.cpu}",
                    flush=True,
                )
    return runs


# --- report -------------------------------------------------------------------------------------


def table(runs: list[Run]) -> list[str]:
    """Every run, in the order it ran."""
    lines = [
        "| round | mode | streams | tokens/s | ms/token | TTFT p50 / p99 ms | ITL p50 / p99 ms "
        "| pieces / tokens | mean rows | CPU % engine proc. (loop) | CPU % client / other |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r.cpu
        lines.append(
            f"| {r.round} | {r.mode} | {r.streams} | {r.tokens_per_s:.0f} | "
            f"{r.ms_per_token:.2f} | {r.ttft_p50_ms:.0f} / {r.ttft_p99_ms:.0f} | "
            f"{r.itl_p50_ms:.1f} / {r.itl_p99_ms:.1f} | {r.pieces} / {r.tokens} | "
            f"{r.mean_rows:.1f} | {c.get('engine')} ({c.get('loop')}) | "
            f"{c.get('driver', '-')} / {c.get('other')} |"
        )
    return lines


def _cells(runs: list[Run]) -> dict[tuple[int, str, int], Run]:
    return {(r.round, r.mode, r.streams): r for r in runs}


def noise(runs: list[Run], rnd: int) -> float:
    """The most CPU other processes took during any run of round ``rnd`` (% of one core)."""
    return max(r.cpu.get("other", 0.0) for r in runs if r.round == rnd)


def ratios(runs: list[Run], streams: int) -> list[str]:
    """Per round (runs taken minutes apart on a shared host are compared only within a round):
    N streams vs 1 for each mode, and the daemon's cost per token at each concurrency."""
    cell = _cells(runs)
    lines = [
        f"| round | other CPU % (max) | in process: {streams} vs 1 | served: {streams} vs 1 "
        "| streams | daemon ms/token (served - in process) | served / in process "
        "| ITL p50 served - in process ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rnd in sorted({r.round for r in runs}):
        scale = [
            cell[(rnd, mode, streams)].tokens_per_s / cell[(rnd, mode, 1)].tokens_per_s
            for mode in ("in-process", "served")
        ]
        for n in (1, streams):
            inp, srv = cell[(rnd, "in-process", n)], cell[(rnd, "served", n)]
            first = n == 1
            lines.append(
                f"| {rnd if first else ''} | {noise(runs, rnd) if first else ''} | "
                f"{f'{scale[0]:.2f}x' if first else ''} | {f'{scale[1]:.2f}x' if first else ''} | "
                f"{n} | {srv.ms_per_token - inp.ms_per_token:+.2f} | "
                f"{srv.ms_per_token / inp.ms_per_token:.2f}x | "
                f"{srv.itl_p50_ms - inp.itl_p50_ms:+.2f} |"
            )
    return lines


def verdict(runs: list[Run], streams: int) -> str:
    """The target, judged on the quietest round (least CPU taken by other processes)."""
    cell = _cells(runs)
    rnd = min({r.round for r in runs}, key=lambda n: noise(runs, n))
    parts = []
    for mode in ("in-process", "served"):
        ratio = cell[(rnd, mode, streams)].tokens_per_s / cell[(rnd, mode, 1)].tokens_per_s
        parts.append(f"{mode} {ratio:.2f}x ({'met' if ratio >= 3 else 'NOT met'})")
    return (
        f"tokens/s at {streams} streams / 1 stream (target >= 3x), quietest round ({rnd}, other "
        f"CPU <= {noise(runs, rnd):.0f}%): " + "; ".join(parts)
    )


def loop_runner() -> asyncio.Runner:
    """uvloop where installed, as the daemon's default ``--event-loop auto``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def both(
    repo: Path,
    daemon: Daemon,
    texts: list[str],
    args: argparse.Namespace,
    found: dict[str, list[Any]],
) -> list[Run]:
    async with (
        in_process(repo, args.new_tokens, texts, found["lengths"]) as local,
        served(daemon, args.new_tokens, args.budget) as remote,
    ):
        return await rounds([local, remote], texts, args, found["waited"])


def wait_quiet(limit: float, busy: float = 30.0) -> float:
    """Wait up to ``limit`` s for 5 s in which the machine is under ``busy`` % of one core
    busy (other jobs' tests share it); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:  # limit 0: no wait
        before = machine_busy()
        time.sleep(5)
        if (machine_busy() - before) / 5 * 100 < busy:
            break
    return time.monotonic() - started


def run_all(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    repo, how = build(args.rebuild)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repo / NAME / "1" / "tokenizer.json"))
    texts = prompts(tokenizer, args.requests)
    found: dict[str, list[Any]] = {"lengths": [], "waited": []}
    before = (os.getloadavg(), cpu_pressure())
    started = time.time()
    with (
        serving(repo, out / "daemon.log", metrics_port=0) as daemon,
        loop_runner() as runner,
    ):
        runs = runner.run(both(repo, daemon, texts, args, found))
    lengths = found["lengths"]
    return {
        "export": how,
        "requests": args.requests,
        "streams": args.streams,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "prompt_tokens": {
            "min": min(lengths),
            "max": max(lengths),
            "mean": float(np.mean(lengths)),
        },
        "load_before": before,
        "load_after": (os.getloadavg(), cpu_pressure()),
        "seconds": time.time() - started,
        "waited_for_quiet_s": found["waited"],
        "runs": [asdict(r) for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds per run at most")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait up to this long for 5 s with the machine under 30%% of a "
        "core busy (default: no wait)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild bench/.generation/")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = BENCH / "results" / f"generation-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    result = run_all(args, out)
    runs = [Run(**r) for r in result["runs"]]
    p = result["prompt_tokens"]
    header = (
        f"{result['requests']} requests, prompts {p['min']}-{p['max']} tokens (mean "
        f"{p['mean']:.0f}), {result['new_tokens']} new tokens each, greedy, {args.rounds} "
        f"rounds; model exported by {result['export']}; load average "
        f"{result['load_before'][0][0]:.2f} -> {result['load_after'][0][0]:.2f}; "
        f"{result['seconds']:.0f} s"
    )
    lines = [header, "", *table(runs), "", *ratios(runs, args.streams), ""]
    lines.append(verdict(runs, args.streams))
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
