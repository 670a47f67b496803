"""Logs carry each request's id; one access line per request at debug; model lifecycle metrics."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ortserve_client import Client, NotFoundError
from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, write_model


def test_request_ids_access_lines_and_lifecycle_metrics(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    write_model(repo, "broken", b"no model here")
    daemon = daemon_factory(repo)
    with Client(daemon.address, validate=False) as client:  # let the bad request reach the server
        client.infer("add", {"x": np.zeros((1, 4), np.float32)}, request_id="req-abc")
        with pytest.raises(NotFoundError):
            client.infer(
                "add", {"x": np.zeros((1, 4), np.float32)}, request_id="req-bad", version="9"
            )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # log lines are written as they happen; look until seen
        records = daemon.log_records()
        if sum(r.get("event") == "access" and r.get("rpc") == "ModelInfer" for r in records) >= 2:
            break
        time.sleep(0.05)
    access = [r for r in records if r.get("event") == "access" and r.get("rpc") == "ModelInfer"]
    by_id = {r["request_id"]: r for r in access}
    assert by_id["req-abc"]["code"] == "OK"
    assert by_id["req-abc"]["model"] == "add"
    assert by_id["req-bad"]["code"] == "NOT_FOUND"
    refused = [r for r in records if r.get("event") == "request refused"]
    assert any(r.get("request_id") == "req-bad" for r in refused)
    # Calls without an id get one, so that their lines can still be told apart.
    others = [r for r in records if r.get("event") == "access" and r.get("rpc") == "ServerReady"]
    assert others
    assert all(len(r["request_id"]) == 16 for r in others)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10
    ) as reply:
        text = reply.read().decode()
    assert 'ortserve_model_loads_total{model="add",result="success"} 1.0' in text
    assert 'ortserve_model_loads_total{model="broken",result="failure"} 1.0' in text
    assert 'ortserve_model_ready{model="add"} 1.0' in text


def test_status_command_prints_index_and_statistics(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    import subprocess
    import sys

    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    write_model(repo, "broken", b"no model here")
    daemon = daemon_factory(repo)
    with Client(daemon.address) as client:
        client.infer("add", {"x": np.zeros((3, 4), np.float32)})
    out = subprocess.run(
        [sys.executable, "-m", "ortserve", "status", "--target", daemon.address],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert f"at {daemon.address}: ready" in out
    lines = out.splitlines()
    assert any(line.split()[:3] == ["add", "1", "READY"] for line in lines)
    assert any(line.split()[:3] == ["broken", "1", "UNAVAILABLE"] for line in lines)
    stats = next(line.split() for line in lines if line.startswith("add ") and "READY" not in line)
    assert stats[2] == "3"  # inferences (rows)
    bad = subprocess.run([sys.executable, "-m", "ortserve", "status", "--target", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1
    assert "UNAVAILABLE" in bad.stderr
