"""Task routes for text models over HTTP, and the request plumbing the OpenAI routes share.

``POST /v2/models/{name}[/versions/{v}]/classify`` takes ``{"text": "..."}`` or
``{"text": ["...", ...]}`` and answers a list, one entry per text, in order:
``{"label", "score"}`` plus ``"routed_label"`` when the model routes (its config sets
``confidence_threshold`` / ``fallback_label``: below the threshold the routed label is the
fallback, else the label).

Every request goes through ``InferenceService.infer`` as an ``InferRequest`` of TEXT rows, so
admission, leases, queue limits, deadlines, metrics and draining are those of gRPC. More texts
than one batch takes (``max_batch_size``) run as several requests at once, answered in order.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ortserve.errors import InvalidInput, shown
from ortserve.http.errors import http_status, message, retry_headers
from ortserve.http.server import request_timeout_s
from ortserve.inference import InferRequest, InferResponse
from ortserve.registry.versions import ServedVersion
from ortserve.text.adapters import Classification
from ortserve.text.base import TEXT, TextAdapter
from ortserve_client.tensors import Array, DecodedTensor

if TYPE_CHECKING:
    from ortserve.http.server import HttpContext


class BadField(InvalidInput):
    """A request body field with a bad value: 400, and OpenAI's ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# -- reading a JSON body --------------------------------------------------------------------------


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (BadField otherwise). The size limit is the app's middleware's."""
    raw = await request.body()
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadField("body", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadField("body", f"the request body must be a JSON object, got {_kind(value)}")
    return value


def text_field(body: dict[str, Any], key: str) -> str:
    """A required, non-empty string field."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadField(
            key, f"'{key}' is required and must be a non-empty string, got {_kind(value)}"
        )
    return value


def text_list(value: Any, key: str) -> list[str]:
    """A string or a non-empty list of strings, as a list. Token ids (integers) are refused: the
    model's own tokenizer reads the text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and value and all(_is_tokens(item) for item in value):
        raise BadField(key, f"'{key}' as token ids is not accepted: send the text")
    raise BadField(
        key, f"'{key}' must be a string or a non-empty list of strings, got {_kind(value)}"
    )


def _is_tokens(item: Any) -> bool:
    if isinstance(item, list):
        return all(isinstance(x, int) and not isinstance(x, bool) for x in item)
    return isinstance(item, int) and not isinstance(item, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the string {shown(value)}"
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), "a number")


# -- what the middleware tells a route ------------------------------------------------------------


def request_id(request: Request) -> str:
    """The request's id, as the app's middleware (``server.Guard``) logs and echoes it: from
    X-Request-ID, or the one it made."""
    bound = structlog.contextvars.get_contextvars().get("request_id")
    given = bound or request.headers.get("x-request-id")
    return str(given) if given else uuid.uuid4().hex


def timeout_s(request: Request) -> float | None:
    """The caller's deadline (X-Request-Timeout-Ms) in seconds; InvalidInput for a bad header."""
    return request_timeout_s(request)


# -- running text rows ----------------------------------------------------------------------------


def text_model(ctx: HttpContext, name: str, version: str, kind: type[TextAdapter]) -> ServedVersion:
    """The version a request on ``name`` would reach, if its adapter is a ``kind`` (InvalidInput
    naming the model's task otherwise). An unknown or unready model is refused as by ``infer``
    (counted as a failure there)."""
    ctx.inference.check_target(name, version)
    served = ctx.registry.resolve(name, version)
    adapter = served.adapter
    if not isinstance(adapter, kind):
        task = adapter.settings.task if isinstance(adapter, TextAdapter) else "non-text"
        raise InvalidInput(
            f"model '{name}' is a {task} model; this route serves {kind.__name__.lower()} models"
        )
    return served


async def run_texts(
    ctx: HttpContext,
    served: ServedVersion,
    texts: Sequence[str],
    outputs: list[str],
    request: Request,
) -> list[InferResponse]:
    """Infer ``texts`` as TEXT rows, in requests of at most the model's ``max_batch_size`` rows,
    concurrently; one response per slice, in order. One failed slice cancels the others."""
    adapter = served.adapter
    assert isinstance(adapter, TextAdapter)
    rows = max(1, adapter.max_rows)
    rid, timeout = request_id(request), timeout_s(request)
    infers = [
        ctx.inference.infer(
            InferRequest(
                model_name=served.model_name,
                model_version="",
                id=rid,
                inputs=[DecodedTensor(TEXT, "BYTES", _column(texts[start : start + rows]))],
                outputs=outputs,
                timeout_s=timeout,
            )
        )
        for start in range(0, len(texts), rows)
    ]
    if len(infers) == 1:
        return [await infers[0]]
    tasks = [asyncio.ensure_future(infer) for infer in infers]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _column(texts: Sequence[str]) -> Array:
    column = np.empty((len(texts), 1), dtype=np.object_)
    for row, text in enumerate(texts):
        column[row, 0] = text.encode("utf-8")
    return column


def output(response: InferResponse, name: str) -> Array:
    for tensor in response.outputs:
        if tensor.name == name:
            return tensor.array
    raise AssertionError(f"the response has no output {name}")  # asked for by name


# -- the classify route ---------------------------------------------------------------------------


def task_routes(ctx: HttpContext) -> list[BaseRoute]:
    async def classify(request: Request) -> Response:
        try:
            return await _classify(ctx, request)
        except Exception as exc:  # KServe's shape: {"error": message}, with the table's status
            status = http_status(exc)
            body = {"error": message(exc, request.url.path)}
            return JSONResponse(body, status_code=status, headers=retry_headers(status))

    return [
        Route("/v2/models/{name}/classify", classify, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/classify", classify, methods=["POST"]),
    ]


async def _classify(ctx: HttpContext, request: Request) -> Response:
    name = request.path_params["name"]
    version = request.path_params.get("version", "")
    body = await json_body(request)
    texts = text_list(body.get("text"), "text")
    served = text_model(ctx, name, version, Classification)
    adapter = served.adapter
    assert isinstance(adapter, Classification)
    routes = adapter.settings.confidence_threshold is not None
    answers = []
    for response in await run_texts(ctx, served, texts, ["LABEL", "SCORE", "SCORES"], request):
        routed, score, scores = (output(response, n) for n in ("LABEL", "SCORE", "SCORES"))
        for row in range(routed.shape[0]):
            best = int(np.argmax(scores[row]))
            answer: dict[str, Any] = {
                "label": adapter.labels.get(best, f"LABEL_{best}"),
                "score": float(score[row].reshape(-1)[0]),
            }
            if routes:
                answer["routed_label"] = bytes(routed[row].reshape(-1)[0]).decode("utf-8")
            answers.append(answer)
    return JSONResponse(answers)
