"""Hot reload with real file operations on a repository while the daemon serves."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory
from tests.factories.onnx_models import add_model, write_model

FAST = ("--settle-seconds", "0.3")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def publish(repo: Path, model: str, version: int, offset: float) -> None:
    """The exporter's way: write a hidden staging folder, then rename it into place."""
    staging = repo / model / f".staging-{version}"
    write_model(staging.parent, staging.name, add_model(offset=offset), version=0)
    os.rename(staging / "0", repo / model / str(version))
    staging.rmdir()


def offset_of(client: tg.InferenceServerClient, model: str, version: str = "") -> float:
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    return float(client.infer(model, [x], model_version=version).as_numpy("y")[0, 0])


def index(client: tg.InferenceServerClient) -> dict[tuple[str, str], dict[str, str]]:
    rows = client.get_model_repository_index(as_json=True).get("models", [])
    return {(r["name"], r.get("version", "")): r for r in rows}


def served_versions(client: tg.InferenceServerClient, model: str) -> list[str]:
    try:
        return list(client.get_model_metadata(model, as_json=True)["versions"])
    except InferenceServerException:
        return []


@dataclass
class Outcome:
    started: float
    finished: float
    version: int
    value: float


async def _load(
    address: str, stop: asyncio.Event, clients: int, limit_s: float
) -> tuple[list[Outcome], list[str]]:
    outcomes: list[Outcome] = []
    failures: list[str] = []
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    deadline = time.monotonic() + limit_s

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = await stub.ModelInfer(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                continue
            value = float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])
            outcomes.append(Outcome(started, time.monotonic(), int(response.model_version), value))

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(*(client(stub) for _ in range(clients)))
    return outcomes, failures


def test_versions_swap_under_load_with_zero_failed_requests(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, *FAST)

    async def scenario() -> tuple[list[Outcome], list[str]]:
        stop = asyncio.Event()
        load = asyncio.ensure_future(_load(daemon.address, stop, clients=32, limit_s=120))
        with tg.InferenceServerClient(daemon.address) as client:
            for version in range(2, 12):  # ten successive versions
                if version % 2:
                    publish(repo, "m", version, offset=float(version))
                else:  # a plain copy, as `cp -r` would leave it
                    write_model(repo, "m", add_model(offset=float(version)), version=version)
                await asyncio.to_thread(
                    wait_for,
                    lambda v=version: served_versions(client, "m") == [str(v)],
                    f"version {version}",
                )
                await asyncio.sleep(0.2)  # let traffic run on the new version
        stop.set()
        return await load

    outcomes, failures = asyncio.run(scenario())
    assert failures == [], failures[:5]
    assert len(outcomes) > 100
    assert {o.version for o in outcomes} == set(range(1, 12))
    for outcome in outcomes:
        assert outcome.value == float(outcome.version)  # every answer from the version it names
    # Once a version has answered, every request sent after that answer runs on it (or newer).
    first_done = {v: min(o.finished for o in outcomes if o.version == v) for v in range(1, 12)}
    for outcome in outcomes:
        newest_seen = max(v for v, t in first_done.items() if t < outcome.started or v == 1)
        assert outcome.version >= newest_seen


def test_a_slow_copy_is_never_served_half_written(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, "--settle-seconds", "1.0")
    data = add_model(offset=2.0).SerializeToString()
    folder = repo / "m" / "2"
    with tg.InferenceServerClient(daemon.address) as client:
        folder.mkdir()
        with (folder / "model.onnx").open("wb") as out:
            for start in range(0, len(data), max(len(data) // 4, 1)):
                out.write(data[start : start + max(len(data) // 4, 1)])
                out.flush()
                time.sleep(0.3)  # shorter than the settle period: the copy is still going
                assert served_versions(client, "m") == ["1"]
                assert offset_of(client, "m") == 1.0
        (folder / "notes.txt").write_text("copied last")
        assert served_versions(client, "m") == ["1"]
        wait_for(lambda: served_versions(client, "m") == ["2"], "the completed version")
        assert offset_of(client, "m") == 2.0
        rows = index(client)
    assert ("m", "2") in rows
    assert rows[("m", "2")]["state"] == "READY"
    assert ("m", "1") not in rows or rows[("m", "1")]["state"] == "UNLOADING"


def test_ready_marker_skips_the_settle_period(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, "--settle-seconds", "30")
    with tg.InferenceServerClient(daemon.address) as client:
        write_model(repo, "m", add_model(offset=2.0), version=2)
        (repo / "m" / "2" / "READY").touch()
        wait_for(lambda: served_versions(client, "m") == ["2"], "the READY version", timeout=15)
        publish(repo, "m", 3, offset=3.0)  # an atomic rename: no settle wait either
        wait_for(lambda: served_versions(client, "m") == ["3"], "the renamed version", timeout=15)


def test_a_broken_version_never_replaces_the_serving_one(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    write_model(repo, "other", add_model(offset=5.0), version=1)
    daemon = daemon_factory(repo, *FAST)
    good = add_model(offset=2.0).SerializeToString()
    with tg.InferenceServerClient(daemon.address) as client:
        write_model(repo, "m", good[: len(good) // 3], version=2)  # truncated
        wait_for(
            lambda: index(client).get(("m", "2"), {}).get("state") == "UNAVAILABLE", "the failure"
        )
        assert "m/2/model.onnx" in index(client)[("m", "2")]["reason"]
        assert served_versions(client, "m") == ["1"]
        assert offset_of(client, "m") == 1.0
        assert offset_of(client, "other") == 5.0  # another model is untouched
        (repo / "m" / "2" / "model.onnx").write_bytes(good)  # fixing it brings it in
        wait_for(lambda: served_versions(client, "m") == ["2"], "the fixed version")
        assert offset_of(client, "m") == 2.0
        assert index(client)[("m", "2")]["state"] == "READY"
        # A broken config keeps the serving version too, and says why.
        (repo / "m" / "config.pbtxt").write_text("max_batch_size: [oops\n")
        wait_for(
            lambda: "config.pbtxt:1" in index(client).get(("m", ""), {}).get("reason", ""),
            "config error",
        )
        assert offset_of(client, "m") == 2.0


def test_remove_version_remove_model_and_change_config(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2):
        write_model(repo, "m", add_model(offset=float(version)), version=version,
                    config="max_batch_size: 8\nversion_policy: { all: {} }\n")  # fmt: skip
    write_model(repo, "gone", add_model(), version=1)
    daemon = daemon_factory(repo, *FAST)
    with tg.InferenceServerClient(daemon.address) as client:
        assert served_versions(client, "m") == ["1", "2"]
        assert offset_of(client, "m", "1") == 1.0
        shutil.rmtree(repo / "m" / "1")
        wait_for(lambda: served_versions(client, "m") == ["2"], "version 1 to go")
        with pytest.raises(InferenceServerException, match="version 1 is not served"):
            offset_of(client, "m", "1")
        shutil.rmtree(repo / "gone")
        wait_for(lambda: not client.is_model_ready("gone"), "model 'gone' to go")
        # Not ready at once; unknown once its version has drained and it has left the index.
        wait_for(lambda: all(name != "gone" for name, _ in index(client)), "'gone' to leave")
        with pytest.raises(InferenceServerException, match="unknown model 'gone'"):
            offset_of(client, "gone")
        (repo / "m" / "config.pbtxt").write_text("max_batch_size: 4\nversion_policy: { all: {} }\n")
        wait_for(lambda: client.get_model_config("m", as_json=True)["config"]["max_batch_size"] == 4,
                 "the new config")  # fmt: skip
        assert offset_of(client, "m") == 2.0
        write_model(repo, "fresh", add_model(offset=7.0), version=3)  # a new model folder
        wait_for(lambda: client.is_model_ready("fresh"), "the new model")
        assert offset_of(client, "fresh") == 7.0


def test_polling_watcher_also_picks_up_versions(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, *FAST, "--watch-polling")
    with tg.InferenceServerClient(daemon.address) as client:
        publish(repo, "m", 2, offset=2.0)
        wait_for(lambda: served_versions(client, "m") == ["2"], "version 2 by polling")


def test_load_and_unload_over_grpc(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "a", add_model(offset=1.0), version=1)
    write_model(repo, "b", add_model(offset=2.0), version=1)
    daemon: Daemon = daemon_factory(repo, "--model-control-mode", "explicit", "--load-model", "a")
    with tg.InferenceServerClient(daemon.address) as client:
        assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
        rows = index(client)
        assert rows[("a", "1")]["state"] == "READY"
        assert rows[("b", "")]["reason"] == "not loaded"
        assert not client.is_model_ready("b")
        client.load_model("b")
        assert offset_of(client, "b") == 2.0
        client.unload_model("b", unload_dependents=True)
        assert not client.is_model_ready("b")
        assert "unloaded: by request" in index(client)[("b", "")]["reason"]
        # A config given with the load overrides the one on disk.
        client.load_model("b", config=json.dumps({"max_batch_size": 2}))
        assert client.get_model_config("b", as_json=True)["config"]["max_batch_size"] == 2
        # Files given with the load make the model, with its config.
        onnx = add_model(offset=9.0).SerializeToString()
        client.load_model(
            "c", config=json.dumps({"max_batch_size": 4}), files={"file:1/model.onnx": onnx}
        )
        assert offset_of(client, "c") == 9.0
        with pytest.raises(InferenceServerException, match="no model folder 'nope'"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.unload_model("nope")


def test_repository_control_is_refused_unless_enabled(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "a", add_model(), version=1)
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        assert "model_repository" not in client.get_server_metadata(as_json=True)["extensions"]
        for call in (lambda: client.load_model("a"), lambda: client.unload_model("a")):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "--enable-repository-control" in info.value.message()
        assert client.is_model_ready("a")
    enabled = daemon_factory(repo, "--enable-repository-control")
    with tg.InferenceServerClient(enabled.address) as client:
        client.unload_model("a")
        assert not client.is_model_ready("a")
        client.load_model("a")
        assert client.is_model_ready("a")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_empty_version_folder_is_shown_not_polled(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, *FAST)
    (repo / "add" / "2").mkdir()
    with tg.InferenceServerClient(daemon.address) as client:
        wait_for(
            lambda: "no model.onnx in it" in index(client).get(("add", "2"), {}).get("reason", ""),
            "the empty version's reason in the index",
        )
        # Settled and waiting for nothing: the daemon idles instead of looking again and again.
        cpu = _cpu_seconds(daemon.process.pid)
        time.sleep(2.0)
        assert _cpu_seconds(daemon.process.pid) - cpu < 0.5
        assert offset_of(client, "add") == 1.0
        # The file's arrival is a change of its own: version 2 then serves.
        write_model(repo, "add", add_model(offset=2.0), version=2)
        wait_for(lambda: offset_of(client, "add") == 2.0, "version 2 served")


def test_a_policy_that_selects_nothing_keeps_what_serves(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, *FAST)
    (repo / "add" / "config.pbtxt").write_text("version_policy { specific { versions: [7] } }\n")
    with tg.InferenceServerClient(daemon.address) as client:
        wait_for(
            lambda: "selects none" in " ".join(r.get("reason", "") for r in index(client).values()),
            "the policy's reason in the index",
        )
        reasons = " ".join(r.get("reason", "") for r in index(client).values())
        assert "config.pbtxt: version_policy selects none of the versions on disk (1)" in reasons
        assert offset_of(client, "add") == 1.0  # still served


def test_a_removed_version_folder_drains_under_a_specific_policy(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2):
        write_model(repo, "m", add_model(offset=float(version)), version=version,
                    config="version_policy { specific { versions: [1] } }\n")  # fmt: skip
    daemon = daemon_factory(repo, *FAST)
    with tg.InferenceServerClient(daemon.address) as client:
        assert served_versions(client, "m") == ["1"]
        shutil.rmtree(repo / "m" / "1")
        wait_for(lambda: served_versions(client, "m") == [], "version 1 to drain")
        with pytest.raises(InferenceServerException):
            offset_of(client, "m", "1")


def test_the_quick_start_form_reloads_a_relative_repository(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """As scripts/serve.sh runs it: `--model-repository model_repo` from the folder above it,
    with file events (not --watch-polling). Issue 13, item 1."""
    write_model(tmp_path / "model_repo", "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(Path("model_repo"), *FAST, cwd=tmp_path)
    with tg.InferenceServerClient(daemon.address) as client:
        assert offset_of(client, "m") == 1.0
        publish(tmp_path / "model_repo", "m", 2, offset=2.0)
        wait_for(lambda: served_versions(client, "m") == ["2"], "the renamed-in version 2")
        write_model(tmp_path / "model_repo", "m", add_model(offset=3.0), version=3)
        wait_for(lambda: served_versions(client, "m") == ["3"], "the copied-in version 3")
        assert offset_of(client, "m") == 3.0


def test_a_version_renamed_into_place_loads_without_a_settle_wait(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Issue 13, item 2: a folder renamed in from beside it is complete; it is not re-checked."""
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, "--settle-seconds", "30")
    with tg.InferenceServerClient(daemon.address) as client:
        publish(repo, "m", 2, offset=2.0)
        wait_for(lambda: served_versions(client, "m") == ["2"], "the renamed version")
    renamed = [
        r for r in daemon.log_records() if r.get("event") == "version folder renamed into place"
    ]
    assert [(r["model"], r["version"]) for r in renamed] == [("m", 2)]


def test_a_removed_version_serves_until_the_one_replacing_it_does(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Issue 13, item 2: version 3 is still being copied (settling) when version 2's folder is
    removed. Version 2 serves on until 3 does: never nothing, never the older version 1."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        write_model(repo, "m", add_model(offset=float(version)), version=version)
    daemon = daemon_factory(repo, "--settle-seconds", "3")
    data = add_model(offset=3.0).SerializeToString()
    seen: list[tuple[tuple[str, ...], float | None]] = []

    def observe(client: tg.InferenceServerClient) -> bool:
        versions = tuple(served_versions(client, "m"))
        try:
            value: float | None = offset_of(client, "m")
        except InferenceServerException:
            value = None
        seen.append((versions, value))
        return versions == ("3",)

    with tg.InferenceServerClient(daemon.address) as client:
        assert served_versions(client, "m") == ["2"]
        folder = repo / "m" / "3"
        folder.mkdir()
        with (folder / "model.onnx").open("wb") as out:  # a copy in two steps: it settles later
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(0.3)
            out.write(data[len(data) // 2 :])
        shutil.rmtree(repo / "m" / "2")
        wait_for(lambda: observe(client), "version 3", timeout=30)
    assert {versions for versions, _ in seen} <= {("2",), ("3",)}, seen
    assert {value for _, value in seen} <= {2.0, 3.0}, seen
    assert seen[-1] == (("3",), 3.0)


def test_a_version_folder_named_with_unicode_digits_does_not_stop_hot_reload(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Issue 13, item 8: '①' and '²' pass str.isdigit but are no version; hot reload goes on."""
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, *FAST)
    with tg.InferenceServerClient(daemon.address) as client:
        for name in ("①", "²"):
            write_model(repo, "m", add_model(offset=9.0), version=name)  # type: ignore[arg-type]
        publish(repo, "m", 2, offset=2.0)
        wait_for(lambda: served_versions(client, "m") == ["2"], "version 2 after '①' and '²'")
        write_model(repo, "other", add_model(offset=5.0), version=1)  # another model too
        wait_for(lambda: client.is_model_ready("other"), "a new model after '①' and '²'")
        rows = index(client)
    assert sorted(rows) == [("m", "2"), ("other", "1")], rows
    assert not [r for r in daemon.log_records() if r.get("level") == "error"]


def test_a_changed_config_is_logged_as_a_config_change(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """Issue 13, item 21: the log says the config changed, not only that versions reloaded."""
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(), version=1, config="max_batch_size: 8\n")
    daemon = daemon_factory(repo, *FAST)
    with tg.InferenceServerClient(daemon.address) as client:
        (repo / "m" / "config.pbtxt").write_text("max_batch_size: 4\n")
        wait_for(lambda: client.get_model_config("m", as_json=True)["config"]["max_batch_size"] == 4,
                 "the new config")  # fmt: skip
    changed = [r for r in daemon.log_records() if r.get("event") == "model config changed"]
    assert len(changed) == 1, changed
    assert changed[0]["model"] == "m"
    assert str(changed[0]["config"]).endswith("config.pbtxt")
