"""The asyncio client: the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from ortserve_client import _calls, generation, tasks
from ortserve_client._base import (
    InferResult,
    Inputs,
    Parameters,
    channel_settings,
)
from ortserve_client.errors import InferenceServerError, from_rpc_error
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array

T = TypeVar("T")


async def _each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncClient:
    """``Client`` for asyncio; same arguments, every call awaited.

    Example::

        import asyncio
        import numpy as np
        from ortserve_client import AsyncClient

        async def main() -> None:
            async with AsyncClient("127.0.0.1:8001") as client:
                result = await client.infer("add", {"x": np.ones((1, 4), np.float32)})
                print(result["y"])

        asyncio.run(main())
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        retries: int = 4,
        keepalive_s: float | None = 30.0,
        validate: bool = True,
        wait_for_ready: bool = False,
    ) -> None:
        settings = channel_settings(
            targets, tls=tls, root_certificates=root_certificates,
            certificate_chain=certificate_chain, private_key=private_key, token=token,
            retries=retries, keepalive_s=keepalive_s, server_name=server_name,
        )  # fmt: skip
        if settings.credentials is None:
            self._channel = grpc.aio.insecure_channel(settings.target, options=settings.options)
        else:
            self._channel = grpc.aio.secure_channel(
                settings.target, settings.credentials, options=settings.options
            )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = settings.metadata
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        self._signatures = _calls.Signatures(validate)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, call: _calls.Call[T], timeout: float | None) -> T:
        method = getattr(self._stub, call.rpc)
        try:
            response = await method(
                call.request,
                timeout=timeout or self._timeout,
                metadata=self._metadata,
                wait_for_ready=self._wait_for_ready,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, call.model) from None
        return call.parse(response)

    async def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live. ``await client.live()``"""
        return await self._call(_calls.live(), timeout)

    async def ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server is ready. ``await client.ready()``"""
        return await self._call(_calls.ready(), timeout)

    async def model_ready(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> bool:
        """Whether a model (version) is ready. ``await client.model_ready("add")``"""
        return await self._call(_calls.model_ready(model, version), timeout)

    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        """Name, version, extensions. ``(await client.server_metadata()).extensions``"""
        return await self._call(_calls.server_metadata(), timeout)

    async def model_metadata(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        """Inputs, outputs, versions. ``(await client.model_metadata("add")).inputs``"""
        return await self._call(_calls.model_metadata(model, version), timeout)

    async def model_config(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's config. ``(await client.model_config("add")).max_batch_size``"""
        return await self._call(_calls.model_config(model, version), timeout)

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Every model folder with state and reason. ``await client.repository_index()``"""
        return await self._call(_calls.repository_index(ready_only), timeout)

    async def load_model(
        self,
        model: str,
        *,
        config: Mapping[str, Any] | str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Load or reload a model. ``await client.load_model("add")``"""
        self._signatures.drop(model)  # a reload may change any version
        await self._call(_calls.load_model(model, config, files), timeout)

    async def unload_model(
        self, model: str, *, unload_dependents: bool = False, timeout: float | None = None
    ) -> None:
        """Drain and unload a model. ``await client.unload_model("add")``"""
        await self._call(_calls.unload_model(model, unload_dependents), timeout)

    async def statistics(
        self, model: str = "", version: str | None = None, *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton-style statistics. ``(await client.statistics("add")).model_stats``"""
        return await self._call(_calls.statistics(model, version), timeout)

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        request_id: str | None = None,
        parameters: Parameters | None = None,
        queue_timeout_us: int | None = None,
        class_counts: Mapping[str, int] | None = None,
        as_str: bool = False,
    ) -> InferResult:
        """Run a model (see ``Client.infer``). ``(await client.infer("add", {"x": x}))["y"]``"""
        options = _calls.InferOptions(
            version,
            outputs,
            priority,
            request_id,
            parameters,
            queue_timeout_us,
            class_counts,
            as_str,
        )
        arrays = await self._checked_arrays(model, version, inputs, timeout)
        request = _calls.infer_request(model, arrays, options)
        try:
            return await self._call(_calls.infer(request, as_str), timeout)
        except InferenceServerError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                self._signatures.drop(model, version or "")
            raise

    async def _checked_arrays(
        self, model: str, version: str | None, inputs: Inputs, timeout: float | None
    ) -> dict[str, Array]:
        """Inputs as arrays, checked against the model's signature (see ``_calls.Signatures``)."""
        arrays = _calls.input_arrays(inputs, model)
        if self._signatures.needs_fetch(model, version, arrays):  # none cached, or it refuses
            metadata = await self.model_metadata(model, version, timeout=timeout)
            self._signatures.check_fetched(model, version, arrays, metadata)
        return arrays

    async def stream_infer(
        self,
        requests: Iterable[tuple[str, Inputs]] | AsyncIterable[tuple[str, Inputs]],
        *,
        timeout: float | None = None,
        as_str: bool = False,
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        """ModelStreamInfer (see ``Client.stream_infer``): one result per request, in the order
        of the requests; request ``i`` is sent with the id ``str(i)``, which its result carries
        (``InferResult.id``, or ``.request_id`` of the error a failed request yields; the stream
        goes on). Inputs are checked before sending, as ``infer`` checks them.

        ``results = [r async for r in client.stream_infer(reqs)]  # results[i] answers reqs[i]``
        """
        events: asyncio.Queue[_calls.StreamEvent] = asyncio.Queue()

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            index = 0
            try:
                async for model, inputs in _each(requests):
                    try:
                        arrays = await self._checked_arrays(model, None, inputs, timeout)
                        message = _calls.stream_request(index, model, arrays)
                    except InferenceServerError as exc:
                        events.put_nowait(_calls.Refused(index, exc))
                    else:
                        events.put_nowait(_calls.Sent(index))
                        yield message
                    index += 1
            except Exception as exc:  # the stream ends here; stream_infer raises it at its end
                events.put_nowait(_calls.RequestsEnded(exc))
            else:
                events.put_nowait(_calls.RequestsEnded())

        call = self._stub.ModelStreamInfer(
            messages(),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
            wait_for_ready=self._wait_for_ready,
        )

        async def read() -> None:
            try:
                async for response in call:
                    events.put_nowait(_calls.Answered(response))
            except grpc.RpcError as error:
                events.put_nowait(_calls.StreamEnded(from_rpc_error(error)))
            else:
                events.put_nowait(_calls.StreamEnded())

        reader = asyncio.ensure_future(read())
        results = _calls.StreamResults(as_str, self._signatures)
        try:
            while not results.done:
                for result in results.add(await events.get()):
                    yield result
        finally:
            call.cancel()  # nothing to do once the stream has ended; else (a break) ends it
            reader.cancel()
        if results.error is not None:
            raise results.error

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: str | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> generation.Generation:
        """Generate from ``prompt`` (see ``Client.generate``).

        ``(await client.generate("gpt2", "Once upon a time", max_tokens=32)).text``"""
        inputs = generation.generation_inputs(prompt, False, sampling, model)
        result = await self.infer(model, inputs, version=version, timeout=timeout)
        return generation.generation(result)

    async def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        version: str | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> AsyncIterator[str]:
        """``generate``, streamed (see ``Client.generate_stream``); leaving the loop early
        cancels the generation on the server.

        ``async for piece in client.generate_stream("gpt2", "Hi", max_tokens=32): print(piece)``
        """
        arrays = generation.generation_inputs(prompt, True, sampling, model)
        request = _calls.infer_request(model, arrays, _calls.InferOptions(version=version))
        call = self._stub.ModelStreamInfer(
            iter([request]),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
            wait_for_ready=self._wait_for_ready,
        )
        try:
            async for response in call:
                text, final = generation.stream_text(response, model)
                if text:
                    yield text
                if final:
                    return
        except grpc.RpcError as error:
            raise from_rpc_error(error, model) from None
        finally:
            call.cancel()  # nothing to do once the stream has ended; else (a break) ends it

    async def classify(
        self, model: str, texts: Sequence[str], pairs: Sequence[str] | None = None, **kw: Any
    ) -> list[tasks.Classification]:
        """Label texts. ``(await client.classify("sentiment", ["great"]))[0].label``"""
        inputs = tasks.text_inputs(texts, pairs)
        return tasks.classifications(
            await self.infer(model, inputs, outputs=tasks.CLASSIFY_OUTPUTS, **kw)
        )

    async def embed(self, model: str, texts: Sequence[str], **kw: Any) -> Array:
        """Sentence embeddings. ``(await client.embed("minilm", ["hi"])).shape``"""
        inputs = tasks.text_inputs(texts)
        return tasks.embeddings(await self.infer(model, inputs, outputs=tasks.EMBED_OUTPUTS, **kw))

    async def extract_entities(
        self, model: str, texts: Sequence[str], **kw: Any
    ) -> list[list[tasks.Entity]]:
        """Named entities. ``(await client.extract_entities("ner", ["Alice"]))[0]``"""
        inputs = tasks.text_inputs(texts)
        return tasks.entities(await self.infer(model, inputs, outputs=tasks.ENTITY_OUTPUTS, **kw))

    async def answer(
        self, model: str, questions: Sequence[str], contexts: Sequence[str], **kw: Any
    ) -> list[tasks.Answer]:
        """Answer spans. ``(await client.answer("qa", ["who?"], ["Alice did."]))[0].text``"""
        inputs = tasks.text_inputs(questions, contexts)
        return tasks.answers(await self.infer(model, inputs, outputs=tasks.ANSWER_OUTPUTS, **kw))
