"""SIGTERM under load, and a flood beyond the queue: nothing admitted is dropped, the refusals are
quick and clear, and the daemon recovers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Daemon, DaemonFactory
from tests.factories.onnx_models import add_model, slow_load_config, slow_model, write_model

SLOW = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'


def _request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    return request


def test_sigterm_under_32_way_load(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, "--drain-seconds", "1", "--grace-seconds", "10")
    outcomes: Counter[str] = Counter()
    health_seen: list[tuple[float, int]] = []
    served_during_drain: list[float] = []

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            stop = time.monotonic() + 30
            signalled: list[float] = []

            async def client() -> None:
                while time.monotonic() < stop:
                    try:
                        await stub.ModelInfer(_request("add"), timeout=15)
                        outcomes["OK"] += 1
                        if signalled and health_seen and health_seen[-1][1] != 1:
                            served_during_drain.append(time.monotonic())
                    except grpc.aio.AioRpcError as error:
                        outcomes[error.code().name] += 1
                        if error.code() != grpc.StatusCode.OK and daemon.process.poll() is not None:
                            return
                        await asyncio.sleep(0.02)

            async def watch_health() -> None:
                while time.monotonic() < stop and daemon.process.poll() is None:
                    try:
                        reply = await health.Check(
                            health_pb2.HealthCheckRequest(service=""), timeout=2
                        )
                        health_seen.append((time.monotonic(), int(reply.status)))
                    except grpc.aio.AioRpcError:
                        return
                    await asyncio.sleep(0.02)

            async def terminate() -> None:
                await asyncio.sleep(1.0)
                signalled.append(time.monotonic())
                daemon.process.send_signal(signal.SIGTERM)

            await asyncio.gather(terminate(), watch_health(), *(client() for _ in range(32)))

    asyncio.run(scenario())
    assert daemon.process.wait(30) == 0
    log = daemon.log_records()
    done = next(r for r in log if r.get("event") == "requests")
    # Every request the daemon admitted was answered, and every OK the clients saw was one of them.
    assert done["admitted"] == done["answered"]
    assert outcomes["OK"] <= done["answered"]
    assert outcomes["OK"] > 100
    # Health went NOT_SERVING while requests were still being served (the drain delay).
    statuses = [s for _, s in health_seen]
    assert health_pb2.HealthCheckResponse.SERVING in statuses
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert served_during_drain, "requests kept being served after health said NOT_SERVING"
    # What the clients saw besides OK: the refusals of a stopping server, never a lost answer
    # (nor CANCELLED, which gRPC itself gives a call that reaches it once its stop has begun).
    assert set(outcomes) <= ACCOUNTED, outcomes
    events = [r.get("event") for r in log]
    assert events.index("stopping") < events.index("requests") < events.index("stopped")


def test_flood_beyond_the_queue_is_refused_quickly_then_recovers(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", slow_model(size=768),
                config="max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 4 } }\n"
                + SLOW)  # fmt: skip
    daemon = daemon_factory(repo)

    details: set[str] = set()

    async def flood() -> tuple[Counter[str], float, int]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> tuple[str, float]:
                started = time.monotonic()
                try:
                    await stub.ModelInfer(_request("slow"), timeout=60)
                    return "OK", time.monotonic() - started
                except grpc.aio.AioRpcError as error:
                    details.add(error.details() or "")
                    return error.code().name, time.monotonic() - started

            results = await asyncio.gather(*(one() for _ in range(200)))
            counts = Counter(code for code, _ in results)
            slowest_refusal = max(
                (t for code, t in results if code == "RESOURCE_EXHAUSTED"), default=0.0
            )
            longest_ok = max(t for code, t in results if code == "OK")
            after = await stub.ModelInfer(_request("slow"), timeout=60)
            return counts, slowest_refusal - longest_ok, len(after.raw_output_contents)

    counts, refusal_vs_service, outputs = asyncio.run(flood())
    assert set(counts) == {"OK", "RESOURCE_EXHAUSTED"}
    assert counts["RESOURCE_EXHAUSTED"] >= 150
    assert details == {"model 'slow' version 1: the queue is full (4 requests waiting)"}
    # Refusals come at once, not after waiting behind the queue: the slowest refusal still
    # came back before the longest-waiting served request did.
    assert refusal_vs_service < 0
    assert outputs == 1  # and the daemon serves normally afterwards


def _wait_for_event(daemon: Daemon, event: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(r.get("event") == event for r in daemon.log_records()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} log line within {seconds} s")


def test_a_second_signal_stops_at_once(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, "--drain-seconds", "60")
    daemon.process.send_signal(signal.SIGTERM)
    _wait_for_event(daemon, "stopping", 20)
    signalled = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(20) == 0
    assert time.monotonic() - signalled < 15, "the drain delay (60 s) was not cut short"
    events = [r.get("event") for r in daemon.log_records()]
    assert "second signal: stopping at once" in events
    assert events[-1] == "stopped"


def test_a_signal_during_start_up_stops_without_serving(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    # Loaded in name order: "b_slow" is still warming up when the signal comes; "c_add" is next.
    write_model(repo, "b_slow", slow_model(size=768), config=slow_load_config(warmup_runs=60))
    write_model(repo, "c_add", add_model())
    daemon = daemon_factory(repo, wait_ready=False)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(60) == 0
    events = [r.get("event") for r in daemon.log_records()]
    assert "stopping during start-up: models not all loaded" in events
    assert "ready" not in events
    loaded = [r.get("model") for r in daemon.log_records() if r.get("event") == "version loaded"]
    assert "c_add" not in loaded


#: What a client may see for a request it sent while the daemon stops: its answer, or UNAVAILABLE
#: (the request did not run: retry it elsewhere). Never CANCELLED, INTERNAL or UNKNOWN.
ACCOUNTED = {"OK", "UNAVAILABLE"}


def _stream_request(model: str, request_id: str) -> pb.ModelInferRequest:
    request = _request(model)
    request.id = request_id
    return request


def _answer_code(answer: pb.ModelStreamInferResponse) -> str:
    """OK, or the code a failed request's ``error_message`` ("[CODE] message") names."""
    if not answer.error_message:
        return "OK"
    return answer.error_message.partition("]")[0].lstrip("[")


class _Outcomes:
    """One outcome per request a client sent, counted by status code on the client side."""

    def __init__(self) -> None:
        self.sent = 0
        self.codes: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # code and where -> one message that came with it
        self.stream_ends: Counter[str] = Counter()  # how each stream open at the end ended

    def add(self, code: str, where: str, detail: str = "") -> None:
        self.codes[code] += 1
        self.examples.setdefault(f"{code} ({where})", detail[:100])


def test_sigterm_under_unary_and_stream_load_answers_every_request_sent(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """16 unary clients and 4 stream clients (each stream keeping up to 16 requests unanswered)
    send until the daemon has exited, and retry what was refused, as clients do. At its first
    UNAVAILABLE answer, a stream client either closes its side, as the daemon asks, or (two of
    them) writes on, slower; when its stream ends it opens another. Every request a client sent
    is answered, or refused with UNAVAILABLE (alone, or as the status that ends its stream):
    none is lost, CANCELLED or INTERNAL."""
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    write_model(repo, "slow", slow_model(size=256), config="max_batch_size: 8\n"
                "dynamic_batching { max_queue_delay_microseconds: 2000 }\n" + SLOW)  # fmt: skip
    daemon = daemon_factory(repo, "--drain-seconds", "0.5", "--grace-seconds", "10")
    seen = _Outcomes()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stop = time.monotonic() + 40

            def running() -> bool:
                return time.monotonic() < stop and daemon.process.poll() is None

            async def unary() -> None:
                while running():
                    seen.sent += 1
                    try:
                        await stub.ModelInfer(_request("add"), timeout=20)
                        seen.add("OK", "unary")
                    except grpc.aio.AioRpcError as error:
                        seen.add(error.code().name, "unary", error.details() or "")
                        await asyncio.sleep(0.02)  # then retry

            async def streams(client: int) -> None:
                for opened in range(10_000):
                    if not running():
                        return
                    await one_stream(f"{client}-{opened}", closes=client % 2 == 0)
                    await asyncio.sleep(0.02)  # then open another one

            async def one_stream(prefix: str, closes: bool) -> None:
                call = stub.ModelStreamInfer(timeout=20)
                unanswered: set[str] = set()
                room = asyncio.Semaphore(16)
                refused = asyncio.Event()  # an answer said UNAVAILABLE

                async def write() -> None:
                    for index in range(100_000):
                        await room.acquire()
                        if not running() or (closes and refused.is_set()):
                            with contextlib.suppress(grpc.aio.AioRpcError):
                                await call.done_writing()  # then read the answers left
                            return
                        if refused.is_set():
                            await asyncio.sleep(0.02)
                        request_id = f"{prefix}-{index}"
                        unanswered.add(request_id)
                        try:
                            await call.write(_stream_request("slow", request_id))
                        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                            unanswered.discard(request_id)  # not sent: the write said so
                            return
                        seen.sent += 1

                writer = asyncio.ensure_future(write())
                try:
                    async for answer in call:
                        request_id = answer.infer_response.id
                        assert request_id in unanswered, (
                            f"answered twice, or never sent: {request_id}"
                        )
                        unanswered.discard(request_id)
                        code = _answer_code(answer)
                        seen.add(code, "stream answer", answer.error_message)
                        if code == "UNAVAILABLE":
                            refused.set()
                        room.release()
                    end, detail = "OK", ""
                except grpc.aio.AioRpcError as error:
                    end, detail = error.code().name, error.details() or ""
                finally:
                    writer.cancel()
                    await asyncio.wait([writer])
                if end != "OK":
                    seen.stream_ends[f"{end}: {detail[:60]}"] += 1
                for _ in unanswered:  # the status that ended the stream is their answer
                    seen.add(end, "stream end", detail)

            async def terminate() -> None:
                await asyncio.sleep(1.5)
                daemon.process.send_signal(signal.SIGTERM)

            await asyncio.gather(
                terminate(), *(unary() for _ in range(16)), *(streams(n) for n in range(4))
            )

    asyncio.run(scenario())
    assert daemon.process.wait(30) == 0
    report = f"{dict(seen.codes)}; {seen.examples}; stream ends {dict(seen.stream_ends)}"
    assert set(seen.codes) <= ACCOUNTED, report
    assert sum(seen.codes.values()) == seen.sent, report
    assert seen.codes["OK"] > 200, report
    # A stream still written to once admission closed answered each request read UNAVAILABLE.
    assert "UNAVAILABLE (stream answer)" in seen.examples, report
    # The daemon ended its open streams itself (UNAVAILABLE, "shutting down") once their requests
    # were answered, instead of keeping them open until gRPC cancelled them at the end of the
    # grace period; a stream opened once the daemon had stopped listening failed to connect.
    assert all("shutting down" in end or "connect" in end for end in seen.stream_ends), report
    assert any("shutting down" in end for end in seen.stream_ends), report
    done = next(r for r in daemon.log_records() if r.get("event") == "requests")
    assert done["admitted"] == done["answered"]
