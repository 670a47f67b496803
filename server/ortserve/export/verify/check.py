"""Parity checks: ``onnx.checker``, then each ONNX variant's outputs against PyTorch's.

Outputs are compared where both sides name them (``logits``, ``last_hidden_state``,
``sentence_embedding``...), at real tokens only (padding positions are not compared), as vectors:
one per row, or one per token for [batch, sequence, ...] outputs. Figures per variant:
max |diff|, min, 1st percentile and mean cosine, and for tasks with labels the share of equal
argmax and the largest shift of a softmax probability. FP32 variants pass on max |diff| <= the
tolerance; quantized or approximate ones (O3/O4, INT8) on min cosine and label agreement. The
check set (``check_texts``) runs in padded batches of mixed lengths and one row at a time, since
dynamic quantization scales depend on what shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.export.errors import ExportError
from ortserve.export.options import Thresholds
from ortserve.export.verify.samples import (
    graph_feeds,
    input_specs,
    rows_of,
    single,
    token_mask,
    torch_inputs,
)
from ortserve_client.tensors import Array


@dataclass(frozen=True, slots=True)
class Variant:
    """One candidate ONNX file: the plain export, an optimized or a quantized graph."""

    name: str  # fp32, O2, int8-avx512_vnni, ...
    path: Path
    exact: bool  # judged by max |diff| (True) or by cosine and agreement (False)
    description: str


#: Rows per padded batch in the check: the batch mixes the check set's lengths as served
#: batches do, without padding 64 texts to the longest one.
CHECK_BATCH_ROWS = 16


@dataclass(frozen=True, slots=True)
class Figures:
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    label_agreement: float | None  # None for tasks without labels
    vectors: int  # how many vectors were compared
    outputs: tuple[str, ...]  # which outputs
    p1_cosine: float | None = None  # 1st percentile of the cosines (None: figures made by hand)
    # tasks with labels: the largest |softmax(ONNX) - softmax(PyTorch)| over vectors and labels
    max_prob_shift: float | None = None

    def cells(self) -> list[str]:
        """The check table's figure columns (``FIGURE_COLUMNS``), formatted."""
        return [
            f"{self.max_abs_diff:.2e}",
            f"{self.min_cosine:.5f}",
            "-" if self.p1_cosine is None else f"{self.p1_cosine:.5f}",
            f"{self.mean_cosine:.5f}",
            "-" if self.label_agreement is None else f"{self.label_agreement:.3f}",
            "-" if self.max_prob_shift is None else f"{self.max_prob_shift:.4f}",
        ]


#: The headers of ``Figures.cells``.
FIGURE_COLUMNS = ("max |diff|", "min cos", "p1 cos", "mean cos", "agree", "max prob shift")


@dataclass(frozen=True, slots=True)
class Verdict:
    variant: str
    figures: Figures
    rule: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, **asdict(self.figures)}


def check_graph(path: Path) -> None:
    """``onnx.checker`` with full checks on the file (by path, so >2 GiB models work too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: onnx.checker refused the model: {exc}") from None


def open_session(path: Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session; a load failure names the file. ``spinning`` False: its
    intra-op threads do not spin once a run ends (sessions that take turns, see verify.speed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {exc}") from None


def reference_outputs(model: Any, batches: Sequence[dict[str, Array]]) -> list[dict[str, Array]]:
    """PyTorch's outputs for each feed dict, as numpy, by output name."""
    import torch

    results = []
    with torch.inference_mode():
        for feeds in batches:
            inputs = {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in torch_inputs(feeds).items()
            }
            out = model(inputs) if _is_sentence_transformer(model) else model(**inputs)
            results.append(
                {
                    k: v.detach().float().numpy()
                    for k, v in dict(out).items()
                    if isinstance(v, torch.Tensor)
                }
            )
    return results


def _is_sentence_transformer(model: Any) -> bool:
    return type(model).__name__ == "SentenceTransformer"


def check_batches(
    session: Any, encoded: dict[str, Array], batch_rows: int = CHECK_BATCH_ROWS
) -> list[dict[str, Array]]:
    """The feeds the check runs: the rows in padded batches of ``batch_rows`` (in the check
    set's order, which mixes lengths; each cut to its longest row), then each row alone."""
    specs = input_specs(session)
    rows = next(iter(encoded.values())).shape[0]
    batches = [
        graph_feeds(specs, rows_of(encoded, start, min(start + batch_rows, rows)))
        for start in range(0, rows, batch_rows)
    ]
    return batches + [graph_feeds(specs, single(encoded, r)) for r in range(rows)]


def run_variant(session: Any, batches: Sequence[dict[str, Array]]) -> list[dict[str, Array]]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    results = []
    for feeds in batches:
        values = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
        results.append(dict(zip(names, values, strict=True)))
    return results


def compare(
    reference: Sequence[dict[str, Array]],
    got: Sequence[dict[str, Array]],
    batches: Sequence[dict[str, Array]],
    labels: bool,
    only: Sequence[str] = (),
) -> Figures:
    """Figures over every batch and every output both sides have (or the ``only`` ones)."""
    diffs: list[float] = []
    cosines: list[float] = []
    agree: list[bool] = []
    shifts: list[float] = []
    outputs: set[str] = set()
    for ref, out, feeds in zip(reference, got, batches, strict=True):
        mask = token_mask(feeds)
        for name in sorted(set(ref) & set(out) & set(only or out)):
            outputs.add(name)
            for a, b in zip(_vectors(ref[name], mask), _vectors(out[name], mask), strict=True):
                a64, b64 = a.astype(np.float64), b.astype(np.float64)
                diffs.append(float(np.abs(a64 - b64).max()) if a64.size else 0.0)
                cosines.append(_cosine(a64, b64))
                if labels and a64.size:
                    agree.append(bool(np.argmax(a64) == np.argmax(b64)))
                    shifts.append(float(np.abs(_softmax(a64) - _softmax(b64)).max()))
    if not outputs:
        raise ExportError("the ONNX model and PyTorch share no output name: nothing to compare")
    return Figures(
        max_abs_diff=max(diffs),
        min_cosine=min(cosines),
        mean_cosine=float(np.mean(cosines)),
        label_agreement=float(np.mean(agree)) if labels and agree else None,
        vectors=len(cosines),
        outputs=tuple(sorted(outputs)),
        p1_cosine=float(np.percentile(cosines, 1)),
        max_prob_shift=max(shifts) if labels and shifts else None,
    )


def _vectors(array: Array, mask: Array | None) -> list[Array]:
    """Per-row vectors, per-token vectors for [batch, sequence, ...], padding dropped."""
    if mask is not None and array.ndim >= 3 and array.shape[:2] == mask.shape:
        return list(array[mask].reshape(int(mask.sum()), -1))
    if mask is not None and array.ndim == 2 and array.shape == mask.shape:
        return [row[m] for row, m in zip(array, mask, strict=True)]  # e.g. QA start/end logits
    if array.ndim == 0:
        return [array.reshape(1)]
    return list(array.reshape(array.shape[0], -1))


def _softmax(logits: Array) -> Array:
    """Probabilities over one vector of scores (labels, span positions or the vocabulary)."""
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum())


def _cosine(a: Array, b: Array) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def judge(variant: Variant, figures: Figures, thresholds: Thresholds) -> Verdict:
    if variant.exact:
        rule = f"max |diff| <= {thresholds.fp32_tolerance:g}"
        passed = figures.max_abs_diff <= thresholds.fp32_tolerance
    else:
        rule = f"min cosine >= {thresholds.min_cosine:g}"
        passed = figures.min_cosine >= thresholds.min_cosine
        if figures.label_agreement is not None:
            rule += f", label agreement >= {thresholds.min_agreement:g}"
            passed = passed and figures.label_agreement >= thresholds.min_agreement
    return Verdict(variant.name, figures, rule, passed)
