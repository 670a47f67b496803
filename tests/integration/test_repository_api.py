"""The repository API and the names and numbers a caller (or a folder) gives, through the real
daemon: a bad one is refused with a clear status naming it, and leaves nothing behind: no index
entry, no temporary files, no reason that outlives the files it described."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, write_model

EXPLICIT = ("--model-control-mode", "explicit")
ONNX = add_model(offset=3.0).SerializeToString()


def _index(client: tg.InferenceServerClient) -> dict[tuple[str, str], dict[str, str]]:
    rows = client.get_model_repository_index(as_json=True).get("models", [])
    return {(r["name"], r.get("version", "")): r for r in rows}


def _refused(call: Callable[[], object], code: str) -> str:
    """The message of a call that must fail with ``code``."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value.message()
    message = str(info.value.message())
    assert "internal error" not in message
    assert len(message) < 1000  # what the caller sent is named, not echoed back kilobytes long
    return message


def _uploads(scratch: Path) -> list[str]:
    """The daemon's folders of uploaded files (ONNX Runtime keeps files of its own there)."""
    return [name for name in os.listdir(scratch) if name.startswith("ortserve-")]


def _offset(client: tg.InferenceServerClient, model: str) -> float:
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    return float(client.infer(model, [x]).as_numpy("y")[0, 0])


#: RepositoryModelLoad calls that must be refused, and what the refusal must say.
REFUSED_LOADS: list[tuple[str, str | None, dict[str, bytes], str]] = [
    # (model name, config JSON, files, part of the message)
    ("nul", "{}", {"file:1/mo\0del.onnx": ONNX}, "has a NUL character"),
    ("long", "{}", {"file:1/" + "n" * 300: ONNX}, "has a name longer than 255 bytes"),
    ("deep", "{}", {"file:1/" + "d/" * 600 + "m": ONNX}, "is longer than 1024 bytes"),
    (
        "clash",
        "{}",
        {"file:1/model.onnx": ONNX, "file:1/model.onnx/inner": b"x"},
        "is a file, but 'file:1/model.onnx/inner' needs it to be a folder",
    ),
    ("dots", "{}", {"file:1/../../evil": ONNX}, "must be 'file:<version>/<name>'"),
    ("circled", "{}", {"file:\u2460/model.onnx": ONNX}, "does not start with a version number"),
    ("m" * 5000, "{}", {"file:1/model.onnx": ONNX}, "longer than 255 characters"),
    ("okname\n", "{}", {"file:1/model.onnx": ONNX}, "invalid model name 'okname\\n'"),
    ("badjson", "{not json", {"file:1/model.onnx": ONNX}, "RepositoryModelLoad config"),
    ("field", '{"no_such_field": 1}', {"file:1/model.onnx": ONNX}, "no_such_field"),
    ("negative", '{"max_batch_size": -5}', {}, "max_batch_size must be >= 0, got -5"),
    (
        "threads",
        json.dumps(
            {"parameters": {"intra_op_thread_count": {"string_value": "99999999999999999999"}}}
        ),
        {},
        "parameters 'intra_op_thread_count' must be an integer from 0 to 1024",
    ),
]


def test_refused_loads_leave_no_trace(
    tmp_path: Path, daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items 11, 14, 15, 17, 18 of issue 13: INVALID_ARGUMENT naming the key, field or name;
    no index entry, and no temporary folder with the uploaded bytes, during or after the run."""
    scratch = tmp_path / "scratch"  # the daemon's temporary folder: what it leaves is seen here
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    repo = tmp_path / "repo"
    for name in ("a", "negative", "threads"):
        write_model(repo, name, add_model(offset=1.0))
    write_model(repo, "nl\n", add_model())
    daemon = daemon_factory(repo, *EXPLICIT, "--load-model", "a")
    with tg.InferenceServerClient(daemon.address) as client:
        before = _index(client)
        problems = []  # every call is tried, so that a failure lists all that went wrong
        seen: set[str] = set()
        for name, config, files, part in REFUSED_LOADS:
            try:
                client.load_model(name, config=config, files=files)
                problems.append(f"{name[:20]!r}: loaded")
            except InferenceServerException as exc:
                answer = f"{exc.status()} {str(exc.message())[:200]}"
                if exc.status() != "StatusCode.INVALID_ARGUMENT" or part not in exc.message():
                    problems.append(f"{name[:20]!r}: {answer}")
                if len(exc.message()) > 1000:
                    problems.append(f"{name[:20]!r}: {len(exc.message())} characters echoed")
            left = [upload for upload in _uploads(scratch) if upload not in seen]
            if left:
                problems.append(f"{name[:20]!r}: left {[upload[:40] for upload in left]}")
                seen.update(left)
            # Refused means no trace: the index is as it was (no phantom UNAVAILABLE rows).
            if _index(client) != before:
                problems.append(
                    f"{name[:20]!r}: new index rows "
                    f"{sorted((n[:20], v) for n, v in set(_index(client)) - set(before))}"
                )
                before = _index(client)
        assert not problems, "\n".join(problems)
        assert not client.is_model_ready("negative")
        assert _offset(client, "a") == 1.0
        # A model folder whose name has a trailing newline is not a model.
        assert "invalid model name 'nl\\n'" in _refused(
            lambda: client.load_model("nl\n"), "INVALID_ARGUMENT"
        )
        # Files that load are kept in a temporary folder while they serve...
        client.load_model("up", config="{}", files={"file:1/model.onnx": ONNX})
        assert _offset(client, "up") == 3.0
        assert len(_uploads(scratch)) == 1
        # ...removed on unload, and on shutdown.
        client.unload_model("up")
        assert _uploads(scratch) == []
        client.load_model("up", config="{}", files={"file:1/model.onnx": ONNX})
        assert len(_uploads(scratch)) == 1
    assert daemon.stop() == 0
    assert _uploads(scratch) == []


def test_a_version_string_of_thousands_of_digits_is_not_found(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Item 12 of issue 13: past Python's int() digit limit, on every RPC that takes a version.
    And item 18: a folder whose name ends in a newline is not served ("$" matched before it)."""
    repo = tmp_path / "repo"
    write_model(repo, "a", add_model())
    write_model(repo, "nl\n", add_model())
    daemon = daemon_factory(repo)
    huge = "1" * 4301
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with tg.InferenceServerClient(daemon.address) as client:
        calls: list[Callable[[], object]] = [
            lambda: client.get_model_metadata("a", huge),
            lambda: client.get_model_config("a", huge),
            lambda: client.get_inference_statistics("a", huge),
            lambda: client.infer("a", [x], model_version=huge),
        ]
        for call in calls:
            message = _refused(call, "NOT_FOUND")
            assert message.startswith(
                f"model 'a' has no version {huge[:64]!r}... (4301 characters)"
            )
        assert client.is_model_ready("a", huge) is False
        assert client.is_model_ready("a", "1") is True
        assert "version 2 is not served" in _refused(
            lambda: client.get_model_metadata("a", "2"), "NOT_FOUND"
        )
        assert not client.is_model_ready("nl\n")
        assert "invalid model name 'nl\\n'" in _index(client)[("nl\n", "")]["reason"]


BAD_MODE = 'parameters { key: "execution_mode" value: { string_value: "high" } }\n'


def test_the_index_reason_describes_the_current_files(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Item 16 of issue 13: once a bad config is reverted (or fixed), its failure is gone."""
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(), config="max_batch_size: 4\n")
    config = repo / "m" / "config.pbtxt"
    daemon = daemon_factory(repo, *EXPLICIT, "--load-model", "m")
    with tg.InferenceServerClient(daemon.address) as client:
        for good in ("max_batch_size: 4\n", "max_batch_size: 2\n"):  # reverted, then fixed
            config.write_text("max_batch_size: 4\n" + BAD_MODE)
            client.load_model("m")  # version 1 keeps serving its previous files
            reason = _index(client)[("m", "1")]["reason"]
            assert "a reload failed, serving the previous files" in reason
            assert "got 'high'" in reason
            config.write_text(good)
            client.load_model("m")
            rows = _index(client)
            assert rows[("m", "1")] == {
                "name": "m",
                "version": "1",
                "state": "READY",
                "reason": "running on CPUExecutionProvider",
            }
            assert set(rows) == {("m", "1")}
        assert client.get_model_config("m", as_json=True)["config"]["max_batch_size"] == 2


def test_links_outside_the_repository_are_refused_unless_allowed(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Item 19 of issue 13: nothing outside the repository is read through a symbolic link by
    default (the reason names the link and the flag); links inside it are followed."""
    outside = tmp_path / "outside"
    write_model(outside, "elsewhere", add_model(offset=5.0))
    (outside / "config.pbtxt").write_text("max_batch_size: 2\n")
    repo = tmp_path / "repo"
    write_model(repo, "plain", add_model(offset=1.0))
    write_model(repo, "inside", add_model(offset=2.0))  # version 2 links to version 1's file
    (repo / "inside" / "2").mkdir()
    (repo / "inside" / "2" / "model.onnx").symlink_to(Path("..") / "1" / "model.onnx")
    (repo / "file_link" / "1").mkdir(parents=True)
    (repo / "file_link" / "1" / "model.onnx").symlink_to(outside / "elsewhere" / "1" / "model.onnx")
    (repo / "folder_link").mkdir()
    (repo / "folder_link" / "1").symlink_to(outside / "elsewhere" / "1")
    write_model(repo, "config_link", add_model(offset=6.0))
    (repo / "config_link" / "config.pbtxt").symlink_to(outside / "config.pbtxt")
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert _offset(client, "plain") == 1.0
        assert _offset(client, "inside") == 2.0  # version 2, through a link inside the repository
        assert client.get_model_metadata("inside", as_json=True)["versions"] == ["2"]
        rows = _index(client)
        reasons = {
            name: " ".join(r["reason"] for (n, _), r in rows.items() if n == name)
            for name in ("file_link", "folder_link", "config_link")
        }
        for name, reason in reasons.items():
            assert not client.is_model_ready(name)
            assert "leading outside the model repository" in reason, reason
            assert "--allow-symlinks-outside-repository" in reason
            assert str(repo / name) in reason
    allowed = daemon_factory(repo, "--allow-symlinks-outside-repository")
    with tg.InferenceServerClient(allowed.address) as client:
        assert _offset(client, "file_link") == 5.0
        assert _offset(client, "folder_link") == 5.0
        assert _offset(client, "config_link") == 6.0
        assert client.get_model_config("config_link", as_json=True)["config"]["max_batch_size"] == 2
