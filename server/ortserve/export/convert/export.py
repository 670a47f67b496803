"""Optimum's ONNX export, and the PyTorch model that the checks and benchmarks compare against.

torch, transformers and optimum are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError
from ortserve.export.options import TASKS
from ortserve.export.source import ModelSource, set_offline


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence what torch's tracer, transformers and optimum say on every export.

    Each of these is expected and not actionable here: the tracer's notes on Python booleans and
    constants, torch's deprecation of its TorchScript exporter (which Optimum 2.1 still uses), and
    the libraries' info logging. Anything else still shows.
    """
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "sentence_transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python")
        warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered")
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")
        warnings.filterwarnings("ignore", message=r"`torch_dtype` is deprecated")
        try:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                yield
            finally:
                hf_logging.set_verbosity(verbosity)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def check_exportable(source: ModelSource, task: str) -> None:
    """Fail before loading weights when Optimum has no ONNX config for this architecture/task."""
    set_offline()
    with quiet_libraries():
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
        from optimum.exporters.tasks import TasksManager

        try:
            supported = TasksManager.get_supported_tasks_for_model_type(
                source.model_type, "onnx", library_name="transformers"
            )
        except KeyError:
            supported = {}
    spec = TASKS[task]
    where = f"{source.architecture} (model_type {source.model_type})"
    if not supported:
        raise ExportError(
            f"Optimum cannot export {where} to ONNX for the task {task}: the architecture is not "
            "supported by Optimum's ONNX exporter"
        )
    if spec.optimum_task not in supported:
        raise ExportError(
            f"Optimum cannot export {where} to ONNX for the task {task}; for this architecture "
            f"it supports: {', '.join(sorted(supported))}"
        )


def export_onnx(source: ModelSource, task: str, opset: int | None, output: Path) -> Path:
    """Run Optimum's exporter into ``output``; returns the exported model.onnx."""
    set_offline()
    spec = TASKS[task]
    with quiet_libraries():
        from optimum.exporters.onnx import main_export

        try:
            main_export(
                str(source.folder),
                output=output,
                task=spec.optimum_task,
                opset=opset,
                library_name=spec.library,
                do_validation=False,  # our own check follows, against PyTorch, with thresholds
                local_files_only=True,
            )
        except (ValueError, KeyError, NotImplementedError, RuntimeError, TypeError) as exc:
            raise ExportError(
                f"Optimum could not export {source.architecture} (model_type "
                f"{source.model_type}) for the task {task}: {exc}"
            ) from exc
    model = output / "model.onnx"
    if not model.is_file():
        raise ExportError(f"Optimum wrote no model.onnx for {source.architecture} ({task})")
    return model


def load_torch_model(folder: Path, task: str) -> Any:
    """The PyTorch model as Optimum loads it for ``task``, in eval mode on the CPU."""
    set_offline()
    spec = TASKS[task]
    with quiet_libraries():
        from optimum.exporters.tasks import TasksManager

        model = TasksManager.get_model_from_task(
            spec.optimum_task,
            str(folder),
            framework="pt",
            library_name=spec.library,
            device="cpu",
            local_files_only=True,
        )
    model.eval()
    return model


def load_tokenizer(folder: Path, task: str, source: Path | None = None) -> Any:
    """The fast tokenizer saved beside the export (it wrote tokenizer.json); errors name
    ``source``, the model folder it came from, when given."""
    set_offline()
    where = source or folder
    with quiet_libraries():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        except Exception as exc:  # transformers raises TypeError, KeyError... for missing files
            raise ExportError(
                f"{where}: cannot load the model's tokenizer ({type(exc).__name__}: {exc}); the "
                "folder needs a tokenizer.json, or tokenizer_config.json with its vocabulary"
            ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{where}: the tokenizer is not a fast tokenizer (no tokenizer.json)")
    if TASKS[task].generates:
        tokenizer.padding_side = "left"  # as the generation engine pads its rows
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def library_versions() -> dict[str, str]:
    """Versions of everything that shaped the published files, for the manifest."""
    from importlib import metadata

    names = (
        "ortserve", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
        "tokenizers", "sentence-transformers", "accelerate", "onnx-ir", "numpy",
    )  # fmt: skip
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
