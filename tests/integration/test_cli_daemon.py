"""The command line around a real daemon: `ortserve status` into a closed pipe, the metrics port
of a daemon started on a free gRPC port, and a gRPC port another socket holds."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import START_TIMEOUT_S, Daemon, DaemonFactory, _read_ports
from tests.factories.onnx_models import add_model, write_model


def _repo(root: Path) -> Path:
    write_model(root / "repo", "add", add_model())
    return root / "repo"


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ortserve ARGS`` with stdout a pipe whose reader has already gone, as
    ``ortserve ARGS | head`` is once head has read its lines."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ortserve", *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_status_into_a_closed_pipe_exits_quietly(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon = daemon_factory(_repo(tmp_path))
    done = _into_closed_pipe("status", "--target", daemon.address)
    assert done.returncode == 1
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"


@pytest.fixture
def serve_processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_grpc_port_0_takes_a_free_metrics_port_too(
    tmp_path: Path, serve_processes: list[subprocess.Popen[bytes]]
) -> None:
    """Two daemons on --grpc-port 0 without --metrics-port both start: neither takes 8002."""
    repo = _repo(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    ports = []
    for n in range(2):
        log_path = tmp_path / f"daemon-{n}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo),
                 "--host", "127.0.0.1", "--grpc-port", "0", "--log-format", "json"],
                stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        serve_processes.append(process)
        ports.append(_read_ports(log_path, process, time.monotonic() + START_TIMEOUT_S))
    (grpc_a, metrics_a), (grpc_b, metrics_b) = ports
    assert isinstance(metrics_a, int)
    assert isinstance(metrics_b, int)
    assert len({grpc_a, grpc_b, metrics_a, metrics_b, 8002}) == 5
    for metrics_port in (metrics_a, metrics_b):
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"ortserve_" in response.read()
    assert all(process.poll() is None for process in serve_processes)


def test_a_taken_grpc_port_gives_the_daemons_message_only(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo),
             "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2
    # gRPC core's own line: "E1203 00:03:48.285716 10469 add_port.cc:83] Failed to add port"
    assert "add_port.cc" not in output
    assert not re.search(r"^[EWI]\d{4} ", output, re.MULTILINE)
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "cannot listen" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Address already in use" in lines[0]


def test_a_taken_metrics_port_names_the_address(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    daemon: Daemon = daemon_factory(_repo(tmp_path))  # holds its own metrics port
    assert daemon.metrics_port
    done = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(tmp_path / "repo"),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", str(daemon.metrics_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot serve metrics" in done.stderr
    assert f"127.0.0.1:{daemon.metrics_port}" in done.stderr
    assert "Address already in use" in done.stderr
