"""config.pbtxt parsing, auto-completion from a model signature, and the version policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ortserve.errors import ConfigError
from ortserve.repository.config import (
    Signature,
    TensorSpec,
    complete_config,
    parse_config_text,
    read_config,
)
from ortserve.repository.policy import served_versions
from ortserve_client._proto import model_config_pb2 as mc

DYNAMIC = Signature(
    inputs=(
        TensorSpec("ids", mc.TYPE_INT64, (-1, -1)),
        TensorSpec("mask", mc.TYPE_INT64, (-1, -1)),
    ),
    outputs=(TensorSpec("out", mc.TYPE_FP32, (-1, 8)),),
)
FIXED = Signature(
    inputs=(TensorSpec("x", mc.TYPE_FP32, (2, 4)),),
    outputs=(TensorSpec("y", mc.TYPE_FP32, (2, 4)),),
)


def test_parse_error_names_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('name: "m"\nmax_batch_size: "eight"\n', "/r/m/config.pbtxt")
    assert str(info.value).startswith("/r/m/config.pbtxt:2:")
    assert "max_batch_size" in str(info.value)


def test_missing_config_is_an_empty_one(tmp_path: Path) -> None:
    parsed = read_config(tmp_path)
    assert parsed.config == mc.ModelConfig()
    assert not parsed.max_batch_size_given


def test_autocomplete_from_a_dynamic_signature() -> None:
    config = complete_config(parse_config_text("", "c"), "m", DYNAMIC, default_max_batch_size=16)
    assert config.name == "m"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("ids", mc.TYPE_INT64, [-1]),
        ("mask", mc.TYPE_INT64, [-1]),
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("out", [8])]
    assert config.instance_group[0].count == 1
    assert config.version_policy.latest.num_versions == 1


def test_fixed_first_dim_means_no_batching() -> None:
    config = complete_config(parse_config_text("", "c"), "m", FIXED, default_max_batch_size=16)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 4]


def test_explicit_zero_max_batch_size_is_honoured() -> None:
    config = complete_config(parse_config_text("max_batch_size: 0", "c"), "m", DYNAMIC, 16)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, -1]


def test_partial_config_is_filled_and_checked() -> None:
    text = 'max_batch_size: 4\ninput [ { name: "mask" } ]\n'
    config = complete_config(parse_config_text(text, "c"), "m", DYNAMIC, 16)
    assert [i.name for i in config.input] == ["mask", "ids"]
    assert config.input[0].data_type == mc.TYPE_INT64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "name 'other' does not match the folder 'm'"),
        ('platform: "tensorflow_savedmodel"', "platform 'tensorflow_savedmodel' is not"),
        ('input [ { name: "nope" } ]', "input[0] 'nope': the model has no input of that name"),
        (
            'output [ { name: "out" data_type: TYPE_INT8 } ]',
            "TYPE_INT8 does not match the model's TYPE_FP32",
        ),
        ('max_batch_size: 2\noutput [ { name: "out" dims: [ 9 ] } ]', "dims [9] do not match"),
        ('max_batch_size: 2\noutput [ { name: "out" dims: [ 1, 8 ] } ]', "rank 2"),
        ("max_batch_size: -3", "max_batch_size must be >= 0"),
        ("instance_group [ { count: -1 } ]", "instance_group[0].count must be >= 1"),
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        complete_config(parse_config_text(text, "/r/m/config.pbtxt"), "m", DYNAMIC, 16)
    assert message in str(info.value)
    assert str(info.value).startswith("/r/m/config.pbtxt")


def test_batching_a_fixed_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a dynamic first dimension"):
        complete_config(parse_config_text("max_batch_size: 8", "c"), "m", FIXED, 16)


def _policy(text: str) -> mc.ModelVersionPolicy:
    return parse_config_text(text, "c").config.version_policy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [5]),
        ("version_policy: { latest: { num_versions: 2 } }", [5, 3]),
        ("version_policy: { all: {} }", [5, 3, 1]),
        ("version_policy: { specific: { versions: [1, 4] } }", [1]),
    ],
)
def test_version_policy(text: str, expected: list[int]) -> None:
    assert served_versions(_policy(text), [1, 3, 5]) == expected
