"""Triton's perf_analyzer ``-i http`` runs unchanged against the daemon's HTTP front.

A smoke run, not a benchmark: a fixed request count against a tiny batched model, with Triton's
binary tensor extension (perf_analyzer's default) and with plain JSON tensors; the daemon must
count exactly the requests perf_analyzer reports. perf_analyzer comes from
scripts/perf-analyzer-setup.sh (it prints the path of its wrapper); the test is skipped
only when that script cannot install it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as tg

from tests.conftest import Daemon, start_daemon
from tests.factories.onnx_models import add_model, write_model

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "perf-analyzer-setup.sh"
MODEL = "batched"
REQUESTS = 200


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    """The wrapper's path; a skip when the setup script cannot install perf_analyzer here."""
    if not SETUP.is_file():
        pytest.skip(f"no {SETUP}")
    try:
        done = subprocess.run(
            ["bash", str(SETUP)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("perf-analyzer-setup.sh did not finish within 600 s")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(f"perf_analyzer not installable: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("pa_http")
    write_model(
        root / "repo",
        MODEL,
        add_model(offset=10.0),
        config="max_batch_size: 8\ndynamic_batching { }\n",
    )
    started = start_daemon(root / "repo", root / "daemon.log", "--http-port", "0")
    yield started
    started.stop()


def successes(daemon: Daemon) -> int:
    """The requests the daemon has answered for MODEL (its statistics, read over gRPC)."""
    with tg.InferenceServerClient(daemon.address) as client:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))  # JSON omits a zero


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_perf_analyzer_http_completes_and_the_daemon_counts_every_request(
    perf_analyzer: str, daemon: Daemon, tensor_format: str, tmp_path: Path
) -> None:
    assert daemon.http_port, f"no http_port on the listening line; see {daemon.log_path}"
    before = successes(daemon)
    csv_path = tmp_path / "pa.csv"
    cmd = [
        "timeout", "-k", "5", "90",
        perf_analyzer, "-i", "http", "-u", f"127.0.0.1:{daemon.http_port}", "-m", MODEL,
        "-b", "1", "--concurrency-range", "4:4",
        "--request-count", str(REQUESTS), "-p", "1000",
        "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format,
        "-f", str(csv_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert csv_path.is_file(), output
    reported = re.findall(r"Request count: (\d+)", output)
    assert reported, output
    # --request-count sends exactly that many: perf_analyzer and the daemon's statistics
    # (read over gRPC: one registry behind both fronts) agree, none lost or failed.
    assert int(reported[-1]) == REQUESTS, output
    assert successes(daemon) - before == REQUESTS, output
