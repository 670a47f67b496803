"""Where the model comes from, and what its files say: task, architecture, pooling, lengths.

Reads only JSON files, so a wrong ``--model`` or an unreachable hub id fails in well under a
second, before torch is imported. Nothing here goes to the network: a hub id is looked up in the
local Hugging Face cache only (``HF_HUB_OFFLINE``), and is an error when it is not there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError
from ortserve.export.options import MAX_SEQUENCE_LENGTH_CAP, TASKS
from ortserve.text.settings import ARCHITECTURE_TASKS, POOLING_KEYS

#: A Hugging Face Hub id: ``name`` or ``owner/name``.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")  # fullmatch: "$" allows a "\n"


#: Files published beside model.onnx when the export has them (sentence-transformers files are
#: copied from the source folder).
HF_FILES = (
    "config.json",
    "generation_config.json",  # a causal LM's: eos ids, max length (the generation engine)
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")

#: A model folder's tokenizer: a fast tokenizer's tokenizer.json, its tokenizer_config.json, or
#: the vocabulary file of a slow one (BERT, GPT-2/RoBERTa, SentencePiece models...).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "spm.model",
)


def set_offline() -> None:
    """No hub downloads from this process or its children, whatever the libraries default to."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model folder on local disk and what its JSON files tell."""

    folder: Path
    given: str  # what --model said
    hub_id: str | None  # set when --model was a hub id found in the local cache
    model_type: str  # config.json model_type, e.g. bert
    architecture: str  # config.json architectures[0], e.g. BertForSequenceClassification
    sentence_transformers: bool  # modules.json is present

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.given,
            "folder": str(self.folder),
            "hub_id": self.hub_id,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "sentence_transformers": self.sentence_transformers,
        }


def resolve_source(model: str) -> ModelSource:
    """The local folder for ``--model``: a folder, or a hub id already in the local cache."""
    path = Path(model).expanduser()
    hub_id = None
    if path.is_dir():
        folder = path.resolve()
    elif path.exists():
        raise ExportError(f"--model {model}: not a folder (give the folder holding config.json)")
    elif _HUB_ID.fullmatch(model) and not model.startswith((".", "~")):
        folder = _from_local_cache(model)
        hub_id = model
    else:
        raise ExportError(f"--model {model}: no such folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"--model {model}: {folder} has no config.json; is it a model folder?")
    config = _read_json(config_path)
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type") or "")
    if not model_type:
        raise ExportError(f"{config_path}: no model_type; cannot tell the architecture")
    return ModelSource(
        folder=folder,
        given=model,
        hub_id=hub_id,
        model_type=model_type,
        architecture=str(architectures[0]) if architectures else model_type,
        sentence_transformers=(folder / "modules.json").is_file(),
    )


def _from_local_cache(hub_id: str) -> Path:
    """The cached snapshot of ``hub_id``, or a clear error: this tool never downloads."""
    set_offline()
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ExportError(
            f"--model {hub_id}: not a local folder, and as a Hugging Face Hub id it is not in the "
            f"local cache ({constants.HF_HUB_CACHE}). ortserve export works offline and never "
            "downloads: fetch the model where the hub is reachable (e.g. `hf download "
            f"{hub_id} --local-dir DIR`), copy it here and pass --model DIR."
        ) from None


def check_tokenizer_files(source: ModelSource) -> None:
    """Fail before the export when the folder holds no tokenizer at all (config.json and the
    weights only): the checks tokenize text, and the daemon needs the tokenizer.json."""
    if any((source.folder / name).is_file() for name in TOKENIZER_FILES):
        return
    raise ExportError(
        f"--model {source.given}: {source.folder} has no tokenizer (none of "
        f"{', '.join(TOKENIZER_FILES)}); the export is checked on tokenized text and published "
        "with the model's tokenizer.json. Save the tokenizer into that folder (e.g. "
        "AutoTokenizer.from_pretrained(...).save_pretrained(DIR)) and run again"
    )


def detect_task(source: ModelSource) -> str:
    """The task for a folder: sentence-transformers files, else the architecture's head."""
    if source.sentence_transformers:
        return "sentence-embeddings"
    for suffix, task in ARCHITECTURE_TASKS:
        if source.architecture.endswith(suffix):
            return task
    raise ExportError(
        f"cannot tell the task of {source.folder} (architecture {source.architecture}); "
        f"pass --task, one of: {', '.join(TASKS)}"
    )


def sentence_transformers_settings(folder: Path) -> dict[str, str]:
    """``pooling`` (mean, cls, max, mean_sqrt_len or last) and ``normalize`` ("true"/"false")
    from the sentence-transformers files."""
    settings: dict[str, str] = {}
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").is_file() else []
    pooling_dir = "1_Pooling"
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
            pooling_dir = str(module["path"])
    pooling_path = folder / pooling_dir / "config.json"
    if pooling_path.is_file():
        pooling = _read_json(pooling_path)
        for key, mode in POOLING_KEYS:  # the daemon's own reading of these files
            if pooling.get(key):
                settings["pooling"] = mode
                break
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules or [])
    settings["normalize"] = "true" if normalize else "false"
    return settings


def max_sequence_length(folder: Path, given: int | None) -> int:
    """``--max-length``, else sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length, else the model's max_position_embeddings; capped at 512."""
    if given is not None:
        return given
    candidates: list[Any] = []
    if (folder / "sentence_bert_config.json").is_file():
        candidates.append(_read_json(folder / "sentence_bert_config.json").get("max_seq_length"))
    if (folder / "tokenizer_config.json").is_file():
        candidates.append(_read_json(folder / "tokenizer_config.json").get("model_max_length"))
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    candidates += [config.get("max_position_embeddings"), config.get("n_positions")]
    for value in candidates:
        if isinstance(value, int | float) and 0 < value < 10**9:
            return min(int(value), MAX_SEQUENCE_LENGTH_CAP)
    return MAX_SEQUENCE_LENGTH_CAP


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read it as JSON: {exc}") from None
