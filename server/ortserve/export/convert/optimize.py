"""Graph optimization with ONNX Runtime's transformer optimizer, through Optimum's levels.

O1: basic graph optimizations; O2: + transformer fusions (attention, LayerNorm, GELU);
O3: + approximate GELU; O4: + FP16 (GPU only: refused without the CUDA provider).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from ortserve.export.convert.export import quiet_libraries
from ortserve.export.errors import ExportError
from ortserve.export.options import OPTIMIZE_LEVELS


def optimize(export_dir: Path, level: str, output: Path) -> Path:
    """Optimize ``export_dir/model.onnx``; returns the optimized file in ``output``."""
    if level not in OPTIMIZE_LEVELS:
        raise ExportError(f"--optimize {level}: use one of {', '.join(OPTIMIZE_LEVELS)}")
    if level == "O4":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "--optimize O4 converts the model to FP16 for GPUs, and this ONNX Runtime has no "
                "CUDA provider; use O1, O2 or O3 on the CPU"
            )
    # ORT's optimizer prints shape-inference notes and warns about each fusion it skips (to
    # stdout, and through loggers named after bare module names): keep them for an error only.
    said = io.StringIO()
    with quiet_libraries(), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        try:
            optimizer = ORTOptimizer.from_pretrained(export_dir, file_names=["model.onnx"])
            config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
            optimizer.optimize(config, output, file_suffix="optimized")
        except (NotImplementedError, ValueError, KeyError, RuntimeError) as exc:
            tail = "\n".join(said.getvalue().strip().splitlines()[-10:])
            raise ExportError(f"--optimize {level} failed: {exc}\n{tail}".rstrip()) from exc
    written = output / "model_optimized.onnx"
    if not written.is_file():
        raise ExportError(f"--optimize {level}: the optimizer wrote no model")
    target = output / "model.onnx"
    shutil.move(written, target)
    return target
