"""grpc.health.v1 (overall and per model) and server reflection, beside the inference service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from ortserve.lifecycle import StateView
from ortserve_client.proto import grpc_service_pb2, model_config_pb2

INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Health statuses: "" for the whole server, the service name, and one per model name.

    The server's status follows the daemon's state (SERVING only while it is ready); the health
    service keeps statuses and pushes them to watchers, so the daemon calls ``publish_server``
    after each move of its state."""

    def __init__(self, server: grpc.aio.Server, state: StateView) -> None:
        self._state = state
        self.servicer = HealthServicer()  # grpc.health.v1's, registered on the server
        self._updates: set[asyncio.Task[None]] = set()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def model_changed(self, name: str, ready: bool) -> None:
        """A registry listener: a model started or stopped serving."""
        task = asyncio.get_running_loop().create_task(self.set_models([(name, ready)]))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def publish_server(self) -> None:
        """Set the server's status from the daemon's state (grpc's starts as SERVING)."""
        status = SERVING if self._state.ready else NOT_SERVING
        await self.servicer.set("", status)
        await self.servicer.set(INFERENCE_SERVICE, status)

    async def set_models(self, states: Iterable[tuple[str, bool]]) -> None:
        for name, ready in states:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)


def enable_reflection(server: grpc.aio.Server) -> None:
    """Reflection over a pool holding every service this server offers.

    The inference messages live in ortserve's private pool (see protos/generate.py), health and
    reflection in protobuf's default one, so reflection gets a pool of its own with all of them.
    """
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    names = (
        INFERENCE_SERVICE,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server, pool=pool)
