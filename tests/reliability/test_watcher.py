"""The repository watcher under things it did not expect: an exception in its own code, and a
version folder of more files than a model has (issue 13, items 7 and 8)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import structlog
import tritonclient.grpc as tg

from ortserve.repository.settle import SettleTracker
from ortserve.repository.watcher import RepositoryWatcher
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, write_model
from tests.integration.test_hot_reload import index, offset_of, served_versions, wait_for

MAX_VERSION_FILES = 10_000  # README: a version folder of more entries is refused


class _FailsOnce(SettleTracker):
    """A real tracker whose first ``touch`` raises, as ``int('①')`` once did inside the watcher."""

    def __init__(self) -> None:
        super().__init__(settle_s=0.0)
        self.raised = 0

    def touch(self, model: str, version: int) -> None:
        if not self.raised:
            self.raised += 1
            raise ValueError("something nobody foresaw")
        super().touch(model, version)


async def _first_sync(synced: asyncio.Queue[str], folder: Path) -> str:
    """Write into ``folder`` until the watcher reports a sync (it may not be watching yet)."""
    await asyncio.to_thread(folder.mkdir, parents=True)
    for attempt in range(40):
        await asyncio.to_thread((folder / f"file-{attempt}").write_text, "x")
        try:
            return await asyncio.wait_for(synced.get(), 0.5)
        except TimeoutError:
            continue
    raise AssertionError(f"no sync after writing into {folder}")


def test_the_watcher_survives_an_exception_logs_it_and_keeps_watching(tmp_path: Path) -> None:
    tracker = _FailsOnce()

    async def scenario() -> list[str]:
        synced: asyncio.Queue[str] = asyncio.Queue()

        async def sync(model: str) -> float | None:
            synced.put_nowait(model)
            return None

        watcher = RepositoryWatcher(tmp_path, tracker, sync)
        watcher.start()
        try:
            first = await _first_sync(synced, tmp_path / "a" / "1")
            second = await _first_sync(synced, tmp_path / "b" / "1")
        finally:
            await watcher.aclose()
        return [first, second]

    with structlog.testing.capture_logs() as logs:
        models = asyncio.run(scenario())
    assert tracker.raised == 1
    assert models == ["a", "b"]  # the batch that raised still synced its model; then on
    errors = [r for r in logs if r["log_level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0].get("exc_info"), errors
    assert "repository changes" in str(errors[0]["event"])


def test_a_version_folder_of_too_many_files_is_refused_without_stalling_the_daemon(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(offset=1.0), version=1)
    daemon = daemon_factory(repo, "--settle-seconds", "0.3")
    staging = write_model(repo, "m", add_model(offset=2.0), version=".st-2")  # type: ignore[arg-type]
    data = staging / "data"
    data.mkdir()
    for number in range(MAX_VERSION_FILES + 50):
        (data / f"{number:05}").touch()

    async def live_while_walking() -> int:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            os.rename(staging, repo / "m" / "2")
            answered = 0
            for _ in range(50):  # the folder is being walked meanwhile: the daemon still answers
                reply = await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
                answered += reply.live
                await asyncio.sleep(0.02)
            return answered

    assert asyncio.run(live_while_walking()) == 50
    with tg.InferenceServerClient(daemon.address) as client:
        wait_for(lambda: ("m", "2") in index(client), "version 2 in the index")
        row = index(client)[("m", "2")]
        assert row["state"] == "UNAVAILABLE"
        assert f"m/2: more than {MAX_VERSION_FILES} files in it" in row["reason"]
        assert served_versions(client, "m") == ["1"]
        assert offset_of(client, "m") == 1.0


def test_a_version_name_is_ascii_digits_within_int64() -> None:
    from ortserve.repository.layout import parse_version  # the one definition (issue 13, item 8)

    assert parse_version("7") == 7
    assert parse_version("0012") == 12
    assert parse_version(str(2**63 - 1)) == 2**63 - 1
    for name in ("①", "²", "٣", "v2", "", "-1", "1.0", " 1", str(2**63), "9" * 5000):
        assert parse_version(name) is None, name
