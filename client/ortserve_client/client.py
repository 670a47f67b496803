"""The synchronous client. ``AsyncClient`` (aio.py) offers the same calls for asyncio."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


class Client:
    """A client for any server speaking the KServe v2 / Triton gRPC API.

    ``targets``: ``"host:8001"`` (any gRPC target, resolved by gRPC), or several
    (``["h1:8001", "h2:8001"]``, ``"[ipv6]:port"`` for IPv6 literals) balanced by gRPC's own
    round_robin policy. Several targets are resolved once, when the client is built, into IPv4
    addresses when every host has one, else IPv6 when every host has one (gRPC cannot balance
    over both families); ValueError names a target that is malformed or cannot be resolved.
    UNAVAILABLE is retried with backoff (``retries``, at most 4: gRPC's cap);
    ``wait_for_ready=True`` makes a call wait out a server that is down (a restart) within its
    deadline instead of failing. ``timeout`` is the default deadline of every call, in seconds;
    each call can set its own. ``validate`` checks inputs against the model's metadata (fetched
    once per model, and again when the cached one refuses the inputs: a hot reload may have
    changed them) before sending. TLS: ``tls=True`` (system roots) or ``root_certificates``;
    mTLS adds ``certificate_chain`` and ``private_key``; with several targets give
    ``server_name``. ``token`` is sent as ``authorization: Bearer <token>``.

    Example::

        import numpy as np
        from ortserve_client import Client

        with Client("127.0.0.1:8001", timeout=10) as client:
            result = client.infer("add", {"x": np.ones((1, 4), np.float32)})
            print(result["y"], result.model_version)
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
            self._channel = grpc.insecure_channel(settings.target, options=settings.options)
        else:
            self._channel = grpc.secure_channel(
                settings.target, settings.credentials, options=settings.options
            )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = settings.metadata
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        self._signatures = _calls.Signatures(validate)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, call: _calls.Call[T], timeout: float | None) -> T:
        method = getattr(self._stub, call.rpc)
        try:
            response = method(
                call.request,
                timeout=timeout or self._timeout,
                metadata=self._metadata,
                wait_for_ready=self._wait_for_ready,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, call.model) from None
        return call.parse(response)

    # -- server and model calls ----------------------------------------------------------------

    def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live. ``client.live()`` -> True"""
        return self._call(_calls.live(), timeout)

    def ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server is ready to serve. ``client.ready()`` -> True"""
        return self._call(_calls.ready(), timeout)

    def model_ready(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> bool:
        """Whether a model (version) is ready. ``client.model_ready("add")`` -> True"""
        return self._call(_calls.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        """Name, version and extensions. ``client.server_metadata().extensions``"""
        return self._call(_calls.server_metadata(), timeout)

    def model_metadata(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        """Inputs, outputs and versions. ``client.model_metadata("add").inputs[0].shape``"""
        return self._call(_calls.model_metadata(model, version), timeout)

    def model_config(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's (completed) Triton config. ``client.model_config("add").max_batch_size``"""
        return self._call(_calls.model_config(model, version), timeout)

    def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Model folders with state and reason. ``[m.name for m in client.repository_index()]``"""
        return self._call(_calls.repository_index(ready_only), timeout)

    def load_model(
        self,
        model: str,
        *,
        config: Mapping[str, Any] | str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Load or reload a model; ``config`` overrides its config, ``files`` maps
        ``"<version>/<name>"`` to bytes.

        ``client.load_model("add", config={"max_batch_size": 8})``"""
        self._signatures.drop(model)  # a reload may change any version
        self._call(_calls.load_model(model, config, files), timeout)

    def unload_model(
        self, model: str, *, unload_dependents: bool = False, timeout: float | None = None
    ) -> None:
        """Drain and unload a model. ``client.unload_model("add")``"""
        self._call(_calls.unload_model(model, unload_dependents), timeout)

    def statistics(
        self, model: str = "", version: str | None = None, *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton-style statistics. ``client.statistics("add").model_stats[0].inference_count``"""
        return self._call(_calls.statistics(model, version), timeout)

    # -- inference -----------------------------------------------------------------------------

    def infer(
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
        """Run a model. Inputs are numpy arrays (or lists of texts, sent as BYTES ``[n, 1]``),
        checked against the model's metadata before sending.

        ``client.infer("add", {"x": np.ones((2, 4), np.float32)})["y"]``
        """
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
        arrays = self._checked_arrays(model, version, inputs, timeout)
        request = _calls.infer_request(model, arrays, options)
        try:
            return self._call(_calls.infer(request, as_str), timeout)
        except InferenceServerError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                self._signatures.drop(model, version or "")  # a new version may differ
            raise

    def _checked_arrays(
        self, model: str, version: str | None, inputs: Inputs, timeout: float | None
    ) -> dict[str, Array]:
        """Inputs as arrays, checked against the model's signature (see ``_calls.Signatures``)."""
        arrays = _calls.input_arrays(inputs, model)
        if self._signatures.needs_fetch(model, version, arrays):  # none cached, or it refuses
            metadata = self.model_metadata(model, version, timeout=timeout)
            self._signatures.check_fetched(model, version, arrays, metadata)
        return arrays

    def stream_infer(
        self,
        requests: Iterable[tuple[str, Inputs]],
        *,
        timeout: float | None = None,
        as_str: bool = False,
    ) -> Iterator[InferResult | InferenceServerError]:
        """Bidirectional ModelStreamInfer: one result per ``(model, inputs)`` request, in the
        order of the requests, so that ``zip(requests, results)`` pairs them.

        The server runs the requests concurrently; a result that completes early waits for those
        before it. Request ``i`` is sent with the id ``str(i)``, which its result carries
        (``InferResult.id``). A failed request yields its error instead, with ``.request_id``
        ``str(i)``, and the stream goes on. Inputs are checked as ``infer`` checks them before
        each request is sent: one that fails yields its ``InvalidArgumentError`` naming the
        tensor (an unknown model, its ``NotFoundError``) and is not sent. If the stream itself
        fails (its ``timeout``, the server going away), each request taken and unanswered yields
        that error, then it is raised; an exception from ``requests`` is raised once the requests
        before it are answered.

        ``for (model, _), r in zip(reqs, client.stream_infer(reqs)): print(model, r)``
        """
        events: queue.SimpleQueue[_calls.StreamEvent] = queue.SimpleQueue()

        def messages() -> Iterator[pb.ModelInferRequest]:  # gRPC iterates it on its own thread
            index = 0
            try:
                for model, inputs in requests:
                    try:
                        arrays = self._checked_arrays(model, None, inputs, timeout)
                        message = _calls.stream_request(index, model, arrays)
                    except InferenceServerError as exc:
                        events.put(_calls.Refused(index, exc))
                    else:
                        events.put(_calls.Sent(index))
                        yield message
                    index += 1
            except Exception as exc:  # the stream ends here; stream_infer raises it at its end
                events.put(_calls.RequestsEnded(exc))
            else:
                events.put(_calls.RequestsEnded())

        call = self._stub.ModelStreamInfer(
            messages(),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
            wait_for_ready=self._wait_for_ready,
        )

        def read() -> None:
            try:
                for response in call:
                    events.put(_calls.Answered(response))
            except grpc.RpcError as error:
                events.put(_calls.StreamEnded(from_rpc_error(error)))
            else:
                events.put(_calls.StreamEnded())

        threading.Thread(target=read, name="ortserve-stream-reader", daemon=True).start()
        results = _calls.StreamResults(as_str, self._signatures)
        try:
            while not results.done:
                yield from results.add(events.get())
        finally:
            call.cancel()  # nothing to do once the stream has ended; else (a break) ends it
        if results.error is not None:
            raise results.error

    # -- text generation -----------------------------------------------------------------------

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: str | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> generation.Generation:
        """Generate from ``prompt`` (a generation model); ``sampling``: ``max_tokens``,
        ``temperature`` (0: greedy), ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
        ``stop`` (a string or a list), ``ignore_eos``. The text is without the prompt.

        ``client.generate("gpt2", "Once upon a time", max_tokens=32).text``"""
        inputs = generation.generation_inputs(prompt, False, sampling, model)
        result = self.infer(model, inputs, version=version, timeout=timeout)
        return generation.generation(result)

    def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        version: str | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """``generate``, streamed: the text as it is generated, piece by piece (a piece never
        splits a character). Leaving the loop early cancels the generation on the server.

        ``for piece in client.generate_stream("gpt2", "Hi", max_tokens=32): print(piece)``"""
        arrays = generation.generation_inputs(prompt, True, sampling, model)
        request = _calls.infer_request(model, arrays, _calls.InferOptions(version=version))
        call = self._stub.ModelStreamInfer(
            iter([request]),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
            wait_for_ready=self._wait_for_ready,
        )
        try:
            for response in call:
                text, final = generation.stream_text(response, model)
                if text:
                    yield text
                if final:
                    return
        except grpc.RpcError as error:
            raise from_rpc_error(error, model) from None
        finally:
            call.cancel()  # nothing to do once the stream has ended; else (a break) ends it

    # -- text tasks ----------------------------------------------------------------------------

    def classify(
        self, model: str, texts: Sequence[str], pairs: Sequence[str] | None = None, **kw: Any
    ) -> list[tasks.Classification]:
        """Label texts. ``client.classify("sentiment", ["great film"])[0].label``"""
        result = self.infer(
            model, tasks.text_inputs(texts, pairs), outputs=tasks.CLASSIFY_OUTPUTS, **kw
        )
        return tasks.classifications(result)

    def embed(self, model: str, texts: Sequence[str], **kw: Any) -> Array:
        """Sentence embeddings, one row per text. ``client.embed("minilm", ["hi"]).shape``"""
        return tasks.embeddings(
            self.infer(model, tasks.text_inputs(texts), outputs=tasks.EMBED_OUTPUTS, **kw)
        )

    def extract_entities(
        self, model: str, texts: Sequence[str], **kw: Any
    ) -> list[list[tasks.Entity]]:
        """Named entities per text. ``client.extract_entities("ner", ["Alice in Paris"])[0]``"""
        return tasks.entities(
            self.infer(model, tasks.text_inputs(texts), outputs=tasks.ENTITY_OUTPUTS, **kw)
        )

    def answer(
        self, model: str, questions: Sequence[str], contexts: Sequence[str], **kw: Any
    ) -> list[tasks.Answer]:
        """Answer spans. ``client.answer("qa", ["who?"], ["Alice did."])[0].text``"""
        inputs = tasks.text_inputs(questions, contexts)
        return tasks.answers(self.infer(model, inputs, outputs=tasks.ANSWER_OUTPUTS, **kw))
