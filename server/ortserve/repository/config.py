"""config.pbtxt: parse it into Triton's ModelConfig, auto-complete it from the model, check it.

Auto-completion takes the model's signature (names, types and dims of its inputs and outputs),
which the runtime reads from the graph; this module knows nothing of ONNX Runtime itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ortserve.datatypes import config_type_name
from ortserve.errors import ConfigError
from ortserve.repository.layout import CONFIG_FILENAME
from ortserve_client._proto import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# proto3 cannot tell "max_batch_size: 0" from an absent field, so look at the text itself.
_MAX_BATCH_SIZE_GIVEN = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)
_Tensor = TypeVar("_Tensor", mc.ModelInput, mc.ModelOutput)
_LINE_COL = re.compile(r"^(\d+):(\d+) : (.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model graph declares it (-1 for a dynamic dimension)."""

    name: str
    data_type: int  # model_config DataType enum value
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    config: mc.ModelConfig
    source: str  # the file it came from, or a note that there was none, for messages
    max_batch_size_given: bool


def read_config(model_dir: Path) -> ParsedConfig:
    """Parse ``<model_dir>/config.pbtxt`` if present; errors name the file and line."""
    path = model_dir / CONFIG_FILENAME
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
    return ParsedConfig(config, source, bool(_MAX_BATCH_SIZE_GIVEN.search(text)))


def complete_config(
    parsed: ParsedConfig, model_name: str, signature: Signature, default_max_batch_size: int
) -> mc.ModelConfig:
    """The config with everything the model itself can tell filled in, then checked."""
    config = mc.ModelConfig()
    config.CopyFrom(parsed.config)
    src = parsed.source
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
    if config.max_batch_size < 0:
        raise ConfigError(f"{src}: max_batch_size must be >= 0, got {config.max_batch_size}")
    batched = config.max_batch_size > 0
    _complete_tensors(config.input, signature.inputs, batched, src, "input")
    _complete_tensors(config.output, signature.outputs, batched, src, "output")
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    for index, group in enumerate(config.instance_group):
        if group.count == 0:
            group.count = 1
        if group.count < 0:
            raise ConfigError(f"{src}: instance_group[{index}].count must be >= 1")
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    return config


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
