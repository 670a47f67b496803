"""ortserve_client against the real daemon: every call, sync and async, errors, streaming,
several targets, retries across a restart."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

import ortserve_client
from ortserve_client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InferenceServerError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from ortserve_client._base import Inputs
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory, start_daemon
from tests.factories.onnx_models import add_model, identity_model, slow_model, write_model
from tests.factories.text_models import write_text_model

SLOW = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'


def build_repo(repo: Path) -> None:
    write_model(repo, "add", add_model(offset=1.0))
    write_model(repo, "add", add_model(offset=2.0), version=2,
                config="max_batch_size: 8\nversion_policy: { all: {} }\ndynamic_batching { }\n")  # fmt: skip
    write_model(repo, "halves", identity_model(["FP16", "BF16"]))
    write_model(repo, "strings", identity_model(["BYTES"]))
    write_model(repo, "tinyqueue", slow_model(size=1024),
                config="max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n" + SLOW)  # fmt: skip
    write_model(repo, "slow", slow_model(size=1024), config=SLOW)  # ~0.2 s a request
    write_model(repo, "broken", b"not onnx")
    write_text_model(repo, "sentiment", "text-classification")
    write_text_model(repo, "embed", "feature-extraction", sentence_transformers=True)
    write_text_model(repo, "ner", "token-classification")
    write_text_model(repo, "qa", "question-answering")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("client")
    build_repo(root / "repo")
    started = start_daemon(root / "repo", root / "daemon.log", "--enable-repository-control")
    yield started
    assert started.stop() == 0


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.address, timeout=20) as c:
        yield c


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_public_api_is_pinned() -> None:
    assert sorted(ortserve_client.__all__) == [
        "Answer", "AsyncClient", "Classification", "Client", "DeadlineExceededError", "Entity",
        "Generation", "InferResult", "InferenceServerError", "InvalidArgumentError",
        "NotFoundError", "ResourceExhaustedError", "UnavailableError",
    ]  # fmt: skip
    # Every pinned name is there, and every public class the package exports is pinned.
    exported = {n for n, v in vars(ortserve_client).items() if isinstance(v, type)}
    assert exported == set(ortserve_client.__all__)


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_every_public_call_documents_an_example(cls: type) -> None:
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name in ("close",):
            continue
        assert "client." in (member.__doc__ or ""), f"{cls.__name__}.{name}"


def test_server_and_model_calls(client: Client) -> None:
    assert client.live()
    assert client.ready()
    assert client.model_ready("add")
    assert not client.model_ready("broken")
    assert "statistics" in client.server_metadata().extensions
    meta = client.model_metadata("add")
    assert list(meta.versions) == ["1", "2"]
    assert client.model_config("add").max_batch_size == 8
    names = {m.name for m in client.repository_index()}
    assert {"add", "broken", "sentiment"} <= names
    assert "broken" not in {m.name for m in client.repository_index(ready_only=True)}


def test_infer_result_carries_outputs_version_id_and_timing(client: Client) -> None:
    result = client.infer("add", {"x": X}, request_id="r1", priority=0)
    np.testing.assert_array_equal(result["y"], X + 2)
    assert result.model_version == "2"
    assert result.id == "r1"
    assert result.parameters["batch_size"] >= 2
    assert "queue_us" in result.parameters
    pinned = client.infer("add", {"x": X}, version="1", outputs=["y"])
    np.testing.assert_array_equal(pinned["y"], X + 1)


def test_infer_result_is_a_mapping_of_outputs(daemon: Daemon, client: Client) -> None:
    import ml_dtypes

    half = np.arange(6, dtype=np.float16).reshape(2, 3)
    feeds: Inputs = {"in_FP16": half, "in_BF16": half.astype(ml_dtypes.bfloat16)}
    result = client.infer("halves", feeds)
    assert isinstance(result, Mapping)
    assert sorted(result) == sorted(result.keys()) == ["out_BF16", "out_FP16"]
    assert len(result) == 2
    as_dict = dict(result)
    assert as_dict.keys() == result.outputs.keys()
    np.testing.assert_array_equal(as_dict["out_FP16"], half)
    assert [name for name, _ in result.items()] == list(result)
    assert result.get("missing") is None
    assert "out_FP16" in result
    assert "in_FP16" not in result
    assert result.model_name == "halves"  # the attributes stay

    async def one() -> ortserve_client.InferResult:
        async with AsyncClient(daemon.address) as aclient:
            return await aclient.infer("halves", feeds, outputs=["out_FP16"])

    subset = asyncio.run(one())
    assert list(subset.keys()) == ["out_FP16"]
    assert len(subset) == 1


def test_bytes_fp16_bf16_round_trip(client: Client) -> None:
    import ml_dtypes

    half = np.arange(6, dtype=np.float16).reshape(2, 3)
    brain = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    result = client.infer("halves", {"in_FP16": half, "in_BF16": brain})
    np.testing.assert_array_equal(result["out_FP16"], half)
    assert result["out_BF16"].dtype == brain.dtype
    np.testing.assert_array_equal(result["out_BF16"], brain)
    texts = np.array([["a", "é", "c"]], dtype=np.object_)
    assert client.infer("strings", {"in_BYTES": texts})["out_BYTES"][0, 1] == "é".encode()
    assert client.infer("strings", {"in_BYTES": texts}, as_str=True)["out_BYTES"][0, 1] == "é"


def test_local_validation_catches_bad_inputs_before_sending(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="expects FP32"):
        client.infer("add", {"x": X.astype(np.float64)})
    with pytest.raises(InvalidArgumentError, match=r"shape \[2, 5\].*\[-1, 4\]"):
        client.infer("add", {"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(InvalidArgumentError, match="has no input 'z'"):
        client.infer("add", {"z": X})
    with pytest.raises(InvalidArgumentError, match="list of texts"):
        client.classify("sentiment", "one string")  # type: ignore[arg-type]


def test_each_status_code_has_its_exception(daemon: Daemon, client: Client) -> None:
    with pytest.raises(NotFoundError) as not_found:
        client.infer("ghost", {"x": X})
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    assert not_found.value.model == "ghost"
    with (
        Client(daemon.address, validate=False) as unchecked,
        pytest.raises(InvalidArgumentError) as bad,
    ):
        unchecked.infer("add", {"x": np.zeros((2, 5), np.float32)})
    assert "[2, 5]" in bad.value.message
    with pytest.raises(UnavailableError):
        client.model_config("broken")
    with pytest.raises(DeadlineExceededError):
        client.infer("tinyqueue", {"x": np.ones((1, 4), np.float32)}, timeout=0.001)

    async def flood() -> list[object]:
        async with AsyncClient(daemon.address) as aclient:
            calls = [
                aclient.infer("tinyqueue", {"x": np.ones((1, 4), np.float32)}) for _ in range(8)
            ]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(flood())
    exhausted = [r for r in results if isinstance(r, ResourceExhaustedError)]
    assert exhausted
    assert all(
        isinstance(r, (ResourceExhaustedError, ortserve_client.InferResult)) for r in results
    )
    assert all(isinstance(r, InferenceServerError) for r in exhausted)


def test_load_unload_and_statistics(client: Client) -> None:
    client.unload_model("strings")
    assert not client.model_ready("strings")
    client.load_model("strings")
    assert client.model_ready("strings")
    stats = client.statistics("add")
    assert {s.version for s in stats.model_stats} == {"1", "2"}
    assert sum(s.inference_count for s in stats.model_stats) > 0


def stream_requests() -> list[tuple[str, Inputs]]:
    return [
        ("slow", {"x": np.full((1, 4), 10, np.float32)}),  # the server answers it last
        ("add", {"x": X}),
        ("nope", {"x": X}),  # no such model
        ("add", {"x": object()}),  # type: ignore[dict-item]  # cannot be converted
        ("add", {"x": np.zeros((1, 5), np.float32)}),  # the wrong shape
        ("add", {"x": X * 3}),
    ]


def check_stream_results(results: Sequence[object]) -> None:
    """One result per request of ``stream_requests()``, in request order, each with its id."""
    assert len(results) == 6
    slow, add, nope, unconvertible, misshapen, add3 = results
    assert isinstance(slow, ortserve_client.InferResult)
    assert (slow.id, slow.model_name) == ("0", "slow")
    np.testing.assert_array_equal(slow["y"], np.full((1, 4), 11, np.float32))
    assert isinstance(add, ortserve_client.InferResult)
    assert (add.id, add.model_name) == ("1", "add")
    np.testing.assert_array_equal(add["y"], X + 2)
    assert isinstance(add3, ortserve_client.InferResult)
    assert (add3.id, add3.model_name) == ("5", "add")
    np.testing.assert_array_equal(add3["y"], X * 3 + 2)

    assert isinstance(nope, NotFoundError)
    assert (nope.request_id, nope.model, nope.code) == ("2", "nope", grpc.StatusCode.NOT_FOUND)
    assert nope.message == "unknown model 'nope'"
    assert str(nope) == "[NOT_FOUND] unknown model 'nope'"  # the code once, not repeated
    assert isinstance(unconvertible, InvalidArgumentError)
    assert (unconvertible.request_id, unconvertible.model) == ("3", "add")
    assert unconvertible.message.startswith("input 'x': object cannot be converted")
    assert isinstance(misshapen, InvalidArgumentError)
    assert (misshapen.request_id, misshapen.model) == ("4", "add")
    assert re.match(r"input 'x': shape \[1, 5\] does not match model 'add'", misshapen.message)
    assert str(misshapen).count("INVALID_ARGUMENT") == 1


def test_the_server_answers_a_stream_in_completion_order(daemon: Daemon) -> None:
    """What the client's matching is for: the fast request overtakes the slow one."""
    with grpc.insecure_channel(daemon.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        slow = pb.ModelInferRequest(model_name="slow", id="slow")
        slow.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        slow.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        fast = pb.ModelInferRequest(model_name="add", id="fast")
        fast.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        fast.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        answers = list(stub.ModelStreamInfer(iter([slow, fast]), timeout=20))
    assert [a.infer_response.id for a in answers] == ["fast", "slow"]


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "server-checks"])
def test_stream_infer_matches_every_result_to_its_request(daemon: Daemon, validate: bool) -> None:
    with Client(daemon.address, timeout=20, validate=validate) as client:
        check_stream_results(list(client.stream_infer(stream_requests())))
        # Several times over one client: the cached signatures change nothing.
        check_stream_results(list(client.stream_infer(iter(stream_requests()))))


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "server-checks"])
def test_async_stream_infer_matches_every_result_to_its_request(
    daemon: Daemon, validate: bool
) -> None:
    async def produce() -> AsyncIterator[tuple[str, Inputs]]:
        for request in stream_requests():
            await asyncio.sleep(0)
            yield request

    async def run() -> None:
        async with AsyncClient(daemon.address, timeout=20, validate=validate) as client:
            check_stream_results([r async for r in client.stream_infer(stream_requests())])
            check_stream_results([r async for r in client.stream_infer(produce())])

    asyncio.run(run())


def test_stream_infer_raises_what_the_requests_raise_after_the_answers(client: Client) -> None:
    def requests() -> Iterator[tuple[str, Inputs]]:
        yield "slow", {"x": X}
        yield "add", {"x": X}
        raise RuntimeError("no more requests")

    results: list[object] = []
    with pytest.raises(RuntimeError, match="no more requests"):
        results.extend(client.stream_infer(requests()))  # keeps what came before the raise
    assert [r.id for r in results if isinstance(r, ortserve_client.InferResult)] == ["0", "1"]


def test_stream_infer_can_be_left_early(client: Client) -> None:
    requests = ((("slow" if i % 2 else "add"), {"x": X}) for i in range(1000))
    for result in client.stream_infer(requests):
        assert isinstance(result, ortserve_client.InferResult)
        assert result.id == "0"
        break
    assert client.infer("add", {"x": X}).model_version == "2"  # the client goes on


def test_text_helpers(client: Client) -> None:
    labels = client.classify("sentiment", ["i love it", "i hate it"])
    assert len(labels) == 2
    assert labels[0].label in ("NEGATIVE", "POSITIVE")
    assert 0.5 <= labels[0].score <= 1.0
    assert labels[0].scores.shape == (2,)
    vectors = client.embed("embed", ["cats", "dogs and birds"])
    assert vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    found = client.extract_entities("ner", ["alice works at acme in london"])
    for entity in found[0]:
        assert "alice works at acme in london"[entity.start : entity.end] == entity.word
    context = "alice works at acme corporation in london"
    (answer,) = client.answer("qa", ["where does alice work"], [context])
    assert context[answer.start : answer.end] == answer.text
    assert 0.0 < answer.score <= 1.0


def test_async_client_calls(daemon: Daemon) -> None:
    async def run() -> None:
        async with AsyncClient(daemon.address, timeout=20) as client:
            assert await client.live()
            assert await client.ready()
            assert await client.model_ready("add", "1")
            assert "add" in {m.name for m in await client.repository_index()}
            assert (await client.server_metadata()).name == "ortserve"
            assert (await client.model_metadata("add")).platform == "onnxruntime_onnx"
            assert (await client.model_config("add")).max_batch_size == 8
            result = await client.infer("add", {"x": X}, request_id="a1")
            assert result.id == "a1"
            np.testing.assert_array_equal(result["y"], X + 2)
            with pytest.raises(NotFoundError):
                await client.model_metadata("ghost")
            with pytest.raises(InvalidArgumentError):
                await client.infer("add", {"x": X.astype(np.int32)})
            requests = [("ghost", {"x": X}), ("add", {"x": X})]
            ghost, added = [r async for r in client.stream_infer(requests)]
            assert isinstance(ghost, NotFoundError)
            assert ghost.request_id == "0"
            assert isinstance(added, ortserve_client.InferResult)
            assert added.id == "1"
            assert (await client.classify("sentiment", ["fine"]))[0].label
            assert (await client.embed("embed", ["fine"])).shape == (1, 8)
            assert isinstance(await client.extract_entities("ner", ["alice"]), list)
            assert (await client.answer("qa", ["who"], ["alice works"]))[0].text
            await client.unload_model("strings")
            await client.load_model("strings")
            assert (await client.statistics("add")).model_stats

    asyncio.run(run())


def test_two_daemons_behind_one_client_both_get_traffic(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    first, second = daemon_factory(repo), daemon_factory(repo)
    with Client([first.address, second.address]) as client:
        for _ in range(40):
            client.infer("add", {"x": X})
    for daemon in (first, second):
        with Client(daemon.address) as single:
            count = single.statistics("add").model_stats[0].inference_count
        assert count > 0, f"{daemon.address} got no traffic"


def test_a_call_sequence_rides_out_a_daemon_restart(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = start_daemon(repo, tmp_path / "a.log")
    errors: list[BaseException] = []
    spans: list[tuple[float, float]] = []
    restarted = threading.Event()
    replacement: list[Daemon] = []

    def calls(client: Client) -> None:
        after = 0
        deadline = time.monotonic() + 90  # bounded whatever happens
        try:
            while time.monotonic() < deadline and after < 10:
                began = time.monotonic()
                client.infer("add", {"x": X})
                spans.append((began, time.monotonic()))
                after += restarted.is_set()
        except BaseException as exc:
            errors.append(exc)

    try:
        with Client(daemon.address, retries=4, wait_for_ready=True, timeout=60) as client:
            worker = threading.Thread(target=calls, args=(client,))
            worker.start()
            while not spans:  # the sequence has started
                assert worker.is_alive(), errors
                time.sleep(0.01)
            assert daemon.stop() == 0
            down_at = time.monotonic()  # nothing listens now
            replacement.append(
                start_daemon(repo, tmp_path / "b.log", "--grpc-port", str(daemon.port))
            )
            up_at = time.monotonic()
            restarted.set()
            worker.join(120)
        assert errors == []
        assert any(began < down_at < ended for began, ended in spans), "a call spanned the restart"
        assert len([began for began, _ in spans if began > up_at]) >= 9
    finally:
        for started in replacement:
            started.stop()


def _can_listen_on_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_several_targets_by_host_name_answer_sync_and_async(daemon: Daemon) -> None:
    targets = [f"localhost:{daemon.port}", daemon.address]  # both reach the one daemon
    with Client(targets, timeout=20) as client:
        assert client.live()
        np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 2)

    async def run() -> None:
        async with AsyncClient(targets, timeout=20) as aclient:
            assert await aclient.live()
            np.testing.assert_array_equal((await aclient.infer("add", {"x": X}))["y"], X + 2)

    asyncio.run(run())


@pytest.mark.skipif(not _can_listen_on_ipv6_loopback(), reason="no IPv6 loopback here")
def test_several_ipv6_literal_targets_answer(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, "--host", "::1", wait_ready=False)
    targets = [f"[::1]:{daemon.port}", f"[0:0:0:0:0:0:0:1]:{daemon.port}"]
    with Client(targets, timeout=20, wait_for_ready=True) as client:
        assert client.live()
        np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 1)

    async def run() -> None:
        async with AsyncClient(targets, timeout=20, wait_for_ready=True) as aclient:
            assert await aclient.live()

    asyncio.run(run())


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_several_targets_refuse_bad_ones_by_name(cls: type[Client] | type[AsyncClient]) -> None:
    with pytest.raises(ValueError, match=r"'no-such-host\.invalid:8001'.*cannot resolve"):
        cls(["127.0.0.1:8001", "no-such-host.invalid:8001"])
    with pytest.raises(ValueError, match=r"target '::1:8001' is not valid.*\[ipv6\]:port"):
        cls(["127.0.0.1:8001", "::1:8001"])
    with pytest.raises(ValueError, match=r"target 'h1' is not valid"):
        cls(["h1", "127.0.0.1:8001"])
    with pytest.raises(ValueError, match=r"target 'localhost:0' has no valid port"):
        cls(["localhost:0", "127.0.0.1:8001"])
    with pytest.raises(ValueError, match=r"\['127\.0\.0\.1:8001'\].*IPv4 only.*\['\[::1\]:8001'\]"):
        cls(["127.0.0.1:8001", "[::1]:8001"])


def test_a_cached_signature_is_refreshed_after_a_hot_reload_changes_inputs(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", add_model(width=4, offset=1.0), version=1)  # x: [-1, 4]
    daemon = daemon_factory(repo, "--settle-seconds", "0.3")
    four, eight = np.ones((1, 4), np.float32), np.ones((1, 8), np.float32)

    async def scenario() -> None:
        async with AsyncClient(daemon.address, timeout=20) as aclient:
            with Client(daemon.address, timeout=20) as client:
                # Each client caches version 1's signature and checks inputs against it.
                assert client.infer("m", {"x": four}).model_version == "1"
                assert (await aclient.infer("m", {"x": four})).model_version == "1"
                with pytest.raises(InvalidArgumentError, match=r"\[1, 8\].*\[-1, 4\]"):
                    client.infer("m", {"x": eight})

                # Version 2 takes x as [-1, 8]; the daemon swaps to it on its own.
                folder = write_model(repo, "m", add_model(width=8, offset=2.0), version=2)
                (folder / "READY").touch()
                deadline = time.monotonic() + 30
                while list(client.model_metadata("m").versions) != ["2"]:
                    assert time.monotonic() < deadline, "version 2 was never served"
                    await asyncio.sleep(0.05)

                # The same client objects now send what version 2 takes...
                result = client.infer("m", {"x": eight})
                assert result.model_version == "2"
                np.testing.assert_array_equal(result["y"], eight + 2)
                aresult = await aclient.infer("m", {"x": eight})
                assert aresult.model_version == "2"
                np.testing.assert_array_equal(aresult["y"], eight + 2)
                # ...and refuse, locally, what it no longer takes, against the fresh signature.
                with pytest.raises(InvalidArgumentError, match=r"\[1, 4\].*\[-1, 8\]"):
                    client.infer("m", {"x": four})
                with pytest.raises(InvalidArgumentError, match=r"\[1, 4\].*\[-1, 8\]"):
                    await aclient.infer("m", {"x": four})

    asyncio.run(scenario())
