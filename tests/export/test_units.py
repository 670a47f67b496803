"""The exporter's rules, without torch: publish decisions, figures, config.pbtxt, atomic publish,
task detection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ortserve.export.errors import ExportError
from ortserve.export.options import TASKS, Thresholds
from ortserve.export.repository import publish as publish_module
from ortserve.export.repository.config_writer import check_servable, config_text
from ortserve.export.repository.publish import next_version, publish_version
from ortserve.export.source import (
    ModelSource,
    detect_task,
    max_sequence_length,
    resolve_source,
    sentence_transformers_settings,
)
from ortserve.export.verify.check import Figures, Variant, Verdict, compare, judge
from ortserve.export.verify.decide import Rules, choose
from ortserve.repository.config import parse_config_text
from ortserve.repository.parameters import Parameters
from ortserve.text.files import ModelFiles
from ortserve.text.settings import POOLINGS, text_settings


def _verdict(name: str, passed: bool) -> Verdict:
    figures = Figures(1e-7, 0.99, 0.995, None, 4, ("logits",))
    return Verdict(name, figures, "rule", passed)


@dataclass(frozen=True, slots=True)
class _Speed:
    """A speed judgement as ``verify.speed`` gives it (ratio of times, interval, verdict)."""

    ratio: float
    verdict: str
    rounds: int = 8

    @property
    def low(self) -> float:
        return self.ratio * 0.97

    @property
    def high(self) -> float:
        return self.ratio * 1.03

    def as_dict(self) -> dict[str, object]:
        return {"ratio": self.ratio, "verdict": self.verdict}


EXPLICIT = Rules("fp32", auto=False)


def test_an_explicit_target_that_passes_is_published_after_fp32() -> None:
    verdicts = {"fp32": _verdict("fp32", True), "int8-avx2": _verdict("int8-avx2", True)}
    speeds = {"int8-avx2": _Speed(0.5, "faster")}
    decisions = choose(["fp32"], ["int8-avx2"], verdicts, speeds, EXPLICIT)
    assert [(d.variant, d.publish) for d in decisions] == [("fp32", True), ("int8-avx2", True)]
    assert "faster" in decisions[1].reason


def test_an_explicit_target_that_fails_blocks_everything_unless_forced() -> None:
    verdicts = {"fp32": _verdict("fp32", True), "int8-avx2": _verdict("int8-avx2", False)}
    decisions = choose(["fp32"], ["int8-avx2"], verdicts, {}, EXPLICIT)
    assert decisions[1].blocking
    assert not decisions[1].publish
    forced = choose(["fp32"], ["int8-avx2"], verdicts, {}, Rules("fp32", False, force=True))
    assert all(d.publish for d in forced)
    assert "--force" in forced[1].reason


def test_a_slower_quantized_variant_is_left_out_not_blocking() -> None:
    verdicts = {"fp32": _verdict("fp32", True), "int8-avx2": _verdict("int8-avx2", True)}
    speeds = {"int8-avx2": _Speed(1.8, "slower")}
    decisions = choose(["fp32"], ["int8-avx2"], verdicts, speeds, EXPLICIT)
    assert decisions[0].publish
    assert not decisions[1].publish
    assert not decisions[1].blocking
    assert "slower than fp32" in decisions[1].reason
    unmeasured = choose(["fp32"], ["int8-avx2"], verdicts, {}, EXPLICIT)
    assert unmeasured[1].publish
    assert "not benchmarked" in unmeasured[1].reason


def test_compare_skips_padding_and_counts_labels() -> None:
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    feeds = {"attention_mask": mask}
    ref = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1
    got = ref.copy()
    got[0, 2] = -100.0  # padding: never compared
    got[1, 0, 0] += 0.5
    figures = compare([{"logits": ref}], [{"logits": got}], [feeds], labels=True)
    assert figures.vectors == 3
    assert figures.max_abs_diff == pytest.approx(0.5)
    assert figures.label_agreement == 1.0
    assert 0.99 < figures.min_cosine < 1.0
    only = compare([{"a": ref, "b": ref}], [{"a": got, "b": ref}], [feeds], False, ("b",))
    assert only.outputs == ("b",)
    assert only.max_abs_diff == 0.0
    fp32 = Variant("fp32", Path("m.onnx"), True, "")
    assert not judge(fp32, figures, Thresholds(fp32_tolerance=0.1)).passed
    int8 = Variant("int8", Path("m.onnx"), False, "")
    assert judge(int8, figures, Thresholds(min_cosine=0.99)).passed
    with pytest.raises(ExportError, match="no output name"):
        compare([{"a": ref}], [{"b": ref}], [feeds], False)


def test_config_text_parses_and_carries_the_task() -> None:
    text = config_text("sentence-embeddings", 32, 256, {"pooling": "mean", "normalize": "true"})
    config = parse_config_text(text, "config.pbtxt").config
    assert config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"task": "sentence-embeddings", "max_sequence_length": "256",
                      "pooling": "mean", "normalize": "true"}  # fmt: skip
    assert not config.input
    inputs: list[dict[str, object]] = [
        {"name": "input_ids", "datatype": "INT64", "dims": ["batch_size", "sequence_length"]},
        {"name": "past_key_values.0.key", "datatype": "FP32", "dims": ["batch_size", 4, "past", 8]},
    ]
    decoder = parse_config_text(config_text(None, 8, 128, {"pooling": "x"}, inputs), "c").config
    assert not decoder.parameters  # a tensor model: no text settings at all
    (warmup,) = decoder.model_warmup
    assert list(warmup.inputs["input_ids"].dims) == [1]
    assert list(warmup.inputs["past_key_values.0.key"].dims) == [4, 0, 8]
    unbatched = parse_config_text(config_text("feature-extraction", 0, 16, {}), "c").config
    assert not unbatched.HasField("dynamic_batching")


def test_publish_version_is_atomic_and_numbers_past_the_highest(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"weights")
    (source / "pool.json").write_text("{}")
    repo = tmp_path / "repo"
    (repo / "m" / "3").mkdir(parents=True)
    (repo / "m" / ".staging-other").mkdir()  # someone else's staging folder: not a version
    files = {"model.onnx": source / "model.onnx", "1_Pooling/config.json": source / "pool.json"}
    published = publish_version(repo, "m", files, {"hello": "world"})
    assert published.version == 4
    written = json.loads((repo / "m" / "4" / "manifest.json").read_text())
    assert written["hello"] == "world"
    assert written["version"] == 4
    assert written["files"]["model.onnx"]["bytes"] == 7
    assert (repo / "m" / "4" / "1_Pooling" / "config.json").read_text() == "{}"
    assert next_version(repo / "m") == 5


def test_publish_version_takes_the_next_number_when_raced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"x")
    repo = tmp_path / "repo"
    calls: list[int] = []
    real = publish_module.next_version

    def racing(folder: Path) -> int:
        version = real(folder)
        if not calls:  # another publisher takes this number right after we picked it
            (folder / str(version)).mkdir()
            (folder / str(version) / "model.onnx").write_bytes(b"theirs")
        calls.append(version)
        return version

    monkeypatch.setattr(publish_module, "next_version", racing)
    published = publish_version(repo, "m", {"model.onnx": source}, {})
    assert calls == [1, 2]
    assert published.version == 2
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == b"theirs"
    assert json.loads((repo / "m" / "2" / "manifest.json").read_text())["version"] == 2


def test_publish_version_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(FileNotFoundError):
        publish_version(repo, "m", {"model.onnx": tmp_path / "missing.onnx"}, {})
    assert list((repo / "m").iterdir()) == []
    with pytest.raises(ExportError, match="--name"):
        publish_version(repo, "../escape", {}, {})


def _folder(tmp_path: Path, config: dict[str, object], **files: object) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return tmp_path


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("BertForSequenceClassification", "text-classification"),
        ("RobertaForTokenClassification", "token-classification"),
        ("DistilBertForQuestionAnswering", "question-answering"),
        ("GPT2LMHeadModel", "text-generation-with-past"),
        ("LlamaForCausalLM", "text-generation-with-past"),
        ("BertModel", "feature-extraction"),
    ],
)
def test_detect_task_from_the_architecture(tmp_path: Path, architecture: str, task: str) -> None:
    folder = _folder(tmp_path, {"model_type": "x", "architectures": [architecture]})
    assert detect_task(resolve_source(str(folder))) == task


def test_sentence_transformers_folder_is_sentence_embeddings(tmp_path: Path) -> None:
    modules = [{"type": "sentence_transformers.models.Transformer", "path": ""},
               {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]  # fmt: skip
    pooling = {"1_Pooling__config.json": {"pooling_mode_cls_token": True}}
    folder = _folder(tmp_path, {"model_type": "bert", "architectures": ["BertModel"]}, **pooling)
    (folder / "modules.json").write_text(json.dumps(modules))
    source = resolve_source(str(folder))
    assert detect_task(source) == "sentence-embeddings"
    assert sentence_transformers_settings(folder) == {"pooling": "cls", "normalize": "false"}


def test_max_sequence_length_precedence(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"model_type": "bert", "max_position_embeddings": 4096})
    assert max_sequence_length(folder, None) == 512  # capped
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 10**30}))
    assert max_sequence_length(folder, None) == 512  # "unlimited" sentinel ignored
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    assert max_sequence_length(folder, None) == 256
    assert max_sequence_length(folder, 1024) == 1024  # the flag is taken as given


def test_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no config\.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ExportError, match="no such folder"):
        resolve_source(str(tmp_path / "nope"))
    folder = _folder(tmp_path / "m", {"model_type": "bert", "architectures": ["BertPooler"]})
    with pytest.raises(ExportError, match="pass --task"):
        detect_task(ModelSource(folder, "m", None, "bert", "BertPooler", False))


def test_every_task_the_exporter_writes_is_one_the_daemon_serves() -> None:
    from ortserve.text.settings import TASKS as DAEMON_TASKS

    for task in TASKS.values():
        # a causal LM goes to the generation engine, every other task to a text pipeline
        assert task.generates or task.config_task in DAEMON_TASKS, task.name
        assert task.generates is task.name.startswith("text-generation"), task.name
        assert not task.served_as_tensors, task.name
    with pytest.raises(ExportError, match="does not serve 'token-generation'"):
        config_text("token-generation", 8, 128, {})
    with pytest.raises(ExportError, match="does not serve 'weightedmean'"):
        config_text("feature-extraction", 8, 128, {"pooling": "weightedmean"})
    with pytest.raises(ExportError, match="at least 2 tokens"):
        config_text("feature-extraction", 8, 1, {})
    with pytest.raises(ExportError, match="--max-batch-size 0"):
        check_servable("text-classification", 0)
    check_servable(None, 0)  # a tensor model needs no batch axis


@pytest.mark.parametrize(
    "key",
    [
        "pooling_mode_mean_tokens",
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_lasttoken",
    ],
)
def test_every_pooling_the_exporter_writes_loads_in_the_daemon(tmp_path: Path, key: str) -> None:
    from tokenizers import Tokenizer, models

    modules = [{"type": "sentence_transformers.models.Transformer", "path": ""},
               {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]  # fmt: skip
    pooling = {"1_Pooling__config.json": {key: True}}
    folder = _folder(tmp_path, {"model_type": "bert", "architectures": ["BertModel"]}, **pooling)
    (folder / "modules.json").write_text(json.dumps(modules))
    extra = sentence_transformers_settings(folder)
    assert extra["pooling"] in POOLINGS
    config = parse_config_text(config_text("feature-extraction", 8, 64, extra), "c").config
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    settings = text_settings(Parameters(config, "c"), ModelFiles(folder, tokenizer))
    assert settings.pooling == extra["pooling"]


def test_names_with_a_trailing_newline_are_neither_staging_folders_nor_hub_ids(
    tmp_path: Path,
) -> None:
    """Issue 13 item 18: "$" also matches before a trailing newline; the patterns match whole."""
    dead = 2**22 + 12345  # above PID_MAX_LIMIT (2**22) on Linux: no such process can exist
    odd = tmp_path / f".staging-{dead}-ab\n"
    odd.mkdir()
    stale = tmp_path / f".staging-{dead}-ab"
    stale.mkdir()
    assert publish_module.remove_stale_staging(tmp_path) == (stale.name,)
    assert odd.is_dir()  # not a publisher's folder: left alone
    with pytest.raises(ExportError, match="no such folder"):
        resolve_source("org/model\n")
