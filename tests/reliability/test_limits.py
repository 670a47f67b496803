"""Resource bounds on what one request may carry, with the daemon's peak memory measured.

- A gRPC request is at most 64 MiB (``--max-message-bytes``): larger ones get RESOURCE_EXHAUSTED.
- A text row is at most 1 MiB (``max_text_bytes``), a request at most ``max_batch_size`` rows,
  and only a text's head is tokenized: four 10 MB rows once took the daemon past 5 GB.
- A BYTES tensor declares at most 2**20 elements; the model is looked up before anything is
  decoded, and large payloads decode in a worker thread: ServerLive keeps answering meanwhile.

The peak is the daemon's own VmHWM (Linux), which must stay under ``RSS_LIMIT_MIB``.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory
from tests.factories.onnx_models import add_model, write_model
from tests.factories.text_models import CORPUS, write_text_model

#: The daemon's peak resident memory (VmHWM) after every request below, tiny models loaded.
RSS_LIMIT_MIB = 512
MiB = 2**20
PROSE = " ".join(CORPUS) + " "
MAX_BYTES_ELEMENTS = 2**20  # server/ortserve/protocol/codec.py
TIMEOUT_S = 120.0


def peak_rss_mib(daemon: Daemon) -> float:
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture
def stub_for() -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def make(daemon: Daemon) -> pb_grpc.GRPCInferenceServiceStub:
        # The client side may send more than the daemon takes: the daemon must refuse it.
        channel = grpc.insecure_channel(
            daemon.address,
            options=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
            ],
        )
        channels.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    yield make
    for channel in channels:
        channel.close()


def bytes_request(
    model: str, name: str, items: list[bytes], version: str = "", rows: bool = True
) -> pb.ModelInferRequest:
    """One BYTES input, as raw contents: [rows, 1] (text) or [n]."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    shape = [len(items), 1] if rows else [len(items)]
    request.inputs.add(name=name, datatype="BYTES", shape=shape)
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in items))
    return request


def empty_elements(model: str, name: str, count: int, version: str = "") -> pb.ModelInferRequest:
    """``count`` zero-length BYTES elements: 4 bytes each on the wire, a Python object each once
    decoded (the cost is in the count)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype="BYTES", shape=[count])
    request.raw_input_contents.append(b"\x00\x00\x00\x00" * count)
    return request


def refused(call: object, code: grpc.StatusCode) -> str:
    assert isinstance(call, grpc.RpcError)
    assert call.code() == code, call.details()
    return call.details() or ""


def infer_error(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> object:
    try:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the request was served")


def test_text_is_bounded_and_cut_before_tokenizing(
    tmp_path: Path, daemon_factory: DaemonFactory, stub_for: object
) -> None:
    repo = tmp_path / "repo"
    write_text_model(repo, "sentiment", "text-classification")
    write_text_model(
        repo, "strict", "text-classification",
        config='parameters { key: "truncation" value: { string_value: "false" } }\n',
    )  # fmt: skip
    write_text_model(repo, "qa", "question-answering")
    daemon = daemon_factory(repo)
    stub = stub_for(daemon)  # type: ignore[operator]

    # 8 rows just under the 1 MiB a row may carry: served, as truncation answers (the same
    # scores as for the first few kilobytes of each row), without tokenizing the megabytes.
    long_rows = [(PROSE * (MiB // len(PROSE)))[: MiB - 1].encode() for _ in range(8)]
    answer = stub.ModelInfer(bytes_request("sentiment", "TEXT", long_rows), timeout=TIMEOUT_S)
    heads = stub.ModelInfer(
        bytes_request("sentiment", "TEXT", [row[:4000] for row in long_rows]), timeout=TIMEOUT_S
    )
    scores = [o.name for o in answer.outputs].index("SCORES")
    np.testing.assert_array_equal(
        np.frombuffer(answer.raw_output_contents[scores], np.float32),
        np.frombuffer(heads.raw_output_contents[scores], np.float32),
    )
    assert peak_rss_mib(daemon) < RSS_LIMIT_MIB

    # Four 10 MB rows: refused, naming the input, the row and the limit.
    huge = [b"a " * (5 * 10**6)] * 4
    message = refused(
        infer_error(stub, bytes_request("sentiment", "TEXT", huge)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "input 'TEXT': row 0 has 10000000 bytes" in message
    assert "1048576" in message
    assert "max_text_bytes" in message
    # Where a longer text is refused, its head is enough to refuse it.
    message = refused(
        infer_error(stub, bytes_request("strict", "TEXT", long_rows[:1])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "input 'TEXT': text 0 has more than 64 tokens" in message
    qa = bytes_request("qa", "TEXT", [b"where does alice work"])
    qa.inputs.add(name="TEXT_PAIR", datatype="BYTES", shape=[1, 1])
    qa.raw_input_contents.append(struct.pack("<I", len(long_rows[0])) + long_rows[0])
    message = refused(infer_error(stub, qa), grpc.StatusCode.INVALID_ARGUMENT)
    assert "input 'TEXT_PAIR': context 0 has more than" in message
    # More rows than one batch takes: refused before any is tokenized.
    message = refused(
        infer_error(stub, bytes_request("sentiment", "TEXT", [b"ok"] * 5000)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "input 'TEXT': 5000 rows do not fit in one batch" in message
    assert peak_rss_mib(daemon) < RSS_LIMIT_MIB


def test_a_request_over_64_mib_is_refused(
    tmp_path: Path, daemon_factory: DaemonFactory, stub_for: object
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    stub = stub_for(daemon)  # type: ignore[operator]
    big = pb.ModelInferRequest(model_name="add")
    big.inputs.add(name="x", datatype="FP32", shape=[(64 * MiB + 16) // 16, 4])
    big.raw_input_contents.append(bytes(64 * MiB + 16))
    message = refused(infer_error(stub, big), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in message
    # Just under the limit is read (and answered: here, too many rows for one batch).
    under = pb.ModelInferRequest(model_name="add")
    under.inputs.add(name="x", datatype="FP32", shape=[(60 * MiB) // 16, 4])
    under.raw_input_contents.append(bytes(60 * MiB))
    refused(infer_error(stub, under), grpc.StatusCode.INVALID_ARGUMENT)
    assert peak_rss_mib(daemon) < RSS_LIMIT_MIB


def test_bytes_elements_are_bounded_and_the_model_looked_up_first(
    tmp_path: Path, daemon_factory: DaemonFactory, stub_for: object
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    stub = stub_for(daemon)  # type: ignore[operator]
    # The model and version are looked up first: NOT_FOUND, whatever the payload.
    for model, version in (("nope", ""), ("add", "99")):
        request = empty_elements(model, "s", MAX_BYTES_ELEMENTS, version)
        request.raw_input_contents[0] = request.raw_input_contents[0][:-1]  # malformed too
        message = refused(infer_error(stub, request), grpc.StatusCode.NOT_FOUND)
        assert model in message
    # More BYTES elements than one tensor may carry: refused before decoding, naming it.
    message = refused(
        infer_error(stub, empty_elements("add", "s", MAX_BYTES_ELEMENTS + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert f"input 's': shape [{MAX_BYTES_ELEMENTS + 1}] declares" in message
    assert f"more than the {MAX_BYTES_ELEMENTS} one BYTES tensor may carry" in message
    assert peak_rss_mib(daemon) < RSS_LIMIT_MIB


def test_server_live_answers_while_a_large_request_decodes(
    tmp_path: Path, daemon_factory: DaemonFactory, stub_for: object
) -> None:
    """Each large request is 4 MiB on the wire (sent in milliseconds) but 2**20 elements to
    decode (a Python object each). While one is in flight, another client's ServerLive calls
    must keep being answered: decoding runs off the event loop."""
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo)
    big_stub = stub_for(daemon)  # type: ignore[operator]
    live_stub = stub_for(daemon)  # type: ignore[operator]
    answered: list[float] = []
    done = threading.Event()
    started = threading.Event()

    def probe() -> None:
        for _ in range(100_000):  # bounded; ends when the large requests are answered
            if done.is_set():
                return
            assert live_stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
            answered.append(time.monotonic())
            started.set()

    prober = threading.Thread(target=probe)
    prober.start()
    flights: list[tuple[float, float]] = []
    try:
        # The prober is under way before the first large request goes.
        assert started.wait(TIMEOUT_S)
        for _ in range(3):
            sent = time.monotonic()
            # "s" is no input of the model: refused as soon as it is decoded, so the time in
            # flight is the decoding.
            message = refused(
                infer_error(big_stub, empty_elements("add", "s", MAX_BYTES_ELEMENTS)),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "'s'" in message
            flights.append((sent, time.monotonic()))
    finally:
        done.set()
        prober.join(TIMEOUT_S)
    during = [sum(1 for t in answered if start < t < end) for start, end in flights]
    # Decoding on the loop, it answers none meanwhile (only a few before decoding starts);
    # off it, hundreds.
    assert min(during) >= 50, during
    assert peak_rss_mib(daemon) < RSS_LIMIT_MIB
