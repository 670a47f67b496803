"""What ``--quantize`` (auto) tries, and finding the nodes to keep in FP32.

Real tiny ONNX graphs quantized by ONNX Runtime: no PyTorch, no hub.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve.export.convert.quantize import (
    Quantization,
    auto_candidates,
    has_matmul_weights,
    quantize,
)
from ortserve.export.convert.sensitivity import relative_error, sensitive_nodes
from ortserve.export.errors import ExportError
from tests.factories.onnx_models import IR_VERSION, OPSET, add_model, encoder_model

pytestmark = pytest.mark.ort_range  # scripts/test.sh: also against the newest onnxruntime

WIDTH = 64
DEAD = 4  # features the first layer always zeroes: where the outliers sit


def outlier_model(seed: int = 0) -> onnx.ModelProto:
    """x [batch, 64] -> mm1 -> Relu -> mm2 -> Relu -> mm3 -> y [batch, 8].

    The first layer's first DEAD outputs are always zero, and mm2 reads them through huge
    weights (100, in every column): they change nothing in FP32, but they set every column's
    INT8 scale, so mm2's other weights round to a few levels. mm2 is the node to keep in FP32.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 8
    w1[:, :DEAD] = 0.0
    w2 = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 8
    w2[:DEAD, :] = 100.0
    w3 = rng.standard_normal((WIDTH, 8)).astype(np.float32) / 8
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
            helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
            helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
            helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
        ],
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[
            numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def fp32(tmp_path: Path) -> Path:
    path = tmp_path / "fp32.onnx"
    onnx.save(outlier_model(), str(path))
    return path


def feeds(count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((8, WIDTH)).astype(np.float32)} for _ in range(count)]


def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def output_error(fp32: Path, quantized: Path) -> float:
    return float(np.mean([relative_error(run(fp32, f), run(quantized, f)) for f in feeds()]))


def names(candidates: list[Quantization]) -> list[str]:
    return [c.variant_name for c in candidates]


# --- candidates and names -------------------------------------------------------------------


def test_auto_candidates_per_family_in_order() -> None:
    """7-bit and U8U8 forms only where U8S8 saturates (x86 without VNNI, signed weights)."""
    assert names(auto_candidates("avx512", True, True)) == [
        "int8-avx512",
        "int8-avx512-rr",
        "int8-avx512-u8u8",
        "int8-weight-only",
    ]
    assert names(auto_candidates("avx512_vnni", True, True)) == [
        "int8-avx512_vnni",
        "int8-weight-only",
    ]
    assert names(auto_candidates("arm64", True, True)) == ["int8-arm64", "int8-weight-only"]
    # avx2's default is U8U8 already: the U8U8 form is the first one again, and nothing saturates.
    assert names(auto_candidates("avx2", True, True)) == ["int8-avx2", "int8-weight-only"]


def test_auto_candidates_first_is_todays_variant_and_weight_only_needs_matmul_weights() -> None:
    candidates = auto_candidates("avx512", False, False)
    assert candidates[0] == Quantization("avx512", False)
    assert all(c.target != "weight-only" for c in candidates)
    assert all(not c.per_channel for c in candidates)
    with pytest.raises(ExportError):
        auto_candidates("weight-only", True, True)


def test_variant_names_and_descriptions() -> None:
    assert Quantization("avx512", True).variant_name == "int8-avx512"
    assert Quantization("avx2", True).describe() == "dynamic INT8 for avx2, per-channel"
    spec = Quantization("avx512", True, reduce_range=True, u8u8=True, keep_fp32=("a", "b"))
    assert spec.variant_name == "int8-avx512-rr-u8u8-keep2"
    assert spec.describe() == (
        "dynamic INT8 for avx512, per-channel, 7-bit weights (reduce_range), U8U8, "
        "2 node(s) kept in FP32"
    )
    # Names follow what is done: U8U8 on avx2 and 8-bit on avx512 are the family's defaults.
    assert Quantization("avx2", True, u8u8=True).variant_name == "int8-avx2"
    assert Quantization("avx512", True, reduce_range=False).variant_name == "int8-avx512"
    assert Quantization("weight-only", True).variant_name == "int8-weight-only"
    assert Quantization("weight-only", True, keep_fp32=("a",)).variant_name == (
        "int8-weight-only-keep1"
    )


def test_has_matmul_weights(tmp_path: Path) -> None:
    for name, model, expected in (
        ("encoder", encoder_model(vocab=16, width=8, hidden=16, blocks=1), True),
        ("add", add_model(), False),
    ):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        assert has_matmul_weights(path) is expected


# --- quantize() honours the new fields -------------------------------------------------------


def ops_by_name(path: Path) -> dict[str, str]:
    return {node.name: node.op_type for node in onnx.load(str(path)).graph.node}


def test_keep_fp32_leaves_those_nodes_as_fp32_matmul(fp32: Path, tmp_path: Path) -> None:
    out = quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True, keep_fp32=("mm2",)))
    ops = ops_by_name(out)
    assert ops["mm2"] == "MatMul"
    assert ops.get("mm1") != "MatMul"
    assert ops.get("mm3") != "MatMul"
    assert sum(op == "MatMul" for op in ops.values()) == 1


def test_keep_fp32_with_an_unknown_node_is_refused(fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no node named nope"):
        quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True, keep_fp32=("nope",)))


def weight_types(path: Path) -> set[int]:
    graph = onnx.load(str(path)).graph
    return {init.data_type for init in graph.initializer if init.name.endswith("_quantized")}


def test_u8u8_produces_uint8_weights(fp32: Path, tmp_path: Path) -> None:
    u8s8 = quantize(fp32, tmp_path / "s8.onnx", Quantization("avx512", True))
    u8u8 = quantize(fp32, tmp_path / "u8.onnx", Quantization("avx512", True, u8u8=True))
    assert weight_types(u8s8) == {TensorProto.INT8}
    assert weight_types(u8u8) == {TensorProto.UINT8}
    assert run(u8u8, feeds()[0]).shape == (8, 8)


def largest_weight(path: Path) -> int:
    graph = onnx.load(str(path)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_quantized")]
    assert weights
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)


def test_reduce_range_uses_seven_bit_weights(fp32: Path, tmp_path: Path) -> None:
    """Symmetric signed weights span [-127, 127] in 8 bits, [-64, 64] in 7."""
    full = quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True))
    seven = quantize(fp32, tmp_path / "rr.onnx", Quantization("avx512", True, reduce_range=True))
    assert largest_weight(full) == 127
    assert largest_weight(seven) == 64


# --- sensitivity -----------------------------------------------------------------------------


def test_sensitive_nodes_ranks_the_outlier_matmul_first(fp32: Path, tmp_path: Path) -> None:
    quantized = quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True))
    ranked = sensitive_nodes(fp32, quantized, feeds(), 3)
    assert ranked[0] == "mm2"
    assert sorted(ranked) == ["mm1", "mm2", "mm3"]
    assert sensitive_nodes(fp32, quantized, feeds(), 1) == ["mm2"]
    assert sensitive_nodes(fp32, quantized, feeds(), 0) == []


def test_keeping_the_sensitive_node_brings_the_output_closer_to_fp32(
    fp32: Path, tmp_path: Path
) -> None:
    plain = quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True))
    keep = tuple(sensitive_nodes(fp32, plain, feeds(), 1))
    kept = quantize(fp32, tmp_path / "keep.onnx", Quantization("avx512", True, keep_fp32=keep))
    before, after = output_error(fp32, plain), output_error(fp32, kept)
    assert after < before / 4, (before, after)


def test_sensitive_nodes_skips_nodes_the_quantizer_left_alone(fp32: Path, tmp_path: Path) -> None:
    kept = quantize(fp32, tmp_path / "q.onnx", Quantization("avx512", True, keep_fp32=("mm2",)))
    assert "mm2" not in sensitive_nodes(fp32, kept, feeds(), 3)
