"""Quantization with ONNX Runtime: dynamic INT8 per CPU family, or 8-bit weights only.

Dynamic INT8 (``quantize_dynamic``) quantizes the weights of MatMul (and fused Attention) ahead
of time and the activations at run time; weights per channel by default (per tensor costs
all-MiniLM-L6-v2 up to 9% cosine). Embedding tables (Gather) stay FP32: quantizing them costs
accuracy and gains no speed. ``DefaultTensorType=FLOAT`` lets it quantize O2-optimized graphs
whose fused nodes carry no shape type. ``weight-only`` stores MatMul weights as 8-bit blocks of 32
(MatMulNBits, needs onnx-ir): no activation scale is shared across a tensor, so it keeps far more
accuracy than dynamic INT8 (see WEIGHT_ONLY_ACCURACY_LEVEL for how it computes).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ortserve.export.errors import ExportError

#: Per CPU family: weight type and whether weights use 7 bits (Optimum's AutoQuantizationConfig).
_TARGETS = {
    "avx2": ("QUInt8", False),
    "avx512": ("QInt8", False),
    "avx512_vnni": ("QInt8", False),
    "arm64": ("QInt8", False),
}
_OPS = ["MatMul", "Attention"]
WEIGHT_ONLY_BLOCK_SIZE = 32
#: MatMulNBits' compute type: 4 multiplies in int8 with the activations quantized per block of
#: 32 at run time (fast; all-MiniLM-L6-v2 keeps 0.999 cosine). 0 would compute in FP32 from the
#: dequantized weights: a little more accurate, but slower than the FP32 model on CPUs.
WEIGHT_ONLY_ACCURACY_LEVEL = 4


@dataclass(frozen=True, slots=True)
class Quantization:
    target: str  # avx2, avx512, avx512_vnni, arm64 or weight-only
    per_channel: bool

    @property
    def variant_name(self) -> str:
        return "int8-weight-only" if self.target == "weight-only" else f"int8-{self.target}"

    def describe(self) -> str:
        if self.target == "weight-only":
            return (
                f"8-bit weights in blocks of {WEIGHT_ONLY_BLOCK_SIZE} (MatMulNBits, "
                f"accuracy_level {WEIGHT_ONLY_ACCURACY_LEVEL})"
            )
        return (
            f"dynamic INT8 for {self.target}, {'per-channel' if self.per_channel else 'per-tensor'}"
        )


def resolve_target(target: str, per_channel: bool) -> Quantization:
    """``auto`` becomes this machine's best CPU family."""
    if target == "auto":
        target = detect_cpu_target()
    if target != "weight-only" and target not in _TARGETS:
        raise ExportError(f"--quantize {target}: use auto, weight-only or {', '.join(_TARGETS)}")
    return Quantization(target, per_channel)


def detect_cpu_target() -> str:
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        flags = []
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def quantize(source: Path, output: Path, spec: Quantization) -> Path:
    """Quantize ``source`` into ``output`` (a file path)."""
    try:
        with _quiet_logging():
            if spec.target == "weight-only":
                _weight_only(source, output)
            else:
                _dynamic(source, output, spec)
    except Exception as exc:  # ORT's quantizer raises bare RuntimeError/AssertionError/...
        raise ExportError(f"quantizing {source} ({spec.describe()}) failed: {exc}") from exc
    _check_quantized_something(output, spec)
    return output


#: Ops that only a quantizer writes: one of them in the output means weights were quantized.
_QUANTIZED_OPS = frozenset(
    {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "MatMulNBits", "QGemm"}
)


def _check_quantized_something(output: Path, spec: Quantization) -> None:
    """Refuse a "quantized" variant that is the FP32 graph again: the quantizer skips what it
    has no rule for (MatMulNBits takes MatMul with a weight initializer only: GPT-2's layers
    export as Gemm, and its tied LM head reads the embedding through a Transpose)."""
    import onnx

    model = onnx.load(str(output), load_external_data=False)
    if any(node.op_type in _QUANTIZED_OPS for node in model.graph.node):
        return
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Gemm")})
    hint = " (use dynamic INT8: --quantize)" if spec.target == "weight-only" else ""
    raise ExportError(
        f"--quantize {spec.target}: nothing in the graph was quantized ({spec.describe()} "
        f"found no weight it applies to among its {', '.join(ops) or 'no MatMul/Gemm'} "
        f"nodes){hint}; leave --quantize out to publish the FP32 graph"
    )


def _dynamic(source: Path, output: Path, spec: Quantization) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type, reduce_range = _TARGETS[spec.target]
    quantize_dynamic(
        source,
        output,
        op_types_to_quantize=_OPS,
        per_channel=spec.per_channel,
        reduce_range=reduce_range,
        weight_type=getattr(QuantType, weight_type),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _weight_only(source: Path, output: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # its import ran logging.basicConfig(INFO)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=8,
        block_size=WEIGHT_ONLY_BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=WEIGHT_ONLY_ACCURACY_LEVEL,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(output), False)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Keep ORT's quantizers quiet: they log every node at INFO, advise pre-processing on the
    root logger, and the MatMulNBits module calls ``logging.basicConfig`` when imported (undone
    here: the root logger gets its handlers and level back)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    root.setLevel(logging.ERROR)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
