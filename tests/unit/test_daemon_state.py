"""The daemon's one state (STARTING, READY, DRAINING, STOPPED): its moves, and readiness as
the servicer and the health service report it. The daemon is the one app.build wires; its gRPC
server is never bound to a port, so nothing here touches the network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from ortserve.app import build
from ortserve.daemon import Daemon
from ortserve.errors import ModelNotReady
from ortserve.inference import InferRequest
from ortserve.lifecycle import TRANSITIONS, Admission, DaemonState, Lifecycle
from ortserve.protocol.health import INFERENCE_SERVICE
from ortserve.settings import ServeSettings
from ortserve_client.proto import grpc_service_pb2 as pb
from tests.factories.onnx_models import add_model, write_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LEGAL = [
    (DaemonState.STARTING, DaemonState.READY),
    (DaemonState.STARTING, DaemonState.STOPPED),  # a stop signal during start-up
    (DaemonState.READY, DaemonState.DRAINING),
    (DaemonState.DRAINING, DaemonState.STOPPED),
]


def _at(state: DaemonState) -> Lifecycle:
    """A lifecycle moved to ``state`` along the legal path."""
    lifecycle = Lifecycle()
    path = {
        DaemonState.STARTING: [],
        DaemonState.READY: [DaemonState.READY],
        DaemonState.DRAINING: [DaemonState.READY, DaemonState.DRAINING],
        DaemonState.STOPPED: [DaemonState.READY, DaemonState.DRAINING, DaemonState.STOPPED],
    }[state]
    for step in path:
        lifecycle.advance(step)
    return lifecycle


def test_the_legal_moves_are_exactly_these() -> None:
    assert {(a, b) for a, nexts in TRANSITIONS.items() for b in nexts} == set(LEGAL)
    assert Lifecycle().state is DaemonState.STARTING


@pytest.mark.parametrize("origin", list(DaemonState))
@pytest.mark.parametrize("target", list(DaemonState))
def test_any_other_move_is_refused(origin: DaemonState, target: DaemonState) -> None:
    lifecycle = _at(origin)
    if (origin, target) in LEGAL:
        lifecycle.advance(target)
        assert lifecycle.state is target
        return
    with pytest.raises(RuntimeError, match=f"from {origin.value} to {target.value}"):
        lifecycle.advance(target)
    assert lifecycle.state is origin


@pytest.mark.parametrize(
    ("state", "ready", "live"),
    [
        (DaemonState.STARTING, False, True),
        (DaemonState.READY, True, True),
        (DaemonState.DRAINING, False, True),
        (DaemonState.STOPPED, False, False),
    ],
)
def test_ready_only_while_serving(state: DaemonState, ready: bool, live: bool) -> None:
    lifecycle = _at(state)
    assert (lifecycle.ready, lifecycle.live) == (ready, live)


async def test_reached_waits_for_a_state() -> None:
    lifecycle = Lifecycle()
    await asyncio.wait_for(lifecycle.reached(DaemonState.STARTING), 1)  # already there
    ready = asyncio.ensure_future(lifecycle.reached(DaemonState.READY))
    await asyncio.sleep(0)
    assert not ready.done()
    lifecycle.advance(DaemonState.READY)
    await asyncio.wait_for(ready, 1)


async def test_admission_counts_every_request_in_and_out() -> None:
    admission = Admission()
    idle = asyncio.ensure_future(admission.wait_idle())
    await asyncio.sleep(0)
    assert idle.done()  # nothing admitted: idle at once
    with admission.counted():
        waiting = asyncio.ensure_future(admission.wait_idle())
        await asyncio.sleep(0)
        assert not waiting.done()
        assert (admission.admitted, admission.answered, admission.in_flight) == (1, 0, 1)
    await asyncio.wait_for(waiting, 5)
    with pytest.raises(_Failed), admission.counted():  # a failure is an answer too
        raise _Failed
    assert (admission.admitted, admission.answered, admission.in_flight) == (2, 2, 0)
    assert admission.open
    admission.close()
    assert not admission.open


class _Failed(Exception):
    pass


def _daemon(tmp_path: Path, **overrides: Any) -> Daemon:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    settings = ServeSettings(model_repository=repo, model_control_mode="none", **overrides)
    built = build(settings)
    assert built is not None
    return built[0]


async def _seen(daemon: Daemon) -> tuple[bool, bool, int, int]:
    """ServerReady, ServerLive, and the health statuses of the server and of its service."""
    ready = await daemon.servicer.ServerReady(pb.ServerReadyRequest(), None)  # type: ignore[arg-type]
    live = await daemon.servicer.ServerLive(pb.ServerLiveRequest(), None)  # type: ignore[arg-type]
    statuses = [
        (
            await daemon.health.servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
        ).status
        for name in ("", INFERENCE_SERVICE)
    ]
    return ready.ready, live.live, statuses[0], statuses[1]


async def test_readiness_follows_the_state_through_a_drain_cut_short(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, drain_seconds=60.0, grace_seconds=5.0)
    await daemon.start()
    assert await _seen(daemon) == (False, True, NOT_SERVING, NOT_SERVING)
    assert await daemon.load()
    assert daemon.state is DaemonState.STARTING  # loaded, not yet open
    await daemon.open()
    assert daemon.state is DaemonState.READY
    assert await _seen(daemon) == (True, True, SERVING, SERVING)
    model = await daemon.health.servicer.Check(health_pb2.HealthCheckRequest(service="add"), None)
    assert model.status == SERVING

    daemon.request_stop()
    serving = asyncio.ensure_future(daemon.serve_until_stopped())
    await asyncio.wait_for(daemon.lifecycle.reached(DaemonState.DRAINING), 10)
    # Within the drain delay: not ready, still live, and still taking requests.
    assert await _seen(daemon) == (False, True, NOT_SERVING, NOT_SERVING)
    assert daemon.inference.admission.open
    daemon.request_stop()  # a second signal: the 60 s drain delay is cut short
    await asyncio.wait_for(serving, 10)
    assert daemon.state is DaemonState.STOPPED
    ready, live, *_ = await _seen(daemon)
    assert (ready, live) == (False, False)


async def test_a_drain_refuses_new_requests_once_the_delay_is_over(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, drain_seconds=0.0, grace_seconds=5.0)
    await daemon.start()
    assert await daemon.load()
    await daemon.open()
    daemon.request_stop()
    await asyncio.wait_for(daemon.serve_until_stopped(), 10)
    assert daemon.state is DaemonState.STOPPED
    assert not daemon.inference.admission.open
    request = InferRequest(model_name="add", model_version="", id="1", inputs=[], outputs=[])
    with pytest.raises(ModelNotReady, match="shutting down"):
        await daemon.inference.infer(request)
    assert daemon.inference.admission.admitted == 0


async def test_a_stop_during_start_up_never_serves(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    await daemon.start()
    daemon.request_stop()
    assert not await daemon.load()
    assert daemon.state is DaemonState.STOPPED
    ready, live, server, _ = await _seen(daemon)
    assert (ready, live, server) == (False, False, NOT_SERVING)
