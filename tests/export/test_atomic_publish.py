"""Publishing while a real daemon watches the repository: no version folder is ever seen
half-written, the daemon never reports a broken version, and it serves what was published."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tg
from tokenizers import Tokenizer

from tests.conftest import DaemonFactory
from tests.export.conftest import CLI, versions
from tests.integration.test_hot_reload import wait_for


class Watcher(threading.Thread):
    """Lists the model folder as fast as it can; any visible version must be complete."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(daemon=True)
        self.model_dir = model_dir
        self.stop = threading.Event()
        self.partial: list[str] = []
        self.looks = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                entries = list(os.scandir(self.model_dir))
            except FileNotFoundError:
                continue
            self.looks += 1
            for entry in entries:
                if entry.name.isdigit():
                    names = set(os.listdir(entry.path))
                    if not {"model.onnx", "manifest.json", "tokenizer.json"} <= names:
                        self.partial.append(f"{entry.name}: {sorted(names)}")


def test_watching_daemon_never_sees_a_partial_version(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path], daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    (repo / "tc").mkdir(parents=True)
    # No settle time: a folder that appeared before its files were complete would be loaded
    # (and fail) at once.
    daemon = daemon_factory(repo, "--settle-seconds", "0")
    watcher = Watcher(repo / "tc")
    watcher.start()
    try:
        for _ in range(2):
            result = cli("export", "--model", tiny_models["text-classification"], "--name", "tc",
                         "--repo", repo, "--no-bench", "--quantize")  # fmt: skip
            assert result.code == 0, result.err
    finally:
        watcher.stop.set()
        watcher.join(5)
    assert watcher.looks > 10
    assert watcher.partial == []
    assert versions(repo / "tc") == [1, 2, 3, 4]

    with tg.InferenceServerClient(daemon.address) as client:
        wait_for(lambda: _serving(client) == ["4"], "version 4 served")
        rows = client.get_model_repository_index(as_json=True)["models"]
        assert all(r.get("state") != "UNAVAILABLE" for r in rows), rows
        config = client.get_model_config("tc", as_json=True)["config"]
        assert config["parameters"]["task"]["string_value"] == "text-classification"
        assert int(config["max_batch_size"]) == 32

        version = repo / "tc" / "4"
        encoding = Tokenizer.from_file(str(version / "tokenizer.json")).encode("Hello world")
        feeds = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        inputs = []
        for name, array in feeds.items():
            tensor = tg.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = client.infer("tc", inputs).as_numpy("logits")
    local = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = local.run(["logits"], feeds)[0]
    assert served.shape == (1, 3)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    failures = [r for r in daemon.log_records() if r.get("event") == "version failed to load"]
    assert failures == []


def _serving(client: tg.InferenceServerClient) -> list[str]:
    try:
        return list(client.get_model_metadata("tc", as_json=True)["versions"])
    except Exception:
        return []
