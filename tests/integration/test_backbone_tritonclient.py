"""The daemon driven by Triton's own client, tritonclient[grpc], unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.conftest import Daemon, start_daemon
from tests.factories.onnx_models import (
    WIRE_TO_ONNX,
    add_model,
    identity_model,
    two_output_model,
    write_model,
)

NUMERIC = [dt for dt in WIRE_TO_ONNX if dt != "BYTES"]


def build_repo(repo: Path) -> None:
    write_model(repo, "add", add_model())
    write_model(repo, "ids", two_output_model(), config="max_batch_size: 8\n")
    write_model(repo, "alltypes", identity_model(NUMERIC))
    write_model(repo, "bytes", identity_model(["BYTES"]))
    write_model(repo, "fixed", add_model(batch=2))
    write_model(repo, "broken", b"this is not an onnx file")
    write_model(
        repo,
        "badconfig",
        add_model(),
        config='max_batch_size: 4\ninput [ { name: "x" data_typo: TYPE_FP32 } ]\n',
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("backbone")
    build_repo(root / "repo")
    started = start_daemon(root / "repo", root / "daemon.log")
    yield started
    assert started.stop() == 0, "the daemon should exit 0 on SIGTERM"


@pytest.fixture
def client(daemon: Daemon) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(daemon.address) as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str) -> tg.InferInput:
    tensor = tg.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _error(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return info.value


def test_server_live_ready_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "ortserve"
    assert meta["version"]
    assert meta["extensions"] == [
        "classification",
        "model_configuration",
        "schedule_policy",
        "statistics",
    ]


def test_model_metadata_puts_a_dynamic_batch_dim_first(client: tg.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "4"]}]
    fixed = client.get_model_metadata("fixed", as_json=True)
    assert fixed["inputs"][0]["shape"] == ["2", "4"]


def test_model_config_is_auto_completed_from_the_graph(client: tg.InferenceServerClient) -> None:
    config = client.get_model_config("add", as_json=True)["config"]
    assert config["name"] == "add"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32  # every tensor has a dynamic first dim
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert client.get_model_config("ids", as_json=True)["config"]["max_batch_size"] == 8
    fixed = client.get_model_config("fixed", as_json=True)["config"]
    assert fixed.get("max_batch_size", 0) == 0
    assert fixed["input"][0]["dims"] == ["2", "4"]


def test_repository_index_shows_every_model_with_state_and_reason(
    client: tg.InferenceServerClient,
) -> None:
    rows = {row["name"]: row for row in client.get_model_repository_index(as_json=True)["models"]}
    assert set(rows) == {"add", "ids", "alltypes", "bytes", "fixed", "broken", "badconfig"}
    assert rows["add"]["state"] == "READY"
    assert rows["add"]["reason"] == "running on CPUExecutionProvider"
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert "broken/1/model.onnx" in rows["broken"]["reason"]
    assert rows["badconfig"]["state"] == "UNAVAILABLE"
    assert "badconfig/config.pbtxt:2:" in rows["badconfig"]["reason"]
    assert "data_typo" in rows["badconfig"]["reason"]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_infer_round_trips_every_numeric_datatype(
    client: tg.InferenceServerClient, datatype: str
) -> None:
    if datatype == "BOOL":
        data = np.array([[True, False, True], [False, True, True]])
    else:
        data = (np.arange(6).reshape(2, 3) * 1.5).astype(triton_to_np_dtype(datatype))
    inputs = [
        _input(f"in_{dt}", data if dt == datatype else np.zeros_like(data, dtype=_np(dt)), dt)
        for dt in NUMERIC
    ]
    result = client.infer("alltypes", inputs, outputs=[tg.InferRequestedOutput(f"out_{datatype}")])
    out = result.as_numpy(f"out_{datatype}")
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)
    assert [o.name for o in result.get_response().outputs] == [f"out_{datatype}"]


def _np(datatype: str) -> np.dtype:
    return np.dtype(np.bool_) if datatype == "BOOL" else np.dtype(triton_to_np_dtype(datatype))


def test_infer_round_trips_bytes(client: tg.InferenceServerClient) -> None:
    data = np.array([[b"a", b"bc", b""], [b"x\x00y", "€".encode(), b"z"]], dtype=np.object_)
    result = client.infer("bytes", [_input("in_BYTES", data, "BYTES")])
    np.testing.assert_array_equal(result.as_numpy("out_BYTES"), data)


def test_requested_output_subset_id_and_version_echo(client: tg.InferenceServerClient) -> None:
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    result = client.infer(
        "ids",
        [_input("ids", ids, "INT64")],
        outputs=[tg.InferRequestedOutput("as_float")],
        request_id="req-42",
    )
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "ids"
    assert response.model_version == "1"
    assert [o.name for o in response.outputs] == ["as_float"]
    np.testing.assert_array_equal(result.as_numpy("as_float"), ids.astype(np.float32))
    both = client.infer("ids", [_input("ids", ids, "INT64")])
    assert [o.name for o in both.get_response().outputs] == ["doubled", "as_float"]
    np.testing.assert_array_equal(both.as_numpy("doubled"), ids * 2)


def test_fixed_batch_model_runs_at_its_shape(client: tg.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = client.infer("fixed", [_input("x", x, "FP32")]).as_numpy("y")
    np.testing.assert_array_equal(out, x + 1)
    error = _error(lambda: client.infer("fixed", [_input("x", x[:1], "FP32")]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "[1, 4]" in error.message()
    assert "[2, 4]" in error.message()


def test_large_message_beyond_grpc_default_limit(client: tg.InferenceServerClient) -> None:
    ids = np.ones((1, 1_500_000), dtype=np.int64)  # 12 MB each way, over gRPC's 4 MB default
    result = client.infer("ids", [_input("ids", ids, "INT64")])
    assert result.as_numpy("doubled").shape == (1, 1_500_000)
    assert int(result.as_numpy("doubled").sum()) == 3_000_000


@pytest.mark.parametrize(
    ("call", "status", "fragments"),
    [
        ("unknown_model", "NOT_FOUND", ["unknown model 'nope'"]),
        ("unknown_version", "NOT_FOUND", ["model 'add' version 7 is not served", "serving: 1"]),
        ("wrong_datatype", "INVALID_ARGUMENT", ["input 'x'", "FP64", "expects FP32"]),
        ("wrong_shape", "INVALID_ARGUMENT", ["input 'x'", "[2, 5]", "[-1, 4]"]),
        ("unknown_input", "INVALID_ARGUMENT", ["has no input 'z'", "inputs: x"]),
        ("missing_input", "INVALID_ARGUMENT", ["missing input", "'in_FP32'"]),
        ("batch_too_large", "INVALID_ARGUMENT", ["batch size 9", "1..8"]),
        ("unknown_output", "INVALID_ARGUMENT", ["has no output 'nope'", "doubled, as_float"]),
        ("not_ready", "UNAVAILABLE", ["model 'broken' is not ready", "model.onnx"]),
        ("bad_utf8", "INVALID_ARGUMENT", ["input 'in_BYTES'", "not valid UTF-8"]),
        ("bad_name", "INVALID_ARGUMENT", ["invalid model name '../etc'"]),
    ],
)
def test_errors_name_what_is_wrong(
    client: tg.InferenceServerClient, call: str, status: str, fragments: list[str]
) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    calls = {
        "unknown_model": lambda: client.infer("nope", [_input("x", x, "FP32")]),
        "unknown_version": lambda: client.infer("add", [_input("x", x, "FP32")], model_version="7"),
        "wrong_datatype": lambda: client.infer("add", [_input("x", x.astype(np.float64), "FP64")]),
        "wrong_shape": lambda: client.infer(
            "add", [_input("x", np.ones((2, 5), np.float32), "FP32")]
        ),
        "unknown_input": lambda: client.infer("add", [_input("z", x, "FP32")]),
        "missing_input": lambda: client.infer(
            "alltypes", [_input("in_INT8", np.ones((1, 3), np.int8), "INT8")]
        ),
        "batch_too_large": lambda: client.infer(
            "ids", [_input("ids", np.ones((9, 2), np.int64), "INT64")]
        ),
        "unknown_output": lambda: client.infer(
            "ids",
            [_input("ids", np.ones((1, 2), np.int64), "INT64")],
            outputs=[tg.InferRequestedOutput("nope")],
        ),
        "not_ready": lambda: client.infer("broken", [_input("x", x, "FP32")]),
        "bad_utf8": lambda: client.infer(
            "bytes",
            [_input("in_BYTES", np.array([[b"ok", b"\xff\xfe", b"x"]], np.object_), "BYTES")],
        ),
        "bad_name": lambda: client.infer("../etc", [_input("x", x, "FP32")]),
    }
    error = _error(calls[call])
    assert error.status() == f"StatusCode.{status}"
    for fragment in fragments:
        assert fragment in error.message()


def test_model_ready_per_model_and_version(client: tg.InferenceServerClient) -> None:
    assert client.is_model_ready("add")
    assert client.is_model_ready("add", "1")
    assert not client.is_model_ready("add", "2")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
