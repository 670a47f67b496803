"""Quantization with ONNX Runtime: dynamic INT8 per CPU family, or 8-bit weights only.

Dynamic INT8 (``quantize_dynamic``) quantizes the weights of MatMul (and fused Attention) ahead
of time and the activations at run time; weights per channel by default (per tensor costs
all-MiniLM-L6-v2 up to 9% cosine). Embedding tables (Gather) stay FP32: quantizing them costs
accuracy and gains no speed. ``DefaultTensorType=FLOAT`` lets it quantize O2-optimized graphs
whose fused nodes carry no shape type. ``weight-only`` stores MatMul weights as 8-bit blocks of 32
(MatMulNBits, needs onnx-ir): no activation scale is shared across a tensor, so it keeps far more
accuracy than dynamic INT8 (see WEIGHT_ONLY_ACCURACY_LEVEL for how it computes).

``--quantize`` (auto) tries several forms (``auto_candidates``): on x86 without VNNI, ORT's U8S8
kernels multiply through VPMADDUBSW, whose 16-bit sums can saturate; ORT's quantization guide
recommends 7-bit weights (``reduce_range``) or U8U8 there (neither has the problem). With VNNI
(VPDPBUSD) and on ARM the products accumulate in 32 bits, so those forms only cost accuracy.
Sensitive nodes can be kept in FP32 (``keep_fp32``, see ``convert/sensitivity.py``).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ortserve.export.errors import ExportError

#: Per CPU family: weight type and whether weights use 7 bits (Optimum's AutoQuantizationConfig).
_TARGETS = {
    "avx2": ("QUInt8", False),
    "avx512": ("QInt8", False),
    "avx512_vnni": ("QInt8", False),
    "arm64": ("QInt8", False),
}
#: Families whose U8S8 products go through VPMADDUBSW (16-bit sums that can saturate): x86
#: without VNNI. There 7-bit or unsigned weights can win accuracy back; elsewhere they cannot.
_SATURATING = frozenset({"avx2", "avx512"})
_OPS = ["MatMul", "Attention"]
WEIGHT_ONLY_BLOCK_SIZE = 32
#: MatMulNBits' compute type: 4 multiplies in int8 with the activations quantized per block of
#: 32 at run time (fast; all-MiniLM-L6-v2 keeps 0.999 cosine). 0 would compute in FP32 from the
#: dequantized weights: a little more accurate, but slower than the FP32 model on CPUs.
WEIGHT_ONLY_ACCURACY_LEVEL = 4


@dataclass(frozen=True, slots=True)
class Quantization:
    """One way to quantize: the CPU family (or weight-only) and the knobs ``auto`` varies."""

    target: str  # avx2, avx512, avx512_vnni, arm64 or weight-only
    per_channel: bool
    reduce_range: bool | None = None  # 7-bit weights; None: the family's default (_TARGETS)
    u8u8: bool = False  # weights uint8 like the activations (dynamic activations are uint8)
    keep_fp32: tuple[str, ...] = ()  # names of nodes left unquantized (nodes_to_exclude)

    @property
    def weight_type(self) -> str:
        """ORT's ``QuantType`` name for the weights (dynamic INT8 only)."""
        return "QUInt8" if self.u8u8 else _TARGETS[self.target][0]

    @property
    def seven_bit(self) -> bool:
        """Whether the weights use 7 bits (dynamic INT8 only)."""
        return _TARGETS[self.target][1] if self.reduce_range is None else self.reduce_range

    @property
    def variant_name(self) -> str:
        """Suffixes name only what differs from the family's default, so that two specs that
        quantize the same way share a name."""
        keep = f"-keep{len(self.keep_fp32)}" if self.keep_fp32 else ""
        if self.target == "weight-only":
            return f"int8-weight-only{keep}"
        default_type, default_range = _TARGETS[self.target]
        rr = "-rr" if self.seven_bit and not default_range else ""
        u8 = "-u8u8" if self.weight_type == "QUInt8" and default_type != "QUInt8" else ""
        return f"int8-{self.target}{rr}{u8}{keep}"

    def describe(self) -> str:
        kept = f", {len(self.keep_fp32)} node(s) kept in FP32" if self.keep_fp32 else ""
        if self.target == "weight-only":
            return (
                f"8-bit weights in blocks of {WEIGHT_ONLY_BLOCK_SIZE} (MatMulNBits, "
                f"accuracy_level {WEIGHT_ONLY_ACCURACY_LEVEL}){kept}"
            )
        default = Quantization(self.target, self.per_channel)
        forms = ""
        if self.seven_bit != default.seven_bit:
            forms += ", 7-bit weights (reduce_range)" if self.seven_bit else ", 8-bit weights"
        if self.weight_type != default.weight_type:
            forms += ", U8U8" if self.weight_type == "QUInt8" else ", U8S8"
        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"dynamic INT8 for {self.target}, {granularity}{forms}{kept}"


def auto_candidates(family: str, per_channel: bool, has_matmul_weights: bool) -> list[Quantization]:
    """What ``--quantize`` (auto) tries on a CPU of ``family``, in order of expected speed.

    Dynamic INT8 for the family first; then, where its U8S8 products can saturate (x86 without
    VNNI), the 7-bit and U8U8 forms (none for avx2, whose default is U8U8 already: nothing
    saturates, and 7-bit weights would only cost accuracy); 8-bit
    weight-only last, when the graph has MatMul weights for it. Dynamic INT8 with sensitive nodes
    kept in FP32 needs data (``sensitivity.sensitive_nodes``): the caller builds it from the first.
    """
    if family not in _TARGETS:
        raise ExportError(f"no quantization candidates for CPU family {family!r}")
    first = Quantization(family, per_channel)
    candidates = [first]
    if family in _SATURATING and first.weight_type == "QInt8":  # U8S8: can saturate
        for form in (replace(first, reduce_range=True), replace(first, u8u8=True)):
            if _settings(form) not in {_settings(c) for c in candidates}:
                candidates.append(form)
    if has_matmul_weights:
        candidates.append(Quantization("weight-only", per_channel))
    return candidates


def _settings(spec: Quantization) -> tuple[str, bool, tuple[str, ...]]:
    return spec.weight_type, spec.seven_bit, spec.keep_fp32


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
    _check_kept_nodes(source, spec)
    try:
        with _quiet_logging():
            if spec.target == "weight-only":
                _weight_only(source, output, spec.keep_fp32)
            else:
                _dynamic(source, output, spec)
    except Exception as exc:  # ORT's quantizer raises bare RuntimeError/AssertionError/...
        raise ExportError(f"quantizing {source} ({spec.describe()}) failed: {exc}") from exc
    _check_quantized_something(output, spec)
    return output


def has_matmul_weights(path: Path) -> bool:
    """Whether weight-only quantization has something to take: a MatMul whose second input is a
    2-D initializer (MatMulNBits' rule; Gemm and weights reached through a Transpose do not
    count)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer if len(init.dims) == 2}
    return any(
        node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights
        for node in graph.node
    )


def _check_kept_nodes(source: Path, spec: Quantization) -> None:
    """ORT ignores unknown names in ``nodes_to_exclude``: a typo would quietly keep nothing."""
    if not spec.keep_fp32:
        return
    import onnx

    names = {node.name for node in onnx.load(str(source), load_external_data=False).graph.node}
    missing = [name for name in spec.keep_fp32 if name not in names]
    if missing:
        raise ExportError(
            f"quantizing {source} ({spec.describe()}): no node named {', '.join(missing)} "
            "in the graph to keep in FP32"
        )


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

    quantize_dynamic(
        source,
        output,
        op_types_to_quantize=_OPS,
        per_channel=spec.per_channel,
        reduce_range=spec.seven_bit,
        weight_type=getattr(QuantType, spec.weight_type),
        nodes_to_exclude=list(spec.keep_fp32),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _weight_only(source: Path, output: Path, keep_fp32: tuple[str, ...]) -> None:
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
        nodes_to_exclude=list(keep_fp32),
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
