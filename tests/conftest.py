"""Shared fixtures: start the real daemon on 127.0.0.1:0 and talk to it over real gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

START_TIMEOUT_S = 60.0


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log_path: Path
    http_port: int | None = None  # None: started with --no-http

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        assert self.http_port is not None, "this daemon has no HTTP front (--no-http)"
        return f"http://127.0.0.1:{self.http_port}"

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _read_ports(
    log_path: Path, process: subprocess.Popen[bytes], deadline: float
) -> tuple[int, int | None]:
    record = _read_listening(log_path, process, deadline)
    return int(record["grpc_port"]), record.get("metrics_port")


def _read_listening(
    log_path: Path, process: subprocess.Popen[bytes], deadline: float
) -> dict[str, Any]:
    """The daemon's 'listening' log record (its bound ports), once it is written."""
    while time.monotonic() < deadline:
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    record: dict[str, Any] = json.loads(line)
                    return record
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"daemon did not listen within {START_TIMEOUT_S}s:\n{log_path.read_text()}")


def _wait_ready(address: str, deadline: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"daemon at {address} not ready within {START_TIMEOUT_S}s")


def start_daemon(
    repo: Path, log_path: Path, *extra: str, wait_ready: bool = True, cwd: Path | None = None
) -> Daemon:
    """``repo`` may be relative to ``cwd``, as scripts/serve.sh passes `model_repo`."""
    cmd = [
        sys.executable, "-m", "ortserve", "serve",
        "--model-repository", str(repo),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
        "--log-format", "json", "--log-level", "debug",
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        record = _read_listening(log_path, process, deadline)
        daemon = Daemon(
            process,
            int(record["grpc_port"]),
            record.get("metrics_port"),
            log_path,
            record.get("http_port"),
        )
        if wait_ready:
            _wait_ready(daemon.address, deadline)
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    return daemon


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    started: list[Daemon] = []

    def factory(
        repo: Path, *extra: str, wait_ready: bool = True, cwd: Path | None = None
    ) -> Daemon:
        log_path = tmp_path / f"daemon-{len(started)}.log"
        daemon = start_daemon(repo, log_path, *extra, wait_ready=wait_ready, cwd=cwd)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.stop()
