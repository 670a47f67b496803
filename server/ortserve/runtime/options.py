"""ONNX Runtime session options and execution providers, from a model's ModelConfig.

Names follow Triton's ONNX Runtime backend so that an existing Triton repository means the same
thing here: ``optimization.graph.level`` (-1 basic, 1 extended, 2 none, 0 all: Triton's values),
``parameters`` keys ``intra_op_thread_count``, ``inter_op_thread_count`` (0 to 1024; 0 lets
ORT choose), ``execution_mode`` (0 sequential, 1 parallel), ``enable_mem_arena``,
``enable_mem_pattern``, any ``session.*`` key (passed as an ORT session config entry, e.g.
``session.intra_op.allow_spinning``; the known flags among them take true/false or 1/0), and
``optimization.execution_accelerators`` (``tensorrt`` / ``cuda`` on GPU, ``openvino`` on CPU).
ortserve adds the parameter ``allow_provider_fallback`` ("true" lets a model load on the CPU when
a provider it names is not available).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from ortserve.errors import ConfigError, ModelLoadError
from ortserve.repository.parameters import (
    SESSION_FLAGS,
    SESSION_INTEGERS,
    SESSION_PREFIX,
    Parameters,
)
from ortserve_client.proto import model_config_pb2 as mc

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

_ACCELERATORS = {"tensorrt": TENSORRT, "cuda": CUDA, "openvino": OPENVINO}

# Triton's TensorRT accelerator parameters -> ORT TensorRT provider options.
_TRT_KEYS = {
    "precision_mode": "trt_fp16_enable",
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_engine_cache_enable": "trt_engine_cache_enable",
    "trt_engine_cache_path": "trt_engine_cache_path",
}

# Triton's ONNX Runtime backend: 0 (unset) all, -1 basic, 1 extended, 2 none.
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_EXECUTION_MODES = {"0": "sequential", "1": "parallel"}

Provider = tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    providers: list[Provider]
    notes: list[str] = field(default_factory=list)  # fallbacks taken, for the log and index


def session_options(config: mc.ModelConfig, source: str) -> ort.SessionOptions:
    params = Parameters(config, source)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's warnings go to stderr unstructured; keep errors only
    level = config.optimization.graph.level
    if level not in _GRAPH_LEVELS:
        raise ConfigError(f"{source}: optimization.graph.level must be -1, 0, 1 or 2, got {level}")
    options.graph_optimization_level = _GRAPH_LEVELS[level]
    # Ranges from parameters.INTEGER_RANGES: a value ORT's C int cannot take is refused there,
    # named, instead of failing here as a pybind TypeError.
    options.intra_op_num_threads = params.integer("intra_op_thread_count", 0)
    options.inter_op_num_threads = params.integer("inter_op_thread_count", 0)
    mode = params.choice("execution_mode", "0", _EXECUTION_MODES)
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if mode == "1" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.enable_cpu_mem_arena = params.flag("enable_mem_arena", True)
    options.enable_mem_pattern = params.flag("enable_mem_pattern", True)
    for key, value in params.items():
        if key.startswith(SESSION_PREFIX):
            options.add_session_config_entry(key, _session_value(params, key, value))
    return options


def _session_value(params: Parameters, key: str, value: str) -> str:
    """An ORT session config value, checked where ortserve knows the key's type."""
    if key in SESSION_FLAGS:
        return "1" if params.flag(key, False) else "0"
    if key in SESSION_INTEGERS:
        return str(params.integer(key, 0))
    return value


def provider_plan(config: mc.ModelConfig, available: Collection[str], source: str) -> ProviderPlan:
    """The providers to ask ONNX Runtime for, in priority order, CPU always last."""
    allow_fallback = Parameters(config, source).flag("allow_provider_fallback", False)
    wanted = _wanted_providers(config, available, source)
    plan: list[Provider] = []
    notes: list[str] = []
    for name, opts in wanted:
        if name in available:
            plan.append((name, opts))
        elif allow_fallback:
            notes.append(f"{name} is not available here; falling back")
        else:
            raise ModelLoadError(
                f"{source}: execution provider {name} is not available in this onnxruntime "
                f"build (available: {', '.join(sorted(available))}); install the build that "
                'has it, or set parameters { key: "allow_provider_fallback" value: '
                '{ string_value: "true" } }'
            )
    plan.append((CPU, {}))
    return ProviderPlan(plan, notes)


def _wanted_providers(
    config: mc.ModelConfig, available: Collection[str], source: str
) -> list[Provider]:
    kinds = {group.kind for group in config.instance_group} or {mc.ModelInstanceGroup.KIND_AUTO}
    gpu_ids = [gpu for group in config.instance_group for gpu in group.gpus]
    use_gpu = mc.ModelInstanceGroup.KIND_GPU in kinds or (
        mc.ModelInstanceGroup.KIND_AUTO in kinds and CUDA in available
    )
    wanted: list[Provider] = []
    accelerators = config.optimization.execution_accelerators
    if use_gpu:
        device = {"device_id": str(gpu_ids[0] if gpu_ids else 0)}
        for acc in accelerators.gpu_execution_accelerator:
            name = _accelerator(acc.name, source, "gpu")
            wanted.append((name, _accelerator_options(name, dict(acc.parameters), device)))
        if all(name != CUDA for name, _ in wanted):
            wanted.append((CUDA, dict(device)))
    for acc in accelerators.cpu_execution_accelerator:
        name = _accelerator(acc.name, source, "cpu")
        wanted.append((name, dict(acc.parameters)))
    return wanted


def _accelerator(name: str, source: str, where: str) -> str:
    provider = _ACCELERATORS.get(name)
    if provider is None:
        known = ", ".join(_ACCELERATORS)
        raise ConfigError(
            f"{source}: optimization.execution_accelerators.{where}_execution_accelerator: "
            f"unknown accelerator '{name}' (known: {known})"
        )
    return provider


def _accelerator_options(
    name: str, given: Mapping[str, str], device: dict[str, str]
) -> dict[str, str]:
    options = dict(device)
    for key, value in given.items():
        if name == TENSORRT and key in _TRT_KEYS:
            options[_TRT_KEYS[key]] = "1" if key == "precision_mode" and value == "FP16" else value
        else:
            options[key] = value
    return options


def ort_available_providers() -> list[str]:
    providers: Any = ort.get_available_providers()
    return list(providers)
