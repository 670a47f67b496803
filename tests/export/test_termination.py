"""SIGTERM stops `ortserve publish` and `ortserve export` the way Ctrl-C does: nothing
half-written is left (no `.staging-*` folder in the model folder, no temporary export folder);
and a staging folder left by a publisher that was killed outright is removed by the next
publish, while a live publisher's is never touched."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.export.conftest import CLI, versions
from tests.export.test_publish_inspect import ENV, ROOT
from tests.factories.onnx_models import IR_VERSION, OPSET, add_model

#: Weights of the large model: enough for its copy into the staging folder to take a moment.
BIG_FLOATS = 64 * 1024 * 1024  # 256 MB


def _big_model(folder: Path) -> Path:
    """y = x + sum(w), with ``w`` 256 MB of zeros in an external data file."""
    folder.mkdir(parents=True)
    weights = numpy_helper.from_array(np.zeros([BIG_FLOATS], dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)  # fmt: skip
    return folder


def _start(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ortserve", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV, cwd=ROOT,
    )  # fmt: skip


def _terminate_when(process: subprocess.Popen[str], seen: Callable[[], bool]) -> tuple[int, str]:
    """SIGTERM ``process`` as soon as ``seen()`` (bounded wait); its exit status and stderr."""
    deadline = time.monotonic() + 120
    while not seen():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"never saw the moment to stop it (exit {process.poll()}): {err}")
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def _staging(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".staging-"))


def test_sigterm_during_publish_leaves_no_staging_folder(tmp_path: Path) -> None:
    model = _big_model(tmp_path / "big")
    repo = tmp_path / "repo"
    process = _start("publish", model, "--name", "big", "--repo", repo)
    code, err = _terminate_when(process, lambda: bool(_staging(repo / "big")))
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert "Traceback" not in err
    assert _staging(repo / "big") == []
    assert versions(repo / "big") == []


def test_sigterm_during_export_leaves_no_temporary_folder(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    repo = tmp_path / "repo"

    def exporting() -> bool:
        return any(p.name.startswith("ortserve-export-") for p in temp.iterdir())

    # The benchmark keeps the run going a few seconds more, in processes of its own.
    process = _start("export", "--model", tiny_models["text-classification"], "--name", "tc",
                     "--repo", repo, "--quantize", "--bench-iterations", "20",
                     "--bench-threads", "1", env={**ENV, "TMPDIR": str(temp)})  # fmt: skip
    code, err = _terminate_when(process, exporting)
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert "Traceback" not in err
    assert not exporting()
    assert versions(repo / "tc") == []
    assert _staging(repo / "tc") == []


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_stale_staging_of_a_dead_publisher_is_removed_live_ones_kept(
    tmp_path: Path, cli: CLI
) -> None:
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    repo = tmp_path / "repo"
    folder = repo / "add"
    folder.mkdir(parents=True)
    dead = folder / f".staging-{_reaped_pid()}-0badc0de"
    (dead / "tokenizer").mkdir(parents=True)
    (dead / "model.onnx").write_bytes(b"half a model")
    (dead / "tokenizer" / "tokenizer.json").write_text("{}")
    live_process = subprocess.Popen(["sleep", "60"])
    live = folder / f".staging-{live_process.pid}-0000beef"
    live.mkdir()
    # A dead pid here, but its lock is held: a publisher in another PID namespace (container).
    locked = folder / f".staging-{_reaped_pid()}-1111beef"
    locked.mkdir()
    fd = os.open(locked, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = cli("publish", model, "--name", "add", "--repo", repo)
    finally:
        os.close(fd)
        live_process.kill()
        live_process.wait()
    assert result.code == 0, result.err
    assert versions(folder) == [1]
    assert not dead.exists()
    assert f"removed {dead}" in result.err.replace("\n", "")
    assert live.is_dir()
    assert locked.is_dir()

    # Their processes gone and their locks free: the next publish removes both.
    result = cli("publish", model, "--name", "add", "--repo", repo)
    assert result.code == 0, result.err
    assert versions(folder) == [1, 2]
    assert _staging(folder) == []
