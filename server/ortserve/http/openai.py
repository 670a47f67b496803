"""OpenAI-compatible routes: the subset that fits each kind of model.

- ``GET /v1/models`` (and ``/v1/models/{model}``): every ready model.
- ``POST /v1/embeddings``: embedding models (feature-extraction, sentence-embeddings); ``input``
  a string or a list of strings (token ids are refused), ``encoding_format`` float or base64
  (little-endian float32, as OpenAI's), ``usage`` counted by the model's own tokenizer.
- ``POST /v1/completions``: generation models; one prompt, ``n`` 1, ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``, ``echo``; ``stream: true`` answers
  server-sent events (``data: {chunk}`` ... ``data: [DONE]``).
- ``POST /v1/chat/completions``: generation models whose tokenizer_config.json has a
  ``chat_template``, rendered with jinja2 (sandboxed) into the prompt.

Each request becomes ``InferRequest``s on ``InferenceService`` (no second data path); a
generation request is the vLLM-backend protocol the gRPC front takes (``text_input``, ``stream``,
``sampling_parameters`` JSON), so the engine checks the sampling fields once, for both fronts.
Errors come in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the
status of the one error table (``http.errors``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ortserve.generation.adapter import GenerationAdapter
from ortserve.http.chat_template import Templates
from ortserve.http.errors import http_status, message, retry_headers
from ortserve.http.tasks import (
    BadField,
    json_body,
    output,
    request_id,
    run_texts,
    text_field,
    text_list,
    timeout_s,
)
from ortserve.inference import InferRequest, InferResponse
from ortserve.registry.versions import ServedVersion
from ortserve.text.adapters import Embeddings
from ortserve_client.tensors import DecodedTensor

if TYPE_CHECKING:
    from ortserve.http.server import HttpContext

Handler = Callable[[Request], Awaitable[Response]]

#: OpenAI's error ``type`` for a status (else: invalid_request_error below 500, server_error).
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
#: Sampling fields passed to the engine as they are (it checks them: one place for both fronts).
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed",
                   "repetition_penalty", "ignore_eos")  # fmt: skip
#: Fields OpenAI defines that are refused unless left at their default (their effect is not
#: offered; silently ignoring them would change the answer the caller expects).
UNSUPPORTED = {"n": 1, "best_of": 1, "logprobs": None, "top_logprobs": None, "suffix": None,
               "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "tools": None,
               "response_format": None}  # fmt: skip
#: The engine's finish reasons in OpenAI's words.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "abort"}


def openai_routes(ctx: HttpContext) -> list[BaseRoute]:
    routes = OpenAIRoutes(ctx)
    return [
        Route("/v1/models", openai_errors(routes.models), methods=["GET"]),
        Route("/v1/models/{model:path}", openai_errors(routes.model), methods=["GET"]),
        Route("/v1/embeddings", openai_errors(routes.embeddings), methods=["POST"]),
        Route("/v1/completions", openai_errors(routes.completions), methods=["POST"]),
        Route("/v1/chat/completions", openai_errors(routes.chat), methods=["POST"]),
    ]


def openai_error(exc: BaseException, route: str) -> JSONResponse:
    status = http_status(exc)
    error = {
        "message": message(exc, route),
        "type": ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        ),
        "param": getattr(exc, "param", None) or _named_field(str(exc)),
        "code": "model_not_found" if status == 404 else None,
    }
    return JSONResponse({"error": error}, status_code=status, headers=retry_headers(status))


def openai_errors(handler: Handler) -> Handler:
    """Any error of ``handler`` answered in OpenAI's shape (a bug: 500 with an error id)."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return openai_error(exc, request.url.path)

    return answer


class OpenAIRoutes:
    def __init__(self, ctx: HttpContext) -> None:
        self._ctx = ctx
        self._templates = Templates(ctx)

    # -- models -----------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        names = sorted({served.model_name for served in self._ctx.registry.served()})
        return JSONResponse({"object": "list", "data": [_model_card(name) for name in names]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        self._ctx.registry.resolve(name)  # NOT_FOUND / UNAVAILABLE, as any request
        return JSONResponse(_model_card(name))

    # -- embeddings -------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await json_body(request)
        name = text_field(body, "model")
        texts = text_list(body.get("input"), "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadField(
                "encoding_format", f"'encoding_format' must be float or base64, got {encoding!r}"
            )
        served = _served(self._ctx, name, Embeddings)
        adapter = served.adapter
        assert isinstance(adapter, Embeddings)
        width = adapter.output_dims[adapter.source[0]][-1]
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != width:
            raise BadField(
                "dimensions",
                f"model '{name}' gives {width} dimensions; 'dimensions' {dimensions!r} is not "
                "offered",
            )
        responses = await run_texts(self._ctx, served, texts, ["EMBEDDING"], request)
        vectors = np.concatenate([output(r, "EMBEDDING") for r in responses]).astype("<f4")
        # Counted by the model's own tokenizer as it encodes (special tokens, truncation): the
        # request's real tokens, padding excluded.
        tokens = (await asyncio.to_thread(adapter.encoder.encode, texts)).real_tokens
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(row, encoding)}
            for i, row in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})

    # -- completions ------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body = await json_body(request)
        name = text_field(body, "model")
        prompt = _prompt(body.get("prompt"))
        _check_unsupported(body)
        _served(self._ctx, name, GenerationAdapter)
        echo = _flag(body, "echo")
        run = Generation(self._ctx, request, name, body, prompt, kind="text_completion")
        if _flag(body, "stream"):
            return await run.stream(echo)
        text, final = await run.complete(echo)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish}
        return JSONResponse(run.envelope([choice], usage=final.usage))

    async def chat(self, request: Request) -> Response:
        body = await json_body(request)
        name = text_field(body, "model")
        _check_unsupported(body)
        served = _served(self._ctx, name, GenerationAdapter)
        template = await self._templates.get(served)
        prompt = template.render(body.get("messages"))
        run = Generation(self._ctx, request, name, body, prompt, kind="chat.completion")
        if _flag(body, "stream"):
            return await run.stream(echo=False)
        text, final = await run.complete(echo=False)
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": final.finish}  # fmt: skip
        return JSONResponse(run.envelope([choice], usage=final.usage))


class Final:
    """How a generation ended: OpenAI's finish reason and usage."""

    def __init__(self, response: InferResponse) -> None:
        reason = bytes(output(response, "finish_reason").reshape(-1)[0]).decode()
        self.finish = FINISH.get(reason, reason)
        prompt = int(output(response, "num_input_tokens").reshape(-1)[0])
        completion = int(output(response, "num_output_tokens").reshape(-1)[0])
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}  # fmt: skip


class Generation:
    """One completion (or chat completion) request on the inference service."""

    def __init__(
        self, ctx: HttpContext, request: Request, name: str, body: dict[str, Any], prompt: str,
        kind: str,
    ) -> None:  # fmt: skip
        self._ctx = ctx
        self._request = request
        self._name = name
        self._prompt = prompt
        self._kind = kind  # "text_completion" or "chat.completion"
        sampling = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
        if "max_tokens" not in sampling and body.get("max_completion_tokens") is not None:
            sampling["max_tokens"] = body["max_completion_tokens"]  # the chat API's newer name
        self._sampling = json.dumps(sampling)
        self._usage_chunk = _stream_usage(body)
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + request_id(request)
        self._created = int(time.time())

    def infer_request(self, stream: bool, exclude_input: bool) -> InferRequest:
        inputs = [
            _string("text_input", self._prompt),
            _bool("stream", stream),
            _string("sampling_parameters", self._sampling),
            _bool("exclude_input_in_output", exclude_input),
        ]
        return InferRequest(
            model_name=self._name, model_version="", id=request_id(self._request), inputs=inputs,
            outputs=[], timeout_s=timeout_s(self._request),
        )  # fmt: skip

    async def complete(self, echo: bool) -> tuple[str, Final]:
        response = await self._ctx.inference.infer(self.infer_request(False, not echo))
        text = bytes(output(response, "text_output").reshape(-1)[0]).decode("utf-8")
        return text, Final(response)

    def envelope(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None,
                 chunk: bool = False) -> dict[str, Any]:  # fmt: skip
        obj = self._kind + (".chunk" if chunk and self._kind != "text_completion" else "")
        body: dict[str, Any] = {
            "id": self.id, "object": obj, "created": self._created, "model": self._name,
            "choices": choices,
        }  # fmt: skip
        if usage is not None or not chunk:
            body["usage"] = usage
        return body

    async def stream(self, echo: bool) -> Response:
        """Server-sent events. The first response is awaited before the answer starts, so a
        refusal (bad sampling field, full queue, unknown model) is an HTTP error, not an event."""
        replies = self._ctx.inference.infer_stream(self.infer_request(True, True))
        try:
            first = await anext(replies)
        except BaseException:
            await replies.aclose()
            raise
        return StreamingResponse(
            self._events(first, replies, echo),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-ID": request_id(self._request)},
        )

    async def _events(
        self, first: InferResponse, replies: AsyncGenerator[InferResponse, None], echo: bool
    ) -> AsyncIterator[str]:
        try:
            if self._kind == "chat.completion":
                yield _event(self.envelope([self._choice("", None, role=True)], chunk=True))
            elif echo:
                yield _event(self.envelope([self._choice(self._prompt, None)], chunk=True))
            response: InferResponse | None = first
            while response is not None:
                yield _event(self._chunk(response))
                if response.final:
                    if self._usage_chunk:
                        yield _event(self.envelope([], usage=Final(response).usage, chunk=True))
                    break
                response = await anext(replies, None)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # after the answer started: the error is the last event
            yield _event(json.loads(bytes(openai_error(exc, self._request.url.path).body)))
        finally:  # the caller left, or the stream ended: the engine frees the request's row
            await replies.aclose()

    def _chunk(self, response: InferResponse) -> dict[str, Any]:
        text = bytes(output(response, "text_output").reshape(-1)[0]).decode("utf-8")
        finish = Final(response).finish if response.final else None
        return self.envelope([self._choice(text, finish)], chunk=True)

    def _choice(self, text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self._kind == "text_completion":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


# -- helpers --------------------------------------------------------------------------------------


def _served(ctx: HttpContext, name: str, kind: type) -> ServedVersion:
    """The version ``name`` resolves to, if its adapter is a ``kind``."""
    ctx.inference.check_target(name, "")
    served = ctx.registry.resolve(name)
    if not isinstance(served.adapter, kind):
        route = (
            "/v1/embeddings" if kind is Embeddings else "/v1/completions and /v1/chat/completions"
        )
        what = "embedding" if kind is Embeddings else "text-generation"
        raise BadField("model", f"model '{name}' is not a {what} model ({route} serve those)")
    return served


def _named_field(text: str) -> str | None:
    """The field a sampling refusal names (the engine's messages: "sampling parameter 'x' ...")."""
    found = re.match(r"sampling parameter '?(\w+)", text)
    return found.group(1) if found else None


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ortserve"}


def _vector(row: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


def _prompt(value: Any) -> str:
    """One prompt: a string, or a list holding one string."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, str) for p in value):
        raise BadField("prompt", f"one prompt per request (got {len(value)}): send each on its own")
    return text_list(value, "prompt")[0] if isinstance(value, str) else _refuse_prompt(value)


def _refuse_prompt(value: Any) -> str:
    text_list(value, "prompt")  # names token ids or a wrong type
    raise BadField("prompt", "'prompt' must be a string")


def _check_unsupported(body: dict[str, Any]) -> None:
    for key, default in UNSUPPORTED.items():
        value = body.get(key, default)
        unset = value is None or value is False or value == {} or value == []
        if not unset and (value != default or isinstance(value, bool)):
            raise BadField(key, f"'{key}' {json.dumps(value)[:64]} is not supported by ortserve")


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadField(key, f"'{key}' must be true or false, got {json.dumps(value)[:64]}")
    return value


def _stream_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadField("stream_options", "'stream_options' must be an object")
    return _flag(options, "include_usage")


def _string(name: str, text: str) -> DecodedTensor:
    return DecodedTensor(name, "BYTES", np.array([text.encode("utf-8")], dtype=np.object_))


def _bool(name: str, value: bool) -> DecodedTensor:
    return DecodedTensor(name, "BOOL", np.array([value], dtype=np.bool_))


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
