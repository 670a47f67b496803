"""config.pbtxt parsing, auto-completion from a model signature, the checks of what ortserve
implements (unimplemented fields and bad parameters are refused), and the version policy."""

from __future__ import annotations

import re
from pathlib import Path

import onnxruntime as ort
import pytest
from structlog.testing import capture_logs

from ortserve.batching.policy import policy_from_config
from ortserve.errors import ConfigError, InvalidInput
from ortserve.repository.config import (
    ParsedConfig,
    Signature,
    TensorSpec,
    complete_config,
    parse_config_text,
    read_config,
)
from ortserve.repository.layout import check_model_name
from ortserve.repository.parameters import TEXT_KEYS, Parameters
from ortserve.repository.policy import served_versions
from ortserve.runtime.options import session_options
from ortserve.text import settings as settings_module
from ortserve_client.proto import model_config_pb2 as mc

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


# --- fields ortserve does not implement: refused, never accepted and ignored -----------------

SRC = "/r/m/config.pbtxt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'output [ { name: "out" dims: [ 2, 4 ] reshape: { shape: [ 8 ] } } ]',
            "output[0] 'out': reshape is not supported by ortserve for outputs",
        ),
        (
            'output [ { name: "out" label_filename: "labels.txt" } ]',
            "output[0] 'out': label_filename is not supported by ortserve; classification "
            "labels come from a text model's config.json id2label",
        ),
        (
            'input [ { name: "ids" }, { name: "mask" }, { name: "ids" } ]',
            "input[2] 'ids': listed twice (also input[0])",
        ),
        ('output [ { name: "out" }, { name: "out" } ]', "output[1] 'out': listed twice"),
        ("sequence_batching { }", "sequence_batching (stateful models) is not supported"),
        (
            "model_transaction_policy { decoupled: true }",
            "model_transaction_policy.decoupled is not supported by ortserve",
        ),
        ("response_cache { enable: true }", "response_cache is not supported by ortserve"),
        (
            'input [ { name: "ids" allow_ragged_batch: true } ]',
            "input[0] 'ids': allow_ragged_batch is not supported by ortserve",
        ),
        (
            'input [ { name: "ids" is_shape_tensor: true } ]',
            "input[0] 'ids': is_shape_tensor is not supported",
        ),
        (
            'output [ { name: "out" is_shape_tensor: true } ]',
            "output[0] 'out': is_shape_tensor is not supported",
        ),
        (
            'output [ { name: "out" is_non_linear_format_io: true } ]',
            "is_non_linear_format_io is not supported",
        ),
        (
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_INT32 '
            'source_input: "ids" } ]',
            "batch_input is not supported by ortserve",
        ),
        ('batch_output [ { target_name: "out" source_input: "ids" } ]', "batch_output is not"),
        ('platform: "ensemble"', "platform 'ensemble': ensembles are not supported by ortserve"),
        (
            'ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }',
            "ensemble_scheduling: ensembles are not supported",
        ),
        ('runtime: "model.py"', "runtime 'model.py' is not supported by ortserve"),
        (
            "dynamic_batching { preserve_ordering: true }",
            "dynamic_batching.preserve_ordering is not supported",
        ),
        (
            'model_operations { op_library_filename: "/x/libops.so" }',
            "model_operations (custom op libraries) is not supported",
        ),
        ('cc_model_filenames { key: "8.0" value: "a.onnx" }', "cc_model_filenames is not"),
        ('metric_tags { key: "team" value: "a" }', "metric_tags is not supported"),
        (
            'model_repository_agents { agents [ { name: "checksum" } ] }',
            "model_repository_agents is not supported",
        ),
        ("optimization { priority: PRIORITY_MAX }", "optimization.priority is not supported"),
        ("optimization { cuda { graphs: true } }", "optimization.cuda.graphs (CUDA graphs) is"),
        ("optimization { eager_batching: true }", "optimization.eager_batching is not"),
        (
            "instance_group [ { kind: KIND_MODEL } ]",
            "instance_group[0].kind KIND_MODEL is not supported by ortserve",
        ),
        (
            'instance_group [ { rate_limiter { resources [ { name: "r" count: 1 } ] } } ]',
            "instance_group[0].rate_limiter is not supported",
        ),
        ("instance_group [ { passive: true } ]", "instance_group[0].passive is not supported"),
        (
            "instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]",
            "groups of different kinds (KIND_CPU, KIND_GPU) are not supported by ortserve",
        ),
        (
            "instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]",
            "instances on more than one GPU ([0, 1]) are not supported",
        ),
        (
            "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
            "instance_group[0]: gpus [0] given for KIND_CPU instances",
        ),
    ],
)
def test_unimplemented_fields_are_refused_when_parsed(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, SRC)
    assert str(info.value).startswith(f"{SRC}: ")
    assert message in str(info.value)


def test_a_config_given_as_json_is_checked_when_completed() -> None:
    """A config given over the API is not parsed by parse_config_text: completion checks it."""
    config = mc.ModelConfig()
    config.response_cache.enable = True
    with pytest.raises(ConfigError, match="response_cache is not supported"):
        complete_config(ParsedConfig(config, "api", False), "m", DYNAMIC, 16)


def test_fields_left_at_their_defaults_are_fine() -> None:
    """Triton writes every field when it returns a config; its defaults mean nothing is asked."""
    text = """
name: "m" platform: "onnxruntime_onnx" backend: "onnxruntime" runtime: ""
max_batch_size: 4
input [ { name: "ids" format: FORMAT_NONE is_shape_tensor: false allow_ragged_batch: false
          optional: false } ]
output [ { name: "out" label_filename: "" is_shape_tensor: false } ]
dynamic_batching { preserve_ordering: false }
optimization { priority: PRIORITY_DEFAULT input_pinned_memory { enable: true }
               output_pinned_memory { enable: true } gather_kernel_buffer_threshold: 0
               eager_batching: false }
instance_group [ { name: "m_0" kind: KIND_CPU count: 2 gpus: [] profile: [] passive: false
                   host_policy: "" } ]
model_transaction_policy { decoupled: false }
response_cache { enable: false }
model_warmup [ { name: "w" batch_size: 4 inputs { key: "ids" value: { data_type: TYPE_INT64
                 dims: [ 3 ] zero_data: true } } } ]
"""
    config = complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16)
    assert [i.name for i in config.input] == ["ids", "mask"]
    assert config.instance_group[0].count == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'max_batch_size: 4\nmodel_warmup [ { name: "big" batch_size: 100 } ]',
            "model_warmup[0] 'big': batch_size 100 is more than max_batch_size 4",
        ),
        (
            'max_batch_size: 0\nmodel_warmup [ { name: "w" batch_size: 2 } ]',
            "model_warmup[0] 'w': batch_size 2 is more than 1 for a model without batching "
            "(max_batch_size 0)",
        ),
    ],
)
def test_a_warmup_bigger_than_a_batch_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16)
    assert str(info.value) == f"{SRC}: {message}"


def test_a_warmup_batch_checks_the_completed_max_batch_size() -> None:
    text = 'model_warmup [ { name: "w" batch_size: 16 } ]'
    assert complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16).max_batch_size == 16
    with pytest.raises(ConfigError, match="batch_size 16 is more than max_batch_size 8"):
        complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 8)


# --- parameters -------------------------------------------------------------------------------


def _params(**values: str) -> str:
    return "".join(
        f'parameters {{ key: "{key.replace("__", ".")}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in values.items()
    )


@pytest.mark.parametrize(
    ("key", "guess"),
    [
        ("intra_op_threads", "intra_op_thread_count"),
        ("inter_op_thread_cont", "inter_op_thread_count"),
        ("Task", "task"),
        ("normalise", "normalize"),
        ("max_batch_token", "max_batch_tokens"),
        ("session.intra_op.allow_spining", "session.intra_op.allow_spinning"),
        ("sesion.intra_op.allow_spinning", "session.intra_op.allow_spinning"),
    ],
)
def test_a_misspelt_parameter_is_refused(key: str, guess: str) -> None:
    text = f'parameters {{ key: "{key}" value: {{ string_value: "1" }} }}'
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, SRC)
    assert str(info.value) == (
        f"{SRC}: parameters '{key}' is not a parameter ortserve reads; did you mean '{guess}'?"
    )


def test_a_triton_backend_parameter_ortserve_lacks_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(_params(gpu_mem_limit="4294967296"), SRC)
    assert str(info.value).startswith(f"{SRC}: parameters 'gpu_mem_limit' (a CUDA provider")
    assert "is not supported by ortserve" in str(info.value)


def test_unknown_parameters_load_with_a_warning() -> None:
    text = _params(team="search", owner_email="a@b.c", session__some_future_key="1")
    with capture_logs() as logs:
        config = complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16)
    assert config.parameters["team"].string_value == "search"
    warnings = {tuple(entry["keys"]): entry for entry in logs if entry["log_level"] == "warning"}
    assert set(warnings) == {("owner_email", "team"), ("session.some_future_key",)}
    assert all(entry["source"] == SRC for entry in warnings.values())


def test_known_parameters_raise_no_warning() -> None:
    text = _params(
        intra_op_thread_count="1", task="sentence-embeddings", session__intra_op__allow_spinning="0"
    )
    with capture_logs() as logs:
        complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16)
    assert not [entry for entry in logs if entry["log_level"] == "warning"]


def test_text_keys_are_the_ones_text_settings_reads() -> None:
    source = (Path(settings_module.__file__)).read_text()
    read = set(re.findall(r'params\.\w+\(\s*"([a-z_]+)"', source))
    assert read == set(TEXT_KEYS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"intra_op_thread_count": "-3"},
            "parameters 'intra_op_thread_count' must be an integer from 0 to 1024, got '-3'",
        ),
        (
            {"inter_op_thread_count": "two"},
            "parameters 'inter_op_thread_count' must be an integer from 0 to 1024, got 'two'",
        ),
        (
            {"execution_mode": "9"},
            "parameters 'execution_mode' must be 0 (sequential) or 1 (parallel), got '9'",
        ),
        (
            {"session__intra_op__allow_spinning": "banana"},
            "parameters 'session.intra_op.allow_spinning' must be true or false, got 'banana'",
        ),
        (
            {"session__dynamic_block_base": "four"},
            "parameters 'session.dynamic_block_base' must be an integer from 0 to 2147483647, "
            "got 'four'",
        ),
        (
            {"enable_mem_arena": "maybe"},
            "parameters 'enable_mem_arena' must be true or false, got 'maybe'",
        ),
    ],
)
def test_bad_session_parameters_are_refused(values: dict[str, str], message: str) -> None:
    # Integers are refused as the config is parsed (check_supported), the rest when read.
    with pytest.raises(ConfigError) as info:
        session_options(parse_config_text(_params(**values), SRC).config, SRC)
    assert str(info.value) == f"{SRC}: {message}"


def test_session_flags_take_true_and_false() -> None:
    """ONNX Runtime compares these with "1": "true" would quietly have meant off."""
    text = _params(session__intra_op__allow_spinning="true", session__set_denormal_as_zero="off")
    options = session_options(parse_config_text(text, SRC).config, SRC)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "0"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        (2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),  # as Triton's ONNX Runtime backend
    ],
)
def test_graph_levels_mean_what_they_mean_in_triton(
    level: int, expected: ort.GraphOptimizationLevel
) -> None:
    config = parse_config_text(f"optimization {{ graph {{ level: {level} }} }}", SRC).config
    assert session_options(config, SRC).graph_optimization_level == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size: 4\n" + _params(max_batch_tokens="-5"),
            "parameters 'max_batch_tokens' must be an integer from 0 to 2147483647, got '-5'",
        ),
        (
            "max_batch_size: 4\n" + _params(max_batch_tokens="512"),
            "parameters 'max_batch_tokens' needs dynamic_batching; without it each request "
            "runs alone",
        ),
        (
            "max_batch_size: 0\ndynamic_batching { }\n" + _params(batch_grouping="arrival"),
            "parameters 'batch_grouping' needs max_batch_size > 0",
        ),
        (
            "max_batch_size: 4\ndynamic_batching { }\n" + _params(batch_grouping="random"),
            "parameters 'batch_grouping' must be length (nearest length first) or arrival "
            "(arrival order), got 'random'",
        ),
        (
            "max_batch_size: 0\ndynamic_batching { preferred_batch_size: [ 2 ] }",
            "dynamic_batching.preferred_batch_size needs max_batch_size > 0",
        ),
    ],
)
def test_batching_parameters_are_checked(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:  # integers as the config is parsed, the rest later
        policy_from_config(complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 16), SRC)
    assert str(info.value).startswith(f"{SRC}: {message}")


def test_batching_parameters_with_dynamic_batching_are_taken() -> None:
    text = _params(max_batch_tokens="512", batch_grouping="arrival")
    policy = policy_from_config(complete_config(parse_config_text(text, SRC), "m", DYNAMIC, 8), SRC)
    assert (policy.max_batch_tokens, policy.group_by_length) == (512, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: -5", "max_batch_size must be >= 0, got -5"),
        ("instance_group [ { count: -1 } ]", "instance_group[0].count must be >= 1 (got -1)"),
        (
            "instance_group [ { count: 1 }, { count: 100000 } ]",
            "instance_group[1].count must be at most 256 (got 100000)",
        ),
        (
            "max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 2, -1 ] }",
            "dynamic_batching.preferred_batch_size[1] must be >= 1, got -1",
        ),
        (
            _params(intra_op_thread_count="99999999999999999999"),
            "parameters 'intra_op_thread_count' must be an integer from 0 to 1024, "
            "got '99999999999999999999'",
        ),
        (
            _params(inter_op_thread_count="1025"),
            "parameters 'inter_op_thread_count' must be an integer from 0 to 1024, got '1025'",
        ),
        (
            _params(session__dynamic_block_base="2147483648"),
            "parameters 'session.dynamic_block_base' must be an integer from 0 to 2147483647",
        ),
        (
            _params(max_batch_tokens="1_000"),
            "parameters 'max_batch_tokens' must be an integer from 0 to 2147483647, got '1_000'",
        ),
        (
            _params(max_sequence_length="\u0663"),  # an Arabic-Indic 3: int() would take it
            "parameters 'max_sequence_length' must be an integer from 1 to 2147483647",
        ),
        (
            _params(stride="9" * 5000),  # past Python's int() digit limit
            "parameters 'stride' must be an integer from 0 to 2147483647, got '99999",
        ),
    ],
)
def test_values_out_of_range_are_refused_as_the_config_is_parsed(text: str, message: str) -> None:
    """No model needed: a config given over RepositoryModelLoad is refused before any load."""
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, SRC)
    assert str(info.value).startswith(f"{SRC}: {message}")
    assert len(str(info.value)) < 300  # a long value is named, not echoed back whole


#: Every integer parameter and its range, as the README states them.
INTEGER_PARAMETERS = {
    "intra_op_thread_count": (0, 1024),
    "inter_op_thread_count": (0, 1024),
    "session.dynamic_block_base": (0, 2**31 - 1),
    "max_batch_tokens": (0, 2**31 - 1),
    "max_sequence_length": (1, 2**31 - 1),
    "stride": (0, 2**31 - 1),
    "max_answer_length": (1, 2**31 - 1),
}


def test_the_integer_parameters_are_these() -> None:
    from ortserve.repository.parameters import INTEGER_RANGES

    assert INTEGER_PARAMETERS.items() <= INTEGER_RANGES.items()


@pytest.mark.parametrize("key", sorted(INTEGER_PARAMETERS))
def test_every_integer_parameter_is_bounded_when_read(key: str) -> None:
    """The readers themselves refuse a value past the range (a config built without parsing
    reaches them unchecked): onnxruntime never gets a number its C int cannot hold."""
    config = mc.ModelConfig()
    config.parameters[key].string_value = "99999999999999999999"
    low, high = INTEGER_PARAMETERS[key]
    with pytest.raises(ConfigError) as info:
        Parameters(config, SRC).integer(key, 0)
    assert str(info.value) == (
        f"{SRC}: parameters '{key}' must be an integer from {low} to {high}, "
        "got '99999999999999999999'"
    )


def test_session_thread_counts_past_a_c_int_name_the_key() -> None:
    config = mc.ModelConfig()
    config.parameters["intra_op_thread_count"].string_value = "99999999999999999999"
    with pytest.raises(ConfigError, match="'intra_op_thread_count' must be an integer from 0 to"):
        session_options(config, SRC)


@pytest.mark.parametrize("name", ["okname\n", "ok\nname", "a" * 256, "", ".hidden", "a/b", "a..b"])
def test_model_names_are_matched_whole(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_model_name(name)
    assert len(str(info.value)) < 300


def test_valid_model_names_pass() -> None:
    for name in ("ok", "Ok_name-1.v2", "_x", "a" * 255):
        check_model_name(name)
