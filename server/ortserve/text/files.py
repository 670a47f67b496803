"""The Hugging Face files beside a text model's model.onnx, read once at load.

``tokenizer.json`` makes a version a text model. The others are optional and give defaults:
``config.json`` (labels, architecture, problem type), ``tokenizer_config.json`` (maximum length),
``sentence_bert_config.json``, ``modules.json`` and ``1_Pooling/config.json``
(sentence-transformers pooling and normalization) and the exporter's ``manifest.json``.
Every error names the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ortserve.errors import ModelLoadError

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True, slots=True)
class ModelFiles:
    folder: Path
    tokenizer: Tokenizer
    hf_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    sentence_bert: dict[str, Any] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)
    modules: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, str]:
        """``id2label`` with integer keys (config.json writes them as strings)."""
        raw = self.hf_config.get("id2label") or {}
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{self.folder / 'config.json'}: id2label must be an object")
        try:
            return {int(key): str(value) for key, value in raw.items()}
        except ValueError:
            raise ModelLoadError(
                f"{self.folder / 'config.json'}: id2label keys must be integers, got {list(raw)}"
            ) from None

    @property
    def is_sentence_transformer(self) -> bool:
        return bool(self.modules) or bool(self.pooling)

    @property
    def normalizes(self) -> bool:
        return any(str(m.get("type", "")).endswith("Normalize") for m in self.modules)


def has_tokenizer(folder: Path) -> bool:
    return (folder / TOKENIZER_FILE).is_file()


def read_files(folder: Path) -> ModelFiles:
    path = folder / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception type for any bad file
        raise ModelLoadError(f"{path}: not a tokenizers file: {exc}") from None
    modules = _json(folder / "modules.json", [])
    if not isinstance(modules, list):
        raise ModelLoadError(f"{folder / 'modules.json'}: expected a list of modules")
    return ModelFiles(
        folder=folder,
        tokenizer=tokenizer,
        hf_config=_json_object(folder / "config.json"),
        tokenizer_config=_json_object(folder / "tokenizer_config.json"),
        sentence_bert=_json_object(folder / "sentence_bert_config.json"),
        pooling=_json_object(folder / "1_Pooling" / "config.json"),
        modules=modules,
        manifest=_json_object(folder / "manifest.json"),
    )


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from None


def _json_object(path: Path) -> dict[str, Any]:
    value = _json(path, {})
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return value
