"""Warm-up is bounded, through the real daemon: ``input_data_file`` is read only from the version's
``warmup/`` folder and only as a regular file of the size its shape needs, every warm-up sample
(explicit or the implicit row of zeros) holds at most 64 MiB, and the runs are counted. A refused
model is UNAVAILABLE with a reason naming what was refused; the daemon's peak RSS stays small."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper

from ortserve_client import Client, InferenceServerError
from tests.conftest import Daemon, DaemonFactory
from tests.factories.onnx_models import IR_VERSION, OPSET, add_model, write_model

#: The daemon's peak resident memory (VmHWM) must stay under this while it refuses the models
#: below (measured 100-170 MiB with the fix; the old code reached 1.7-3.4 GB).
RSS_LIMIT_BYTES = 1 << 30
X = np.ones((1, 4), np.float32)


def _warmup(
    data: str, dims: str = "4", batch_size: int = 1, count: int = 1, max_batch_size: int = 1
) -> str:
    """A config for ``add_model()`` (x FP32 [batch, 4]) with one model_warmup entry."""
    return (
        f"max_batch_size: {max_batch_size}\n"
        f'model_warmup [ {{ name: "w" batch_size: {batch_size} count: {count}\n'
        f'  inputs {{ key: "x" value: {{ data_type: TYPE_FP32 dims: [ {dims} ] {data} }} }} }} ]\n'
    )


def _file(name: str) -> str:
    return _warmup(f"input_data_file: {json.dumps(name)}")


def _reasons(daemon: Daemon) -> dict[str, tuple[str, str]]:
    """model -> (state, reason) of its version-1 row (or its model row)."""
    with Client(daemon.address, timeout=30) as client:
        rows = client.repository_index()
    return {row.name: (row.state, row.reason) for row in rows if row.version in ("1", "")}


def _peak_rss(daemon: Daemon) -> int:
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _stops_on_one_sigterm(daemon: Daemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    try:
        daemon.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon did not stop on one SIGTERM within 30 s")


def _fixed_identity(width: int) -> bytes:
    """An 81-byte kind of model: Identity over a fixed [1, width] FP32 input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    return model.SerializeToString()


def test_warmup_files_are_read_from_the_warmup_folder_only(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    good = write_model(repo, "good", add_model(), config=_file("x.bin"))
    (good / "warmup").mkdir()
    (good / "warmup" / "x.bin").write_bytes(X.tobytes())
    short = write_model(repo, "short", add_model(), config=_file("x.bin"))
    (short / "warmup").mkdir()
    (short / "warmup" / "x.bin").write_bytes(X.tobytes()[:15])
    write_model(repo, "passwd", add_model(), config=_file("/etc/passwd"))
    write_model(repo, "zero", add_model(), config=_file("/dev/zero"))
    write_model(repo, "dotdot", add_model(), config=_file("../../../../../../etc/passwd"))
    # Links inside the repository (the daemon's links rule allows them) but out of warmup/.
    linked = write_model(repo, "linked", add_model(), config=_file("x.bin"))
    (linked / "warmup").mkdir()
    (linked / "warmup" / "x.bin").symlink_to("../model.onnx")
    linked_dir = write_model(repo, "linked_dir", add_model(), config=_file("config.pbtxt"))
    (linked_dir / "warmup").symlink_to("..")
    # Links out of the repository: refused by either rule, and nothing behind them read.
    for name, target in [("etc", "/etc/passwd"), ("device", "/dev/zero")]:
        folder = write_model(repo, name, add_model(), config=_file("x.bin"))
        (folder / "warmup").mkdir()
        (folder / "warmup" / "x.bin").symlink_to(target)
    daemon = daemon_factory(repo)

    peak = _peak_rss(daemon)
    assert peak < RSS_LIMIT_BYTES, f"peak RSS {peak >> 20} MiB"
    rows = _reasons(daemon)
    relative = "must be a file name relative to the version's warmup/ folder, without '..'"
    outside = "leads outside the version's warmup/ folder"
    for model, says in [
        ("passwd", relative),
        ("zero", relative),
        ("dotdot", relative),
        ("linked", outside),
        ("linked_dir", outside),
        ("etc", ""),
        ("device", ""),
    ]:
        state, reason = rows[model]
        # Nothing outside was read, not even its size.
        assert " bytes" not in reason, (model, reason)
        assert state == "UNAVAILABLE", (model, reason)
        if says:
            assert "model_warmup[0] 'w' input 'x': input_data_file" in reason, (model, reason)
            assert says in reason, (model, reason)
    assert rows["good"][0] == "READY"
    with Client(daemon.address, timeout=30) as client:
        np.testing.assert_array_equal(client.infer("good", {"x": X})["y"], X + 1)
    assert rows["short"] == (
        "UNAVAILABLE",
        f"{repo}/short/config.pbtxt: model_warmup[0] 'w' input 'x': input_data_file 'x.bin' "
        "holds 15 bytes, not the 16 its shape needs",
    )


def test_a_fifo_or_endless_warmup_neither_hangs_the_load_nor_the_shutdown(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    fifo = write_model(repo, "fifo", add_model(), config=_file("x.bin"))
    (fifo / "warmup").mkdir()
    os.mkfifo(fifo / "warmup" / "x.bin")  # opening it for reading waits for a writer
    folder = write_model(repo, "folder", add_model(), config=_file("x.bin"))
    (folder / "warmup" / "x.bin").mkdir(parents=True)
    write_model(repo, "endless", add_model(), config=_warmup("zero_data: true", count=2**31 - 1))
    write_model(repo, "plain", add_model())
    daemon = daemon_factory(repo)  # ready: the loads ended

    rows = _reasons(daemon)
    assert rows["plain"][0] == "READY"
    assert rows["fifo"] == (
        "UNAVAILABLE",
        f"{repo}/fifo/config.pbtxt: model_warmup[0] 'w' input 'x': input_data_file 'x.bin' is "
        "a FIFO; only a regular file is read",
    )
    assert rows["folder"][0] == "UNAVAILABLE"
    assert rows["folder"][1].endswith(
        "input_data_file 'x.bin' is a folder; only a regular file is read"
    )
    assert rows["endless"] == (
        "UNAVAILABLE",
        f"{repo}/endless/config.pbtxt: model_warmup asks for 2147483647 runs (count summed over "
        "the entries), more than the warm-up limit of 1000",
    )
    _stops_on_one_sigterm(daemon)


def test_warmup_tensors_are_capped_at_64_mib(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    # 81 bytes of model declaring a 3 GB input: the implicit warm-up would allocate it.
    write_model(repo, "fixed", _fixed_identity(750_000_000))
    no_batching = _warmup("zero_data: true", dims="50000000, 4", max_batch_size=0)
    write_model(repo, "zeros", add_model(), config=no_batching)
    write_model(
        repo,
        "random",
        add_model(),
        config=_warmup("random_data: true", dims="25000000, 4", max_batch_size=0),
    )
    rows_20m = _warmup("zero_data: true", batch_size=20_000_000, max_batch_size=20_000_000)
    write_model(repo, "batch", add_model(), config=rows_20m)
    # Just under the limit: still warmed up and served.
    write_model(repo, "near", _fixed_identity(16_000_000))
    daemon = daemon_factory(repo)

    peak = _peak_rss(daemon)
    assert peak < RSS_LIMIT_BYTES, f"peak RSS {peak >> 20} MiB"
    rows = _reasons(daemon)
    assert rows["near"][0] == "READY"
    limit = "more than the warm-up limit of 67108864 bytes (64 MiB) per sample"
    assert rows["fixed"] == (
        "UNAVAILABLE",
        f"{repo}/fixed/1: the warm-up (one row of zeros) input 'x' of shape [1, 750000000] FP32 "
        f"needs 3000000000 bytes, {limit}; no request to this model can be smaller, so it is not "
        "served",
    )
    for model, shape, size in [
        ("zeros", "[50000000, 4]", 800_000_000),
        ("random", "[25000000, 4]", 400_000_000),
        ("batch", "[20000000, 4]", 320_000_000),
    ]:
        assert rows[model] == (
            "UNAVAILABLE",
            f"{repo}/{model}/config.pbtxt: model_warmup[0] 'w' input 'x' of shape {shape} FP32 "
            f"needs {size} bytes, {limit}",
        )


def test_a_remote_config_is_held_to_the_same_rules(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    version = write_model(repo, "remote", add_model())
    (version / "warmup").mkdir()
    (version / "warmup" / "x.bin").write_bytes(X.tobytes())
    daemon = daemon_factory(repo, "--model-control-mode", "explicit")

    def config(data: str, dims: list[int] | None = None) -> dict[str, object]:
        spec = {"data_type": "TYPE_FP32", "dims": dims or [4], **json.loads(data)}
        warm = {"name": "w", "batch_size": 1, "inputs": {"x": spec}}
        return {"max_batch_size": 1, "model_warmup": [warm]}

    passwd_size = os.stat("/etc/passwd").st_size
    refused = [
        (config('{"input_data_file": "/etc/passwd"}'), "relative to the version's warmup/ folder"),
        (config('{"input_data_file": "../../remote/1/model.onnx"}'), "without '..'"),
        (config('{"input_data_file": "/dev/zero"}'), "relative to the version's warmup/ folder"),
        (config('{"zero_data": true}', [1 << 40]), "more than the warm-up limit of 67108864"),
    ]
    with Client(daemon.address, timeout=60, retries=0) as client:
        for body, says in refused:
            with pytest.raises(InferenceServerError) as info:
                client.load_model("remote", config=body)
            assert info.value.code != grpc.StatusCode.OK
            assert f"{passwd_size} bytes" not in info.value.message  # nothing outside read
            assert says in info.value.message, info.value.message
            (row,) = [
                r for r in client.repository_index() if r.name == "remote" and r.version == "1"
            ]
            assert row.state == "UNAVAILABLE"
            assert says in row.reason
        # The same file, named the allowed way, loads.
        client.load_model("remote", config=config('{"input_data_file": "x.bin"}'))
        np.testing.assert_array_equal(client.infer("remote", {"x": X})["y"], X + 1)
    peak = _peak_rss(daemon)
    assert peak < RSS_LIMIT_BYTES, f"peak RSS {peak >> 20} MiB"
