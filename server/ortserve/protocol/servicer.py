"""The GRPCInferenceService servicer: thin methods around the transport-free data plane.

Errors are not handled here: protocol/status.py's interceptor maps every domain error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ortserve.errors import Disabled, InvalidInput, ModelNotReady, Unsupported, shown
from ortserve.inference import InferenceService, InferRequest
from ortserve.lifecycle import StateView
from ortserve.protocol import codec, metadata
from ortserve.protocol.status import CONTROL_EXCEPTIONS, ShutdownHold, describe
from ortserve.registry.models import ModelRegistry
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]

#: Triton extensions this daemon really implements (ServerMetadata advertises exactly these).
EXTENSIONS: tuple[str, ...] = (
    "classification",
    "model_configuration",
    "schedule_policy",
    "statistics",
)
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
#: Requests one ModelStreamInfer stream may have unanswered at once.
STREAM_WINDOW = 128

#: Added when repository control (load/unload over gRPC) is switched on.
REPOSITORY_EXTENSIONS: tuple[str, ...] = ("model_repository", "model_repository(unload_dependents)")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        inference: InferenceService,
        version: str,
        state: StateView,
        hold: ShutdownHold,
        control_hint: str | None = None,
    ) -> None:
        """``state``: the daemon's, read by ServerReady and ServerLive. ``hold``: the daemon's
        hold of new calls just before the server stops (open streams end with it).
        ``control_hint`` None: repository control is on; else why it is off and how to turn it
        on (sent with UNAVAILABLE)."""
        self._registry = registry
        self._inference = inference
        self._version = version
        self._control_hint = control_hint
        self._extensions = EXTENSIONS + (REPOSITORY_EXTENSIONS if control_hint is None else ())
        self._state = state
        self.hold = hold

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._state.live)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._state.ready)

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

    async def _decoded(self, request: pb.ModelInferRequest, context: Context) -> InferRequest:
        """The request as the data plane takes it. The model first: a request to an unknown
        model or version is answered before any of its tensors is decoded; large payloads then
        decode off the loop."""
        self._inference.check_target(request.model_name, request.model_version)
        try:
            decoded = await codec.decode_infer_request_async(request)
        except InvalidInput as exc:
            raise self._inference.undecodable(request.model_name, exc) from None
        decoded.timeout_s = context.time_remaining()
        return decoded

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        decoded = await self._decoded(request, context)  # large answers encode off the loop too
        return await codec.encode_infer_response_async(await self._inference.infer(decoded))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently; answers come back as they are made, each carrying its
        request's id: one per request for most models, one or more for a decoupled model (a
        generation model's text as it is generated), each of those with the response parameter
        ``triton_final_response`` (true on its request's last). A failed request answers with
        ``error_message`` ("[CODE] message"), as its last answer, and the stream goes on. The
        stream ends when the client closes its side (OK), at a message that is not a
        ModelInferRequest (INVALID_ARGUMENT), or when the server is about to stop (UNAVAILABLE:
        what has no answer did not run); each time only after every request read before has been
        answered. A stream cancelled by the client stops its requests' work (a generation's row
        is freed at the engine's next step). Once a shutdown has begun, each request read is
        answered UNAVAILABLE at once: a client should then stop writing and close its side."""
        # Each item: an answer to write (None: none) and whether it was its request's last.
        answers: asyncio.Queue[tuple[pb.ModelStreamInferResponse | None, bool] | None]
        answers = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        # Requests of a stream in flight at once: beyond it the stream is not read (gRPC's flow
        # control then holds the client back), as --max-concurrent-rpcs does for calls.
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                async for response in self._responses(request, context):
                    answer = pb.ModelStreamInferResponse(infer_response=response)
                    answers.put_nowait((answer, False))
            except BaseException as exc:  # each request's failure is its own (last) answer
                if isinstance(exc, CONTROL_EXCEPTIONS):
                    raise
                answers.put_nowait((self._error_answer(request, exc), True))
            else:
                answers.put_nowait((None, True))

        async def admit() -> None:
            async for request in request_iterator:
                self.hold.arrived()  # a stream still written to keeps the server from stopping
                await window.acquire()
                task = asyncio.ensure_future(one(request))
                running.add(task)
                task.add_done_callback(running.discard)

        async def read() -> None:
            reading = asyncio.ensure_future(admit())
            closed = asyncio.ensure_future(self.hold.streams_end())
            try:
                await asyncio.wait([reading, closed], return_when=asyncio.FIRST_COMPLETED)
                reading.cancel()  # the server is about to stop: read no more (no-op if ended)
                await asyncio.wait([reading])
                if running:  # whatever ended the reading, what was read is answered first
                    await asyncio.wait(list(running))
                if reading.cancelled():
                    raise ModelNotReady(
                        "the server is shutting down: the requests of this stream that have no "
                        "answer did not run; send them to another replica"
                    )
                reading.result()  # a message that could not be read: the stream ends with why
            finally:
                reading.cancel()
                closed.cancel()
                answers.put_nowait(None)  # the writer stops; awaiting the reader says why

        reader = asyncio.ensure_future(read())
        try:
            while (item := await answers.get()) is not None:
                answer, last = item
                if answer is not None:
                    yield answer
                if last:
                    window.release()
            await reader
        finally:  # the client cancelled, or the stream failed: in-flight requests stop here
            for task in (reader, *running):
                task.cancel()

    async def _responses(
        self, request: pb.ModelInferRequest, context: Context
    ) -> AsyncIterator[pb.ModelInferResponse]:
        """One streamed request's answers, as ``ModelInfer`` checks and decodes it."""
        decoded = await self._decoded(request, context)
        async with contextlib.aclosing(self._inference.infer_stream(decoded)) as responses:
            async for response in responses:
                yield await codec.encode_infer_response_async(response)

    def _error_answer(
        self, request: pb.ModelInferRequest, exc: BaseException
    ) -> pb.ModelStreamInferResponse:
        code, message = describe(exc, _STREAM)
        answer = pb.ModelStreamInferResponse(error_message=f"[{code.name}] {message}")
        answer.infer_response.model_name = request.model_name
        answer.infer_response.id = request.id
        if self._inference.is_decoupled(request.model_name, request.model_version):
            answer.infer_response.parameters[codec.FINAL_RESPONSE].bool_param = True
        return answer

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
        self._check_control(request.repository_name)
        config: str | None = None
        files: dict[str, bytes] = {}
        for key, param in request.parameters.items():
            given = param.WhichOneof("parameter_choice")
            if key == "config" and given == "string_param":
                config = param.string_param
            elif key.startswith("file:") and given == "bytes_param":
                files[key.removeprefix("file:")] = param.bytes_param
            elif key == "config" or key.startswith("file:"):
                wanted = "string_param (JSON)" if key == "config" else "bytes_param"
                raise InvalidInput(
                    f"RepositoryModelLoad: parameter {shown(key)} must be a {wanted}, got "
                    f"{given or 'no value'}"
                )
            else:
                raise InvalidInput(f"RepositoryModelLoad: unknown parameter {shown(key)}")
        await self._registry.load(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_control(request.repository_name)
        # unload_dependents is accepted; ortserve has no ensembles, so nothing depends on a model.
        await self._registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _check_control(self, repository_name: str) -> None:
        if self._control_hint is not None:
            raise Disabled(self._control_hint)
        if repository_name:
            raise Unsupported("this daemon serves one repository; leave repository_name empty")

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
