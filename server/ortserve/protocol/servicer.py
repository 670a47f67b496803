"""The GRPCInferenceService servicer: thin methods around the transport-free data plane.

Errors are not handled here: protocol/status.py's interceptor maps every domain error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from ortserve.errors import Unsupported
from ortserve.inference import InferenceService
from ortserve.protocol import codec, metadata
from ortserve.registry.models import ModelRegistry
from ortserve_client._proto import grpc_service_pb2 as pb
from ortserve_client._proto import grpc_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]

#: Triton extensions this daemon really implements (ServerMetadata advertises exactly these).
EXTENSIONS: tuple[str, ...] = ("model_configuration", "schedule_policy", "statistics")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        inference: InferenceService,
        version: str,
        extensions: Sequence[str] = EXTENSIONS,
    ) -> None:
        self._registry = registry
        self._inference = inference
        self._version = version
        self._extensions = tuple(extensions)
        self.ready = False  # set by the app once the repository is loaded

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._registry.is_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return metadata.server_metadata(self._version, self._extensions)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        served = self._registry.resolve(request.name, request.version)
        return metadata.model_metadata(served, self._registry.entry(request.name).versions)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        decoded = codec.decode_infer_request(request)
        decoded.timeout_s = context.time_remaining()
        return codec.encode_infer_response(await self._inference.infer(decoded))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        raise Unsupported("ModelStreamInfer is not offered yet; use ModelInfer")
        yield pb.ModelStreamInferResponse()  # pragma: no cover - makes this an async generator

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        return metadata.model_config(self._registry.resolve(request.name, request.version).config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        return metadata.model_statistics(self._registry.served(request.name, request.version))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise Unsupported("this daemon serves one repository; leave repository_name empty")
        return metadata.repository_index(self._registry.index(), request.ready)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        raise Unsupported("RepositoryModelLoad is not offered yet (model control)")

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        raise Unsupported("RepositoryModelUnload is not offered yet (model control)")

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        return pb.SystemSharedMemoryStatusResponse()  # no regions: none can be registered

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        raise Unsupported("shared-memory inputs are not offered; send tensors in the request")

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        raise Unsupported("shared-memory inputs are not offered; send tensors in the request")

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise Unsupported("CUDA shared-memory inputs are not offered; send tensors in the request")

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        raise Unsupported("CUDA shared-memory inputs are not offered; send tensors in the request")

    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: Context
    ) -> pb.TraceSettingResponse:
        raise Unsupported("tracing is not offered")

    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: Context
    ) -> pb.LogSettingsResponse:
        raise Unsupported("log settings are set by flags at start-up (--log-level, --log-format)")
