"""Repository behaviour through the real daemon: version policy, file names, instances, providers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, slow_load_config, slow_model, write_model


def _add_input(rows: int = 1) -> list[tg.InferInput]:
    tensor = tg.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, 4), dtype=np.float32))
    return [tensor]


def _served_offset(client: tg.InferenceServerClient, model: str, version: str = "") -> float:
    result = client.infer(model, _add_input(), model_version=version)
    return float(result.as_numpy("y")[0, 0])


def _versions(repo: Path, name: str, versions: list[int], config: str | None) -> None:
    for v in versions:
        write_model(repo, name, add_model(offset=float(v)), version=v, config=config)


def test_version_policies(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    _versions(repo, "latest1", [1, 2, 3], None)
    _versions(repo, "latest2", [1, 2, 3], "version_policy: { latest: { num_versions: 2 } }\n")
    _versions(repo, "every", [1, 2, 3], "version_policy: { all: {} }\n")
    _versions(repo, "picked", [1, 2, 3], "version_policy: { specific: { versions: [1, 3] } }\n")
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert client.get_model_metadata("latest1", as_json=True)["versions"] == ["3"]
        assert client.get_model_metadata("latest2", as_json=True)["versions"] == ["2", "3"]
        assert client.get_model_metadata("every", as_json=True)["versions"] == ["1", "2", "3"]
        assert client.get_model_metadata("picked", as_json=True)["versions"] == ["1", "3"]
        # A request without a version runs on the newest served one; a pinned one on its own.
        assert _served_offset(client, "latest2") == 3.0
        assert _served_offset(client, "every", "1") == 1.0
        assert _served_offset(client, "picked", "1") == 1.0
        with pytest.raises(InferenceServerException, match="version 2 is not served"):
            client.infer("picked", _add_input(), model_version="2")
        result = client.infer("every", _add_input(), model_version="2")
        assert result.get_response().model_version == "2"


def test_default_model_filename_and_ignored_folders(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "named",
        add_model(),
        filename="net.onnx",
        config='default_model_filename: "net.onnx"\n',
    )
    write_model(repo, ".hidden", add_model())
    write_model(repo, "tmpcopy.partial", add_model())
    write_model(repo, "bad name", add_model())
    (repo / "named" / "notes").mkdir()  # a non-numeric folder is not a version
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert _served_offset(client, "named") == 1.0
        rows = {r["name"]: r for r in client.get_model_repository_index(as_json=True)["models"]}
    assert set(rows) == {"named", "bad name"}
    assert rows["bad name"]["state"] == "UNAVAILABLE"
    assert "invalid model name" in rows["bad name"]["reason"]


def test_instances_options_and_providers(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "two",
        add_model(),
        config="""
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }
""",
    )
    write_model(repo, "gpu", add_model(), config="instance_group [ { kind: KIND_GPU } ]\n")
    write_model(
        repo,
        "gpu_fallback",
        add_model(),
        config="""instance_group [ { kind: KIND_GPU } ]
parameters { key: "allow_provider_fallback" value: { string_value: "true" } }
""",
    )
    write_model(
        repo,
        "trt",
        add_model(),
        config="""optimization { execution_accelerators {
  gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ]
} }
instance_group [ { kind: KIND_GPU } ]
""",
    )
    write_model(
        repo,
        "badparam",
        add_model(),
        config='parameters { key: "intra_op_thread_count" value: { string_value: "many" } }\n',
    )
    write_model(
        repo,
        "badaccel",
        add_model(),
        config='optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "warp" } ] } }\n',
    )
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        rows = {r["name"]: r for r in client.get_model_repository_index(as_json=True)["models"]}
        assert (
            client.get_model_config("two", as_json=True)["config"]["instance_group"][0]["count"]
            == 2
        )
        assert _served_offset(client, "two") == 1.0
        assert _served_offset(client, "gpu_fallback") == 1.0
    assert rows["two"]["state"] == "READY"
    assert rows["gpu"]["state"] == "UNAVAILABLE"
    assert "CUDAExecutionProvider is not available" in rows["gpu"]["reason"]
    assert "allow_provider_fallback" in rows["gpu"]["reason"]
    assert rows["gpu_fallback"]["state"] == "READY"
    assert (
        "CUDAExecutionProvider is not available here; falling back"
        in rows["gpu_fallback"]["reason"]
    )
    assert rows["trt"]["state"] == "UNAVAILABLE"
    assert "TensorrtExecutionProvider is not available" in rows["trt"]["reason"]
    assert (
        "config.pbtxt: parameters 'intra_op_thread_count' must be an integer"
        in rows["badparam"]["reason"]
    )
    assert "unknown accelerator 'warp'" in rows["badaccel"]["reason"]


def test_config_that_contradicts_the_model_names_the_field(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "wrongtype",
        add_model(),
        config='max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP16 dims: [ 4 ] } ]\n',
    )
    write_model(
        repo,
        "wrongdims",
        add_model(),
        config='max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] } ]\n',
    )
    write_model(repo, "wrongname", add_model(), config='input [ { name: "pixels" } ]\n')
    write_model(repo, "fixedbatch", add_model(batch=2), config="max_batch_size: 4\n")
    write_model(repo, "noversion", add_model())
    (repo / "noversion" / "1" / "model.onnx").unlink()
    (repo / "noversion" / "1").rmdir()
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        rows = {
            r["name"]: r["reason"]
            for r in client.get_model_repository_index(as_json=True)["models"]
        }
    assert (
        "input[0] 'x': data_type TYPE_FP16 does not match the model's TYPE_FP32"
        in rows["wrongtype"]
    )
    assert "dims [5] do not match the model's [4]" in rows["wrongdims"]
    assert "the model has no input of that name (x)" in rows["wrongname"]
    assert "needs a dynamic first dimension" in rows["fixedbatch"]
    assert "no version folder" in rows["noversion"]
    for reason in rows.values():
        assert "config.pbtxt" in reason or "no version folder" in reason


def _index(client: tg.InferenceServerClient) -> dict[tuple[str, str], dict[str, str]]:
    rows = client.get_model_repository_index(as_json=True)["models"]
    return {(r["name"], r.get("version", "")): r for r in rows}


def test_a_model_that_breaks_the_loader_leaves_the_others_serving(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", add_model())
    write_model(repo, "latin1", add_model())
    (repo / "latin1" / "config.pbtxt").write_bytes(b"# caf\xe9\nmax_batch_size: 8\n")
    write_model(repo, "negative", add_model(), config="instance_group [ { count: -1 } ]\n")
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert _served_offset(client, "good") == 1.0
        index = _index(client)
    latin1 = next(r for (name, _), r in index.items() if name == "latin1")
    assert "config.pbtxt: not UTF-8 text (byte 5" in latin1["reason"]
    # Refused as the config is parsed (no model needed): the model's row says why.
    negative = next(r for (name, _), r in index.items() if name == "negative")
    assert negative["state"] == "UNAVAILABLE"
    assert "instance_group[0].count must be >= 1 (got -1)" in negative["reason"]


def test_a_failed_version_leaves_the_index_with_its_folder(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    write_model(repo, "m", b"not a model", version=2)
    daemon = daemon_factory(repo, "--model-control-mode", "explicit", "--load-model", "m")
    with tg.InferenceServerClient(daemon.address) as client:
        assert _index(client)[("m", "2")]["state"] == "UNAVAILABLE"
        (repo / "m" / "2" / "model.onnx").unlink()
        (repo / "m" / "2").rmdir()
        client.load_model("m")  # looks at the folder again
        index = _index(client)
        assert ("m", "2") not in index
        assert index[("m", "1")]["state"] == "READY"
        assert _served_offset(client, "m") == 1.0


def test_a_load_outlives_a_caller_whose_deadline_passed(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", slow_model(size=768), config=slow_load_config(warmup_runs=40))
    daemon = daemon_factory(repo, "--model-control-mode", "explicit")
    with tg.InferenceServerClient(daemon.address) as client:
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.load_model("slow", client_timeout=0.3)
        deadline = time.monotonic() + 60
        while not client.is_model_ready("slow") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.is_model_ready("slow"), _index(client)
        assert _served_offset(client, "slow") == 1.0


def test_a_request_that_does_not_fit_the_reshape_is_invalid(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "reshaped",
        add_model(),
        config='max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] '
        "reshape: { shape: [ 4 ] } } ]\n",
    )
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert _served_offset(client, "reshaped") == 1.0
        tensor = tg.InferInput("x", [1, 5], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
        with pytest.raises(InferenceServerException) as error:
            client.infer("reshaped", [tensor])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input 'x': shape [1, 5] (5 elements) does not fit the model's reshape" in str(
            error.value
        )
        with pytest.raises(InferenceServerException) as error:
            client.infer("reshaped", _add_input(), model_version="\u00b2")
        assert error.value.status() == "StatusCode.NOT_FOUND"
