"""Fixtures for the exporter's tests: tiny random models built once, and the CLI run in-process.

The models (tests/factories/hf_models.py) need the export extra; tests that use them skip when
it is not installed. Nothing here reaches a model hub: the variables below are set before
transformers or huggingface_hub is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@dataclass
class Result:
    code: int
    out: str
    err: str


CLI = Callable[..., Result]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per tiny model, by task name (``gpt2`` for the language model)."""
    pytest.importorskip("optimum.exporters.onnx")
    from tests.factories.hf_models import BERT_TASKS, make_bert, make_gpt2

    root = tmp_path_factory.mktemp("hf-models")
    models = {task: make_bert(root / task, task) for task in BERT_TASKS}
    models["gpt2"] = make_gpt2(root / "gpt2")
    return models


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    """Run ``ortserve ARGS...`` in this process (torch is imported once per session)."""
    from ortserve.cli import main

    def run(*args: str | Path) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def manifest(version_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((version_dir / "manifest.json").read_text())
    return data


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
