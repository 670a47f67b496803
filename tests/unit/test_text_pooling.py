"""Embedding pooling (text/tasks.pool) on padded batches, and the text settings that choose it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from ortserve.errors import ConfigError
from ortserve.repository.parameters import Parameters
from ortserve.text.files import ModelFiles
from ortserve.text.settings import POOLINGS, text_settings
from ortserve.text.tasks import pool

Array = np.ndarray[Any, Any]


def _padded_batch() -> tuple[Array, Array]:
    """Four rows of 6 tokens: right padding, no padding, left padding, a single real token.
    Padding positions hold large values, so any leak into a pooled row shows."""
    rng = np.random.default_rng(7)
    hidden = rng.normal(size=(4, 6, 5)).astype(np.float32)
    mask = np.array(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
            [1, 0, 0, 0, 0, 0],
        ],
        dtype=np.int64,
    )
    hidden[mask == 0] = 1e4
    return hidden, mask


def _reference(hidden: Array, mask: Array, how: str) -> Array:
    """sentence-transformers' pooling, one row at a time over its real tokens only."""
    rows = []
    for states, row_mask in zip(hidden.astype(np.float64), mask, strict=True):
        real = np.flatnonzero(row_mask)
        tokens = states[real]
        if how == "mean":
            rows.append(tokens.mean(axis=0))
        elif how == "max":
            rows.append(tokens.max(axis=0))
        elif how == "mean_sqrt_len":
            rows.append(tokens.sum(axis=0) / np.sqrt(len(real)))
        elif how == "last":
            rows.append(states[real[-1]])
        elif how == "cls":
            rows.append(states[0])
    return np.array(rows)


@pytest.mark.parametrize("how", POOLINGS)
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_matches_reference_on_padded_batch(how: str, normalize: bool) -> None:
    hidden, mask = _padded_batch()
    if how == "cls":  # the first token: real in every right-padded row
        hidden, mask = hidden[[0, 1, 3]], mask[[0, 1, 3]]
    expected = _reference(hidden, mask, how)
    if normalize:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    got = pool(hidden, mask, how, normalize)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_last_and_max_ignore_padding_and_rows_without_tokens() -> None:
    hidden, mask = _padded_batch()
    np.testing.assert_array_equal(pool(hidden, mask, "last", False)[0], hidden[0, 2])
    np.testing.assert_array_equal(pool(hidden, mask, "last", False)[2], hidden[2, 5])
    assert (pool(hidden, mask, "max", False) < 1e3).all()
    empty = np.zeros_like(mask)
    for how in ("mean", "max", "mean_sqrt_len", "last"):
        assert not pool(hidden, empty, how, True).any(), how


def test_mask_longer_than_the_token_states_is_cut() -> None:
    hidden, mask = _padded_batch()
    wide = np.concatenate([mask, np.zeros((4, 3), dtype=np.int64)], axis=1)
    for how in POOLINGS:
        np.testing.assert_array_equal(
            pool(hidden, wide, how, False), pool(hidden, mask, how, False)
        )


def test_model_that_pools_itself_is_passed_through() -> None:
    pooled = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = pool(pooled, np.ones((2, 4)), "max", False)
    np.testing.assert_array_equal(got, pooled.astype(np.float32))


def _files(tmp_path: Path, **fields: Any) -> ModelFiles:
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    return ModelFiles(folder=tmp_path, tokenizer=tokenizer, **fields)


@pytest.mark.parametrize("how", POOLINGS)
def test_settings_accept_every_pooling(tmp_path: Path, how: str) -> None:
    params = Parameters({"task": "feature-extraction", "pooling": how}, "config.pbtxt")
    assert text_settings(params, _files(tmp_path)).pooling == how


def test_settings_refuse_an_unknown_pooling(tmp_path: Path) -> None:
    params = Parameters({"pooling": "weightedmean"}, "config.pbtxt")
    with pytest.raises(ConfigError, match="parameters 'pooling'"):
        text_settings(params, _files(tmp_path))


@pytest.mark.parametrize(
    ("key", "how"),
    [
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_lasttoken", "last"),
    ],
)
def test_default_pooling_from_the_pooling_config(tmp_path: Path, key: str, how: str) -> None:
    files = _files(tmp_path, pooling={"word_embedding_dimension": 5, key: True})
    settings = text_settings(Parameters({}, "config.pbtxt"), files)
    assert (settings.task, settings.pooling) == ("sentence-embeddings", how)


def test_default_task_from_the_exporters_manifest(tmp_path: Path) -> None:
    manifest = {"model": {"task": "sentence-embeddings", "config_task": "feature-extraction"}}
    files = _files(tmp_path, manifest=manifest)
    assert text_settings(Parameters({}, "c"), files).task == "feature-extraction"
    files = _files(tmp_path, manifest={"model": {"config_task": None}})
    assert text_settings(Parameters({}, "c"), files).task == "feature-extraction"
    with pytest.raises(ConfigError, match="'text-generation' is not one of"):
        text_settings(Parameters({"task": "text-generation"}, "c"), _files(tmp_path))
