"""Request adapters without a daemon: each version's ``prepare`` and ``finish`` around its real
ONNX session (tiny graphs from tests/factories, a tokenizer trained here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ortserve.adapters import Prepared, RequestAdapter, TensorAdapter
from ortserve.errors import InvalidInput
from ortserve.registry.versions import ServedVersion, load_version
from ortserve.repository.config import read_config
from ortserve.text.adapters import (
    ADAPTERS,
    Classification,
    Embeddings,
    QuestionAnswering,
    TokenClassification,
)
from ortserve.text.base import TextAdapter
from ortserve.text.settings import TASKS
from ortserve.text.tokenization import Encoded
from ortserve_client.tensors import DecodedTensor
from tests.factories.onnx_models import add_model, write_model
from tests.factories.text_models import WIDTH, write_text_model

Array = np.ndarray[Any, Any]


def _load(repo: Path, name: str) -> Iterator[ServedVersion]:
    served = load_version(name, repo / name, read_config(repo / name), 1, 8, "test", None)
    try:
        yield served
    finally:
        served.sessions.close()


@pytest.fixture
def tensor_model(tmp_path: Path) -> Iterator[ServedVersion]:
    write_model(tmp_path, "add", add_model())
    yield from _load(tmp_path, "add")


@pytest.fixture(params=sorted({"text-classification", "token-classification",
                               "question-answering", "feature-extraction"}))  # fmt: skip
def text_model(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServedVersion]:
    write_text_model(tmp_path, "m", request.param)
    yield from _load(tmp_path, "m")


def _texts(name: str, *rows: str) -> DecodedTensor:
    array = np.array([[row.encode()] for row in rows], dtype=np.object_)
    return DecodedTensor(name, "BYTES", array)


async def _answer(served: ServedVersion, prepared: Prepared) -> dict[str, Any]:
    """Run the prepared feeds through the version's session and finish them (no batcher)."""
    names = [out.name for out in served.model_config.output]
    arrays = await served.sessions.run(prepared.feeds, names)
    return dict(served.adapter.finish(prepared, dict(zip(names, arrays, strict=True))))


def test_every_text_task_has_one_adapter() -> None:
    assert set(ADAPTERS) == set(TASKS)
    assert ADAPTERS["sentence-embeddings"] is ADAPTERS["feature-extraction"] is Embeddings


def test_adapters_satisfy_the_protocol(tensor_model: ServedVersion) -> None:
    adapters: list[RequestAdapter] = [tensor_model.adapter]  # mypy checks the protocol here
    assert isinstance(adapters[0], TensorAdapter)
    assert tensor_model.config is tensor_model.model_config  # a tensor model: its own config


async def test_tensor_adapter_checks_and_answers_with_wire_types(
    tensor_model: ServedVersion,
) -> None:
    adapter = tensor_model.adapter
    x = np.ones((3, 4), dtype=np.float32)
    prepared = await adapter.prepare([DecodedTensor("x", "FP32", x)], [])
    assert prepared.outputs == ["y"]
    assert prepared.client_rows == prepared.rows == 3
    assert prepared.length is None
    assert not prepared.splittable
    assert adapter.padding is None
    assert dict(adapter.labels) == {}
    answer = await _answer(tensor_model, prepared)
    assert answer["y"].datatype == "FP32"
    np.testing.assert_allclose(answer["y"].array, x + 1)
    with pytest.raises(InvalidInput, match="has no output 'z'"):
        await adapter.prepare([DecodedTensor("x", "FP32", x)], ["z"])
    with pytest.raises(InvalidInput, match="datatype FP64"):
        await adapter.prepare([DecodedTensor("x", "FP64", x.astype(np.float64))], [])


async def test_text_request_becomes_tokens_and_task_outputs(text_model: ServedVersion) -> None:
    adapter = text_model.adapter
    assert isinstance(adapter, TextAdapter)
    pair = adapter.pair_input
    inputs = [_texts("TEXT", "where does alice work", "what is the capital of france")]
    if pair:
        inputs.append(_texts("TEXT_PAIR", "alice works at acme", "paris is the capital"))
    prepared = await adapter.prepare(inputs, [])
    assert prepared.outputs == adapter.task_output_names()
    assert prepared.client_rows == 2
    assert isinstance(prepared.state, Encoded)
    assert prepared.length == prepared.feeds["input_ids"].shape[1]
    assert adapter.padding is not None
    assert adapter.padding.mask_input == "attention_mask"
    answer = await _answer(text_model, prepared)
    for name in adapter.task_output_names():
        assert answer[name].array.shape[0] == 2, name
    public = [entry.name for entry in adapter.config.input]
    assert public[:2] == (["TEXT", "TEXT_PAIR"] if pair else ["TEXT", "input_ids"])
    assert [entry.name for entry in adapter.config.output][: len(prepared.outputs)] == (
        prepared.outputs
    )


async def test_classification_names_its_labels(tmp_path: Path) -> None:
    write_text_model(tmp_path, "c", "text-classification")
    for served in _load(tmp_path, "c"):
        adapter = served.adapter
        assert isinstance(adapter, Classification)
        assert dict(adapter.labels) == {0: "NEGATIVE", 1: "POSITIVE"}
        prepared = await adapter.prepare([_texts("TEXT", "i love this movie")], ["LABEL"])
        answer = await _answer(served, prepared)
        assert answer["LABEL"].datatype == "BYTES"
        assert answer["LABEL"].array[0, 0] in (b"NEGATIVE", b"POSITIVE")
        assert answer["SCORES"].array.shape == (1, 2)


async def test_token_inputs_get_the_raw_outputs_only(tmp_path: Path) -> None:
    write_text_model(tmp_path, "t", "token-classification")
    for served in _load(tmp_path, "t"):
        adapter = served.adapter
        assert isinstance(adapter, TokenClassification)
        ids = np.array([[2, 7, 9, 3]], dtype=np.int64)
        tokens = [
            DecodedTensor("input_ids", "INT64", ids),
            DecodedTensor("attention_mask", "INT64", np.ones_like(ids)),
            DecodedTensor("token_type_ids", "INT64", np.zeros_like(ids)),
        ]
        prepared = await adapter.prepare(tokens, [])
        assert prepared.length is None  # not paddable: batched by shape, as a tensor model's
        assert prepared.state is None
        answer = await _answer(served, prepared)
        assert "ENTITIES" not in answer
        assert set(answer) == {out.name for out in served.model_config.output}
        with pytest.raises(InvalidInput, match="task outputs need TEXT"):
            await adapter.prepare(tokens, ["ENTITIES"])


async def test_question_answering_windows_are_splittable_rows(tmp_path: Path) -> None:
    write_text_model(tmp_path, "qa", "question-answering")
    for served in _load(tmp_path, "qa"):
        adapter = served.adapter
        assert isinstance(adapter, QuestionAnswering)
        context = " ".join(["alice works at acme corporation in london"] * 40)
        prepared = await adapter.prepare(
            [_texts("TEXT", "where does alice work"), _texts("TEXT_PAIR", context)], []
        )
        assert prepared.splittable
        assert prepared.client_rows == 1
        assert prepared.rows > 1  # one text, several windows
        answer = await _answer(served, prepared)
        start, end = int(answer["START"].array[0, 0]), int(answer["END"].array[0, 0])
        assert answer["ANSWER"].array[0, 0] == context[start:end].encode()
        with pytest.raises(InvalidInput, match="needs the question in 'TEXT'"):
            await adapter.prepare([_texts("TEXT", "where does alice work")], [])


async def test_embeddings_pool_one_vector_per_text(tmp_path: Path) -> None:
    write_text_model(tmp_path, "e", "feature-extraction")
    for served in _load(tmp_path, "e"):
        adapter = served.adapter
        assert isinstance(adapter, Embeddings)
        prepared = await adapter.prepare([_texts("TEXT", "a cat", "the quick brown fox")], [])
        answer = await _answer(served, prepared)
        assert answer["EMBEDDING"].array.shape == (2, WIDTH)
        with pytest.raises(InvalidInput, match="takes no 'TEXT_PAIR'"):
            await adapter.prepare([_texts("TEXT", "a"), _texts("TEXT_PAIR", "b")], [])
