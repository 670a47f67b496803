"""`ortserve export` end to end with real torch and Optimum, on tiny random models per task."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ortserve.adapters import TensorAdapter
from ortserve.registry.versions import load_version
from ortserve.repository.config import parse_config_text
from ortserve.text.base import TextAdapter
from tests.export.conftest import CLI, manifest, versions

HF = ("tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json")
BESIDE = ("model.onnx", *HF, "manifest.json")
TENSOR_MODEL = ("model.onnx", *(f"tokenizer/{name}" for name in HF), "manifest.json")
ST_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def _served_names(model_dir: Path, version: int, config_task: str | None) -> list[str]:
    """Load the version as the daemon does (config, sessions, warm-up, text pipeline): what the
    exporter publishes, the daemon serves. Returns the input names clients see."""
    path = model_dir / "config.pbtxt"
    served = load_version("m", model_dir, parse_config_text(path.read_text(), str(path)),
                          version, 8, "test", None)  # fmt: skip
    try:
        if config_task is None:
            assert isinstance(served.adapter, TensorAdapter)
        else:
            assert isinstance(served.adapter, TextAdapter)
            assert served.adapter.settings.task == config_task
        return [entry.name for entry in served.config.input]
    finally:
        served.sessions.close()


def _parameters(model_dir: Path) -> dict[str, str]:
    config = parse_config_text((model_dir / "config.pbtxt").read_text(), "config.pbtxt").config
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.mark.parametrize(
    ("model", "task", "config_task", "quantize"),
    [
        ("text-classification", None, "text-classification", True),
        ("token-classification", None, "token-classification", False),
        ("question-answering", None, "question-answering", False),
        ("feature-extraction", None, "feature-extraction", False),
        ("sentence-embeddings", None, "sentence-embeddings", True),
        # causal LMs (generation models): tests/export/test_generation_export.py
    ],
)
def test_export_publishes_files_manifest_and_config(
    tmp_path: Path,
    cli: CLI,
    tiny_models: dict[str, Path],
    model: str,
    task: str | None,
    config_task: str | None,
    quantize: bool,
) -> None:
    repo = tmp_path / "repo"
    args = ["export", "--model", tiny_models[model], "--name", "m", "--repo", repo, "--no-bench"]
    args += ["--task", task] if task else []
    args += ["--quantize"] if quantize else []
    result = cli(*args)
    assert result.code == 0, result.err
    assert versions(repo / "m") == ([1, 2] if quantize else [1])
    assert "Summary" in result.out
    assert "Parity against PyTorch" in result.out

    v1 = repo / "m" / "1"
    expected = BESIDE + (ST_FILES if model == "sentence-embeddings" else ())
    if config_task is None:
        expected = TENSOR_MODEL
        assert "published as a tensor model" in result.err
        assert "tokenizer/" in result.err
    assert sorted(str(p.relative_to(v1)) for p in v1.rglob("*") if p.is_file()) == sorted(expected)
    record = manifest(v1)
    assert record["version"] == 1
    assert record["model"]["task"] == (
        task or ("text-generation-with-past" if model == "gpt2" else model)
    )
    assert record["model"]["variant"] == "fp32"
    assert record["model"]["config_task"] == config_task
    assert record["model"]["served_as"] == ("tensors" if config_task is None else "text")
    assert record["options"]["task_detected"] is (task is None)
    assert record["command"].startswith("ortserve export --model ")
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime"} <= set(record["versions"])
    assert record["opset"] == record["graph"]["opset"]["ai.onnx"] >= 14
    assert (
        record["source"]["architecture"]
        == json.loads((tiny_models[model] / "config.json").read_text())["architectures"][0]
    )
    for name, entry in record["files"].items():
        assert hashlib.sha256((v1 / name).read_bytes()).hexdigest() == entry["sha256"], name
    fp32 = record["checks"]["variants"]["fp32"]
    assert fp32["passed"]
    assert fp32["max_abs_diff"] < 1e-4
    assert (fp32["label_agreement"] is None) == (
        model in ("feature-extraction", "sentence-embeddings")
    )
    assert record["benchmark"] is None

    params = _parameters(repo / "m")
    if config_task is None:
        assert params == {}  # no text settings: the daemon serves the graph's tensors
    else:
        assert params["task"] == config_task
        assert params["max_sequence_length"] == ("64" if model == "sentence-embeddings" else "128")
    if model == "sentence-embeddings":
        assert (params["pooling"], params["normalize"]) == ("mean", "true")
    config = parse_config_text((repo / "m" / "config.pbtxt").read_text(), "c").config
    assert config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    assert not config.model_warmup  # the daemon's default warm-up fits encoders

    names = _served_names(repo / "m", 1, config_task)
    assert ("TEXT" in names) is (config_task is not None)
    assert "input_ids" in names

    if quantize:
        assert _served_names(repo / "m", 2, config_task) == names
        v2 = manifest(repo / "m" / "2")
        assert v2["model"]["variant"].startswith("int8-")
        assert v2["run_id"] == record["run_id"]
        figures = v2["checks"]["variants"][v2["model"]["variant"]]
        assert figures["passed"]
        assert figures["min_cosine"] >= 0.98
        assert "speed not benchmarked" in v2["decisions"][v2["model"]["variant"]]["reason"]


def test_next_version_and_config_kept(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    args = ["export", "--model", tiny_models["text-classification"], "--name", "tc",
            "--repo", repo, "--no-bench"]  # fmt: skip
    assert cli(*args).code == 0
    config = repo / "tc" / "config.pbtxt"
    config.write_text(config.read_text() + "# edited by hand\n")
    (repo / "tc" / "7").mkdir()  # a gap: the next version is after the highest
    (repo / "tc" / "7" / "model.onnx").write_bytes((repo / "tc" / "1" / "model.onnx").read_bytes())
    assert cli(*args, "--quantize", "weight-only").code == 0
    assert versions(repo / "tc") == [1, 7, 8, 9]
    assert manifest(repo / "tc" / "9")["model"]["variant"] == "int8-weight-only"
    assert config.read_text().endswith("# edited by hand\n")
    assert not [p for p in (repo / "tc").iterdir() if p.name.startswith(".")]  # no staging left
    assert cli(*args, "--quantize", "--quantized-only").code == 0
    assert versions(repo / "tc") == [1, 7, 8, 9, 10]
    assert manifest(repo / "tc" / "10")["model"]["variant"].startswith("int8-")


def test_failed_check_publishes_nothing(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    args = ["export", "--model", tiny_models["text-classification"], "--name", "tc",
            "--repo", repo, "--no-bench", "--quantize"]  # fmt: skip
    result = cli(*args, "--fp32-tolerance", "0")
    assert result.code == 3
    assert "nothing published" in result.err
    assert "check failed" in result.err
    assert "--force" in result.err
    assert versions(repo / "tc") == []

    # only an explicit target fails: still nothing (under auto FP32 is published alone:
    # tests/export/test_quantize_auto.py)
    result = cli(*args, "--quantize", "weight-only", "--min-cosine", "1.5")
    assert result.code == 3
    assert "int8-" in result.err
    assert versions(repo / "tc") == []

    result = cli(*args, "--fp32-tolerance", "0", "--force")
    assert result.code == 0
    record = manifest(repo / "tc" / "1")
    assert record["forced"] is True
    assert "published by --force" in record["decisions"]["fp32"]["reason"]
    assert record["checks"]["variants"]["fp32"]["passed"] is False


def test_no_publish_writes_nothing(tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", tiny_models["feature-extraction"], "--name", "fe",
                 "--repo", repo, "--no-bench", "--no-publish", "--optimize", "O2")  # fmt: skip
    assert result.code == 0, result.err
    assert "fp32-O2" in result.out
    assert "--no-publish" in result.out
    assert not repo.exists()


def test_benchmark_each_variant_in_its_own_process(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    # --force: on a busy machine the INT8 variant may time slower than FP32 for 3 runs.
    model = tiny_models["text-classification"]
    flags = ["--optimize", "O1", "--quantize", "--bench-iterations", "3", "--bench-threads", "1",
             "--speed-budget", "2"]  # fmt: skip
    result = cli("export", "--model", model, "--name", "tc", "--repo", repo, *flags, "--force")
    assert result.code == 0, result.err
    assert "Latency (3 runs each, own process)" in result.out
    bench = manifest(repo / "tc" / "1")["benchmark"]
    assert bench["iterations"] == 3
    assert bench["threads"] == 1
    seen = {(row["variant"], row["batch"]) for row in bench["rows"]}
    published = manifest(repo / "tc" / "2")["model"]["variant"]
    assert published.startswith("int8-")
    # the FP32 graphs and the quantized candidate published (the others are only timed)
    assert {v for v, _ in seen} == {"pytorch", "fp32", "fp32-O1", published}
    assert len({v for v, _ in seen}) == 4
    assert {b for _, b in seen} == {1, 32}
    for row in bench["rows"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    decisions = manifest(repo / "tc" / "2")["decisions"]
    int8 = next(name for name in decisions if name.startswith("int8-"))
    assert "paired rounds" in decisions[int8]["reason"]  # timed against FP32, interleaved


def test_cannot_export_names_architecture_and_task(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", tiny_models["gpt2"], "--task", "question-answering",
                 "--name", "g", "--repo", repo)  # fmt: skip
    assert result.code == 1
    assert "GPT2LMHeadModel" in result.err
    assert "question-answering" in result.err
    assert "text-classification" in result.err  # what it does support

    unsupported = tmp_path / "fnet"
    unsupported.mkdir()
    config = {"model_type": "fnet", "architectures": ["FNetForSequenceClassification"]}
    (unsupported / "config.json").write_text(json.dumps(config))
    result = cli("export", "--model", unsupported, "--name", "f", "--repo", repo)
    assert result.code == 1
    assert "FNetForSequenceClassification (model_type fnet)" in result.err
    assert "text-classification" in result.err
    assert "not supported" in result.err
    assert not repo.exists()


def test_model_folder_without_a_tokenizer_is_a_clear_error(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    """config.json and the weights only: one line naming the folder and what is missing (it was
    a TypeError traceback from transformers, after the export)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models["text-classification"] / name, bare / name)
    repo = tmp_path / "repo"
    result = cli("export", "--model", bare, "--name", "tc", "--repo", repo, "--no-bench")
    assert result.code == 1  # as for a missing folder or config.json
    error = result.err.replace("\n", "")
    assert f"{bare} has no tokenizer" in error
    assert "tokenizer.json" in error
    assert "Traceback" not in result.err
    assert not repo.exists()

    # A tokenizer_config.json without its vocabulary fails in transformers: named as clearly.
    shutil.copy(tiny_models["text-classification"] / "tokenizer_config.json", bare)
    result = cli("export", "--model", bare, "--name", "tc", "--repo", repo, "--no-bench")
    assert result.code == 1
    assert f"{bare}: cannot load the model's tokenizer" in result.err.replace("\n", "")
    assert not repo.exists()
