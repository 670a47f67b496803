"""A text model's settings: config.pbtxt ``parameters`` first, then defaults from its files.

- ``task``: text-classification, token-classification, question-answering, feature-extraction
  or sentence-embeddings. Default: the exporter's manifest (``model.config_task``), then
  sentence-transformers files (sentence-embeddings), then config.json's architecture
  (``...ForSequenceClassification``...). ``text-generation`` is not a task of this module: a
  config with that task is a generation model (``ortserve.generation``), chosen before any text
  model in ``registry/versions.py``.
- ``max_sequence_length``: tokens per text (per window for question answering). Default:
  sentence_bert_config.json ``max_seq_length``, else tokenizer_config.json ``model_max_length``,
  capped at 512.
- ``truncation``: true cuts longer texts; false refuses them (INVALID_ARGUMENT). Default true.
  Either way only a text's head is tokenized: enough to hold more than max_sequence_length tokens.
- ``max_text_bytes``: the most UTF-8 bytes one row of TEXT or TEXT_PAIR may carry; a longer row
  is refused (INVALID_ARGUMENT naming the input and row). Default 1 MiB (1048576).
- ``pooling`` (mean, cls, max, mean_sqrt_len or last, as sentence-transformers names its
  ``pooling_mode_*`` keys) and ``normalize``: embeddings of a model that outputs token states.
  Default: 1_Pooling/config.json, and normalize when modules.json has a Normalize module.
- ``confidence_threshold`` with ``fallback_label``: below the threshold, the fallback label.
- ``multi_label``: sigmoid per label instead of softmax. Default: config.json ``problem_type``.
- ``aggregation``: none, simple, first or max (entities). Default simple.
- ``stride`` (default 128, at most a quarter of the window) and ``max_answer_length`` (default 30):
  question answering.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortserve.errors import ConfigError
from ortserve.repository.parameters import Parameters
from ortserve.text.files import ModelFiles

TASKS = (
    "text-classification",
    "token-classification",
    "question-answering",
    "feature-extraction",
    "sentence-embeddings",
)
AGGREGATIONS = ("none", "simple", "first", "max")
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "last")
#: The fewest tokens ``max_sequence_length`` may give (the exporter refuses less, too).
MIN_SEQUENCE_LENGTH = 2
#: Default ``max_text_bytes``: the most UTF-8 bytes one text row may carry.
MAX_TEXT_BYTES = 2**20

#: 1_Pooling/config.json keys, in the order the exporter reads them, and the pooling they mean.
POOLING_KEYS = (
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_lasttoken", "last"),
)

#: Architecture suffixes (``config.json`` "architectures") and the task they mean, first match
#: wins; the exporter reads the same table. Tasks the daemon does not serve as text are skipped.
ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForCausalLM", "text-generation-with-past"),
    ("LMHeadModel", "text-generation-with-past"),
    ("Model", "feature-extraction"),
)


@dataclass(frozen=True, slots=True)
class TextSettings:
    task: str
    max_length: int
    truncation: bool = True
    pooling: str = "mean"
    normalize: bool = False
    confidence_threshold: float | None = None
    fallback_label: str = ""
    multi_label: bool = False
    aggregation: str = "simple"
    stride: int = 128
    max_answer_length: int = 30
    max_text_bytes: int = MAX_TEXT_BYTES


def text_settings(params: Parameters, files: ModelFiles) -> TextSettings:
    where = params.where
    task = params.text("task") or _default_task(files)
    if task not in TASKS:
        raise ConfigError(f"{where('task')}: '{task}' is not one of {', '.join(TASKS)}")
    aggregation = params.text("aggregation", "simple")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"{where('aggregation')}: '{aggregation}' is not one of {AGGREGATIONS}")
    pooling = params.text("pooling") or _default_pooling(files)
    if pooling not in POOLINGS:
        raise ConfigError(f"{where('pooling')}: '{pooling}' is not one of {POOLINGS}")
    max_length = params.integer("max_sequence_length", _default_max_length(files))
    if max_length < MIN_SEQUENCE_LENGTH:
        raise ConfigError(
            f"{where('max_sequence_length')}: must be >= {MIN_SEQUENCE_LENGTH}, got {max_length}"
        )
    problem = str(files.hf_config.get("problem_type", ""))
    settings = TextSettings(
        task=task,
        max_length=max_length,
        truncation=params.flag("truncation", True),
        pooling=pooling,
        normalize=params.flag("normalize", files.normalizes),
        confidence_threshold=params.number("confidence_threshold"),
        fallback_label=params.text("fallback_label"),
        multi_label=params.flag("multi_label", problem == "multi_label_classification"),
        aggregation=aggregation,
        stride=params.integer("stride", min(128, max_length // 4)),
        max_answer_length=params.integer("max_answer_length", 30),
        max_text_bytes=params.integer("max_text_bytes", MAX_TEXT_BYTES),
    )
    if settings.confidence_threshold is not None and not settings.fallback_label:
        raise ConfigError(f"{where('confidence_threshold')}: needs a fallback_label parameter too")
    if settings.task == "question-answering" and not 0 <= settings.stride < max_length // 2:
        raise ConfigError(
            f"{where('stride')}: must be between 0 and half of max_sequence_length ({max_length})"
        )
    return settings


def _default_task(files: ModelFiles) -> str:
    model = files.manifest.get("model")
    for task in (
        files.manifest.get("task"),
        model.get("config_task") if isinstance(model, dict) else None,
    ):
        if isinstance(task, str) and task in TASKS:
            return task
    if files.is_sentence_transformer:
        return "sentence-embeddings"
    for architecture in files.hf_config.get("architectures") or []:
        for suffix, name in ARCHITECTURE_TASKS:
            if str(architecture).endswith(suffix) and name in TASKS:
                return name
    return "feature-extraction"


def _default_pooling(files: ModelFiles) -> str:
    for key, pooling in POOLING_KEYS:
        if files.pooling.get(key):
            return pooling
    return "mean"


def _default_max_length(files: ModelFiles) -> int:
    for value in (
        files.sentence_bert.get("max_seq_length"),
        files.tokenizer_config.get("model_max_length"),
    ):
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512
