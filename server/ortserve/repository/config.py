"""config.pbtxt: parse it into Triton's ModelConfig, auto-complete it from the model, check it.

Auto-completion takes the model's signature (names, types and dims of its inputs and outputs),
which the runtime reads from the graph; this module knows nothing of ONNX Runtime itself.

A field ortserve does not implement is refused with the field named, never accepted and ignored
(``check_supported``); a setting left at its default (as Triton writes every field when it
returns a config) is fine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from google.protobuf import text_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ortserve.datatypes import config_type_name
from ortserve.errors import ConfigError
from ortserve.repository.layout import CONFIG_FILENAME, check_inside
from ortserve.repository.parameters import SESSION_PREFIX, Parameters
from ortserve.signature import Signature, TensorSpec
from ortserve_client.proto import model_config_pb2 as mc

log = structlog.get_logger("ortserve.config")

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# proto3 cannot tell "max_batch_size: 0" from an absent field, so look at the text itself.
_MAX_BATCH_SIZE_GIVEN = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)
_Tensor = TypeVar("_Tensor", mc.ModelInput, mc.ModelOutput)
_LINE_COL = re.compile(r"^(\d+):(\d+) : (.*)$", re.DOTALL)
_UNSUPPORTED = "is not supported by ortserve"
#: The largest ``instance_group`` count: each instance is a session holding the model's weights,
#: so a mistyped count would exhaust memory before it failed.
MAX_INSTANCES = 256

#: ``max_batch_size`` given to a batchable model whose config names none (``ortserve serve
#: --default-max-batch-size`` changes it for the daemon; the exporter writes it into configs).
DEFAULT_MAX_BATCH_SIZE = 32


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    config: mc.ModelConfig
    source: str  # the file it came from, or a note that there was none, for messages
    max_batch_size_given: bool


def read_config(model_dir: Path, confine: Path | None = None) -> ParsedConfig:
    """Parse ``<model_dir>/config.pbtxt`` if present; errors name the file and line. With
    ``confine`` (a resolved folder), a file that links outside it is refused unread."""
    path = model_dir / CONFIG_FILENAME
    if confine is not None:
        check_inside(path, confine)
    if not path.exists():
        return ParsedConfig(mc.ModelConfig(), f"{model_dir} (no {CONFIG_FILENAME})", False)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_config_text(text, str(path))


def parse_config_text(text: str, source: str) -> ParsedConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        match = _LINE_COL.match(str(exc))
        where = f"{source}:{match.group(1)}:{match.group(2)}" if match else source
        detail = match.group(3) if match else str(exc)
        raise ConfigError(f"{where}: {detail}") from None
    check_supported(config, source)
    return ParsedConfig(config, source, bool(_MAX_BATCH_SIZE_GIVEN.search(text)))


def complete_config(
    parsed: ParsedConfig, model_name: str, signature: Signature, default_max_batch_size: int
) -> mc.ModelConfig:
    """The config with everything the model itself can tell filled in, then checked."""
    config = mc.ModelConfig()
    config.CopyFrom(parsed.config)
    src = parsed.source
    # Again: a config given over the API was not parsed here. What it leaves unread is warned
    # about once the config is complete.
    unread = check_supported(config, src)
    if config.name and config.name != model_name:
        raise ConfigError(f"{src}: name '{config.name}' does not match the folder '{model_name}'")
    config.name = model_name
    if config.platform and config.platform != PLATFORM:
        raise ConfigError(f"{src}: platform '{config.platform}' is not '{PLATFORM}'")
    if config.backend and config.backend != BACKEND:
        raise ConfigError(f"{src}: backend '{config.backend}' is not '{BACKEND}'")
    config.platform = PLATFORM
    config.backend = BACKEND
    if not parsed.max_batch_size_given:
        config.max_batch_size = default_max_batch_size if _batchable(signature) else 0
        scheduled = config.HasField("dynamic_batching") or config.HasField("sequence_batching")
        if config.max_batch_size > 1 and not scheduled:
            config.dynamic_batching.SetInParent()  # as Triton's auto-complete does
    batched = config.max_batch_size > 0
    _complete_tensors(config.input, signature.inputs, batched, src, "input")
    _complete_tensors(config.output, signature.outputs, batched, src, "output")
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    for group in config.instance_group:
        if group.count == 0:  # Triton's default (check_supported refused the other values)
            group.count = 1
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    _check_warmup(config, src)
    _warn_ignored_parameters(unread, src)
    return config


def check_supported(config: mc.ModelConfig, src: str) -> list[str]:
    """Refuse what ortserve would otherwise accept and ignore, or serve other than it says;
    return the ``parameters`` keys it does not read (kept, for a warning).

    Needs no model: run on every parsed config, so that a refusal names the field before any
    session is built."""
    if config.platform == "ensemble" or config.HasField("ensemble_scheduling"):
        field = "platform 'ensemble'" if config.platform == "ensemble" else "ensemble_scheduling"
        raise ConfigError(
            f"{src}: {field}: ensembles are not supported by ortserve, which serves ONNX "
            f"models only (platform '{PLATFORM}')"
        )
    unsupported = [
        (config.HasField("sequence_batching"), "sequence_batching (stateful models)"),
        (bool(config.runtime), f"runtime '{config.runtime}'"),
        (bool(config.batch_input), "batch_input"),
        (bool(config.batch_output), "batch_output"),
        (config.dynamic_batching.preserve_ordering, "dynamic_batching.preserve_ordering"),
        (
            config.model_transaction_policy.decoupled and not _generation(config),
            "model_transaction_policy.decoupled",
        ),
        (config.response_cache.enable, "response_cache"),
        (
            bool(config.model_operations.op_library_filename),
            "model_operations (custom op libraries)",
        ),
        (bool(config.model_repository_agents.agents), "model_repository_agents"),
        (bool(config.cc_model_filenames), "cc_model_filenames"),
        (bool(config.metric_tags), "metric_tags"),
        (bool(config.model_metrics.metric_control), "model_metrics"),
    ]
    optimization = config.optimization
    unsupported += [
        (
            optimization.priority != mc.ModelOptimizationPolicy.PRIORITY_DEFAULT,
            "optimization.priority",
        ),
        (
            optimization.cuda.graphs or bool(optimization.cuda.graph_spec),
            "optimization.cuda.graphs (CUDA graphs)",
        ),
        (optimization.cuda.busy_wait_events, "optimization.cuda.busy_wait_events"),
        (optimization.eager_batching, "optimization.eager_batching"),
    ]
    for is_set, field in unsupported:
        if is_set:
            raise ConfigError(f"{src}: {field} {_UNSUPPORTED}")
    _check_values(config, src)
    _check_instance_groups(config, src)
    _check_tensor_fields(config.input, src, "input")
    _check_tensor_fields(config.output, src, "output")
    parameters = Parameters(config, src)
    parameters.check_integers()
    return parameters.check_keys()


def _generation(config: mc.ModelConfig) -> bool:
    """A text-generation model (``parameters`` task): decoupled, its tokens streamed as made."""
    task = config.parameters.get("task")
    return task is not None and task.string_value.strip() == "text-generation"


def _check_values(config: mc.ModelConfig, src: str) -> None:
    """Numbers that no model makes right, refused with the field named (the proto types allow
    negative counts and sizes; a config given over the API is checked here before any load)."""
    if config.max_batch_size < 0:
        raise ConfigError(f"{src}: max_batch_size must be >= 0, got {config.max_batch_size}")
    for index, group in enumerate(config.instance_group):
        where = f"{src}: instance_group[{index}].count"
        if group.count < 0:  # 0 is Triton's default: 1 instance
            raise ConfigError(f"{where} must be >= 1 (got {group.count})")
        if group.count > MAX_INSTANCES:
            raise ConfigError(f"{where} must be at most {MAX_INSTANCES} (got {group.count})")
    for index, size in enumerate(config.dynamic_batching.preferred_batch_size):
        if size < 1:
            raise ConfigError(
                f"{src}: dynamic_batching.preferred_batch_size[{index}] must be >= 1, got {size}"
            )


def _check_instance_groups(config: mc.ModelConfig, src: str) -> None:
    kinds: set[mc.ModelInstanceGroup.Kind.ValueType] = set()
    gpus: set[int] = set()
    for index, group in enumerate(config.instance_group):
        where = f"{src}: instance_group[{index}]"
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ConfigError(f"{where}.kind KIND_MODEL {_UNSUPPORTED}; use KIND_CPU or KIND_GPU")
        for is_set, field in (
            (group.HasField("rate_limiter"), "rate_limiter"),
            (bool(group.secondary_devices), "secondary_devices"),
            (bool(group.profile), "profile"),
            (group.passive, "passive"),
            (bool(group.host_policy), "host_policy"),
        ):
            if is_set:
                raise ConfigError(f"{where}.{field} {_UNSUPPORTED}")
        if group.gpus and group.kind == mc.ModelInstanceGroup.KIND_CPU:
            raise ConfigError(f"{where}: gpus {list(group.gpus)} given for KIND_CPU instances")
        kinds.add(group.kind)
        gpus.update(group.gpus)
    if len(kinds) > 1:
        names = sorted(mc.ModelInstanceGroup.Kind.Name(kind) for kind in kinds)
        raise ConfigError(
            f"{src}: instance_group: groups of different kinds ({', '.join(names)}) are "
            "not supported by ortserve; every instance of a model runs on the same device"
        )
    if len(gpus) > 1:
        raise ConfigError(
            f"{src}: instance_group: instances on more than one GPU ({sorted(gpus)}) are not "
            "supported by ortserve; every instance of a model runs on the same device"
        )


def _check_tensor_fields(
    entries: RepeatedCompositeFieldContainer[_Tensor], src: str, kind: str
) -> None:
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"{src}: {kind}[{index}] '{entry.name}'"
        if entry.name in first:
            raise ConfigError(f"{where}: listed twice (also {kind}[{first[entry.name]}])")
        first[entry.name] = index
        unsupported = [
            (entry.is_shape_tensor, "is_shape_tensor"),
            (entry.is_non_linear_format_io, "is_non_linear_format_io"),
        ]
        if isinstance(entry, mc.ModelInput):
            unsupported.append((entry.allow_ragged_batch, "allow_ragged_batch"))
        for is_set, field in unsupported:
            if is_set:
                raise ConfigError(f"{where}: {field} {_UNSUPPORTED}")
        if isinstance(entry, mc.ModelOutput):
            if entry.HasField("reshape"):
                raise ConfigError(
                    f"{where}: reshape {_UNSUPPORTED} for outputs (answers keep the model's own "
                    "shape); remove it, and give dims as the model's output shape or leave "
                    "them out"
                )
            if entry.label_filename:
                raise ConfigError(
                    f"{where}: label_filename {_UNSUPPORTED}; classification labels come from "
                    "a text model's config.json id2label (beside its tokenizer.json)"
                )


def _check_warmup(config: mc.ModelConfig, src: str) -> None:
    """``batch_size`` rows of a batched model, at most ``max_batch_size``; 1 otherwise."""
    limit = max(config.max_batch_size, 1)
    for index, warmup in enumerate(config.model_warmup):
        if warmup.batch_size > limit:
            what = (
                f"max_batch_size {config.max_batch_size}"
                if config.max_batch_size
                else "1 for a model without batching (max_batch_size 0)"
            )
            raise ConfigError(
                f"{src}: model_warmup[{index}] '{warmup.name}': batch_size {warmup.batch_size} "
                f"is more than {what}"
            )


def _warn_ignored_parameters(ignored: list[str], src: str) -> None:
    session = [key for key in ignored if key.startswith(SESSION_PREFIX)]
    others = [key for key in ignored if not key.startswith(SESSION_PREFIX)]
    if others:
        log.warning(
            "config parameters that ortserve does not read are ignored",
            source=src,
            keys=others,
        )
    if session:
        log.warning(
            "session config keys passed to onnxruntime that it is not known to read",
            source=src,
            keys=session,
        )


def _batchable(signature: Signature) -> bool:
    specs = signature.inputs + signature.outputs
    return bool(specs) and all(spec.dims and spec.dims[0] == -1 for spec in specs)


def _complete_tensors(
    entries: RepeatedCompositeFieldContainer[_Tensor],
    specs: Sequence[TensorSpec],
    batched: bool,
    src: str,
    kind: str,
) -> None:
    by_name = {spec.name: spec for spec in specs}
    listed = set()
    for index, entry in enumerate(entries):
        field = f"{kind}[{index}] '{entry.name}'"
        spec = by_name.get(entry.name)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"{src}: {field}: the model has no {kind} of that name ({known})")
        listed.add(entry.name)
        model_dims = _config_dims(spec, batched, src, kind)
        if entry.data_type == mc.TYPE_INVALID:
            entry.data_type = mc.DataType.ValueType(spec.data_type)
        elif entry.data_type != spec.data_type:
            raise ConfigError(
                f"{src}: {field}: data_type {config_type_name(entry.data_type)} does not match "
                f"the model's {config_type_name(spec.data_type)}"
            )
        if not entry.dims and not entry.HasField("reshape"):
            entry.dims.extend(model_dims)
        elif not entry.HasField("reshape"):
            _check_dims(list(entry.dims), model_dims, f"{src}: {field}")
    # A model tensor the config does not list would be unusable: list it.
    for spec in specs:
        if spec.name not in listed:
            entries.add(
                name=spec.name,
                data_type=spec.data_type,
                dims=_config_dims(spec, batched, src, kind),
            )


def _config_dims(spec: TensorSpec, batched: bool, src: str, kind: str) -> list[int]:
    if not batched:
        return list(spec.dims)
    if not spec.dims or spec.dims[0] != -1:
        raise ConfigError(
            f"{src}: max_batch_size > 0 needs a dynamic first dimension, but {kind} "
            f"'{spec.name}' has shape {list(spec.dims)}"
        )
    return list(spec.dims[1:])


def _check_dims(config_dims: list[int], model_dims: list[int], where: str) -> None:
    if len(config_dims) != len(model_dims):
        raise ConfigError(
            f"{where}: dims {config_dims} have rank {len(config_dims)}, the model's "
            f"{model_dims} rank {len(model_dims)} (without the batch dimension when "
            "max_batch_size > 0)"
        )
    for got, want in zip(config_dims, model_dims, strict=True):
        if want != -1 and got != want:
            raise ConfigError(f"{where}: dims {config_dims} do not match the model's {model_dims}")
