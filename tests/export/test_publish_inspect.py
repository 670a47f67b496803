"""`ortserve publish` (an existing ONNX model, no torch), `ortserve inspect`, and the offline
hub-id error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnx

from ortserve.adapters import TensorAdapter
from ortserve.repository.config import parse_config_text
from tests.export.conftest import CLI, manifest, versions
from tests.factories.onnx_models import add_model

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client")])}


def _ortserve(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ortserve", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env or ENV, cwd=ROOT,
    )  # fmt: skip


def test_hub_id_fails_fast_and_offline(tmp_path: Path) -> None:
    env = {**ENV, "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    start = time.monotonic()
    done = _ortserve("export", "--model", "sentence-transformers/all-MiniLM-L6-v2",
                     "--name", "minilm", "--repo", tmp_path / "repo", env=env)  # fmt: skip
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert "Hugging Face Hub id" in done.stderr
    assert "not in the local cache" in done.stderr
    assert "never downloads" in done.stderr
    assert "--model DIR" in done.stderr
    assert elapsed < 20, elapsed  # no torch import, no network attempt
    assert not (tmp_path / "repo").exists()

    done = _ortserve("export", "--model", tmp_path / "missing", "--name", "x", env=env)
    assert done.returncode == 1
    assert "no such folder" in done.stderr


def test_hub_id_already_in_the_local_cache_is_used(tmp_path: Path) -> None:
    """A hub id resolves to its cached snapshot (the layout huggingface_hub writes), offline."""
    repo_cache = tmp_path / "hf-home" / "hub" / "models--acme--tiny"
    snapshot = repo_cache / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text("0123abcd")
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    (snapshot / "config.json").write_text(json.dumps(config))
    script = (
        "from ortserve.export.source import resolve_source, detect_task; "
        "s = resolve_source('acme/tiny'); print(s.hub_id, s.folder.name, detect_task(s))"
    )
    env = {**ENV, "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["acme/tiny", "0123abcd", "text-classification"]


def test_publish_bare_onnx_file_without_torch(tmp_path: Path) -> None:
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    repo = tmp_path / "repo"
    script = (
        "import sys; from ortserve.cli import main; "
        f"code = main(['publish', {str(model)!r}, '--name', 'add', '--repo', {str(repo)!r}]); "
        "assert 'torch' not in sys.modules, 'publish imported torch'; sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert versions(repo / "add") == [1]
    record = manifest(repo / "add" / "1")
    assert record["made_by"] == "ortserve publish"
    assert record["checks"]["onnx_checker"].startswith("passed")
    assert "CPUExecutionProvider" in record["checks"]["onnxruntime_load"]
    assert record["model"]["task"] is None
    assert not (repo / "add" / "config.pbtxt").exists()
    assert sorted(record["files"]) == ["model.onnx"]
    assert "no tokenizer.json" in done.stderr


def test_publish_refuses_a_broken_model(tmp_path: Path, cli: CLI) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    repo = tmp_path / "repo"
    result = cli("publish", broken, "--name", "b", "--repo", repo)
    assert result.code == 1
    assert "onnx.checker" in result.err or "not an ONNX model" in result.err
    assert versions(repo / "b") == []


def test_publish_exported_folder_and_inspect(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    exported = cli("export", "--model", tiny_models["sentence-embeddings"], "--name", "st",
                   "--repo", repo, "--no-bench")  # fmt: skip
    assert exported.code == 0, exported.err
    result = cli("publish", repo / "st" / "1", "--name", "copy", "--repo", repo)
    assert result.code == 0, result.err
    copy = repo / "copy" / "1"
    record = manifest(copy)
    assert record["model"]["task"] == "sentence-embeddings"  # from the manifest beside it
    assert record["source"]["manifest"]["model"]["name"] == "st"
    assert {"model.onnx", "tokenizer.json", "modules.json", "1_Pooling/config.json"} <= set(
        record["files"]
    )
    config = (repo / "copy" / "config.pbtxt").read_text()
    assert '"sentence-embeddings"' in config
    assert '"pooling"' in config

    shown = cli("inspect", copy)
    assert shown.code == 0, shown.err
    for text in ("opset ai.onnx", "input_ids", "sentence_embedding", "batch_size",
                 "sequence_length", "manifest.json", "ortserve publish"):  # fmt: skip
        assert text in shown.out, text
    as_json = cli("inspect", copy / "model.onnx", "--json")
    data = json.loads(as_json.out)
    names = [i["name"] for i in data["graph"]["inputs"]]
    assert names[:2] == ["input_ids", "attention_mask"]
    assert data["graph"]["inputs"][0]["dynamic_axes"] == {"0": "batch_size", "1": "sequence_length"}
    assert data["manifest"]["version"] == 1

    missing = cli("inspect", tmp_path / "nothing-here")
    assert missing.code == 1
    assert "no such file or folder" in missing.err


def test_inspect_shows_dims_and_a_short_manifest(tmp_path: Path, cli: CLI) -> None:
    """No torch: an ONNX file published as is. The dims column once came out empty (rich read
    "[batch_size, 384]" as markup) and the whole manifest was printed (~110 lines here, ~330
    for an export)."""
    model = tmp_path / "add.onnx"
    onnx.save(add_model(width=384, batch="batch_size"), str(model))
    repo = tmp_path / "repo"
    assert cli("publish", model, "--name", "add", "--repo", repo).code == 0
    shown = cli("inspect", repo / "add" / "1")
    assert shown.code == 0, shown.err
    assert shown.out.count("[batch_size, 384]") == 2  # the input and the output
    for text in ("made by", "ortserve publish", "check onnx_checker", "passed (full_check)",
                 "1,656 bytes", "--manifest"):  # fmt: skip
        assert text in shown.out, text
    assert "cpu_flags" not in shown.out
    assert "files_sha256" not in shown.out
    assert len(shown.out.splitlines()) <= 40, shown.out
    whole = cli("inspect", repo / "add" / "1", "--manifest")
    assert whole.code == 0, whole.err
    assert "cpu_flags" in whole.out
    assert "files_sha256" in whole.out
    data = json.loads(cli("inspect", repo / "add" / "1", "--json").out)
    assert data["manifest"]["machine"]["cpu_count"] == os.cpu_count()
    assert data["graph"]["inputs"][0]["dims"] == ["batch_size", 384]


def test_manifest_summary_of_an_export() -> None:
    from ortserve.export.commands.inspect import manifest_summary

    exported = {
        "made_by": "ortserve export", "created_utc": "2026-01-01T00:00:00+00:00", "version": 2,
        "command": "ortserve export --model m --name n", "model": {"name": "n", "task": "x"},
        "source": {"hub_id": "acme/tiny", "model": "acme/tiny"},
        "checks": {"onnx_checker": "passed", "variants": {"int8": {"passed": False, "rule": "r"}}},
        "decisions": {"int8": {"publish": False, "reason": "cosine 0.9 < 0.99"}},
        "benchmark": {"rows": [{"variant": "fp32", "batch": 1, "p50_ms": 1.5, "p95_ms": 2.0}]},
        "files": {"model.onnx": {"bytes": 2048}, "tokenizer.json": {"bytes": 10}},
    }  # fmt: skip
    rows = dict(manifest_summary(exported))
    assert rows["source"] == "acme/tiny"
    assert rows["check int8"] == "FAILED: r"
    assert rows["decision int8"] == "not published: cosine 0.9 < 0.99"
    assert rows["bench fp32 batch 1"] == "p50 1.5 ms, p95 2.0 ms"
    assert rows["files"] == "2, 2,058 bytes"
    assert dict(manifest_summary({}))["version"] == "?"  # a manifest missing fields still shows


def test_inspect_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`ortserve inspect ... | head`: the tables and the JSON both stop without a traceback."""
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    paths = [os.environ.get("PYTHONPATH", ""), ENV["PYTHONPATH"]]  # a caller's path first
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    for extra in ([], ["--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone, as head once it has its lines
        try:
            done = subprocess.run(
                [sys.executable, "-m", "ortserve", "inspect", str(model), *extra],
                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, env=env,
            )  # fmt: skip
        finally:
            os.close(write_end)
        assert done.returncode == 1, extra
        assert done.stderr == "", extra


def test_help_explains_every_flag() -> None:
    from ortserve.export.cli import build_export_parser, build_inspect_parser, build_publish_parser

    for parser in (build_export_parser(), build_publish_parser(), build_inspect_parser()):
        for action in parser._actions:
            assert len(action.help or "") > 10, (parser.prog, action.dest)
    done = _ortserve("export", "--help")
    assert done.returncode == 0
    for flag in ("--model", "--task", "--name", "--repo", "--opset", "--optimize", "--quantize",
                 "--per-tensor", "--max-length", "--sample-text", "--fp32-tolerance",
                 "--min-cosine", "--min-agreement", "--no-bench", "--bench-iterations", "--bench-threads",
                 "--force", "--no-publish", "--quantized-only", "--max-batch-size"):  # fmt: skip
        assert flag in done.stdout, flag
    top = _ortserve("--help")
    assert all(name in top.stdout for name in ("serve", "export", "publish", "inspect"))


def test_publish_a_language_model_as_a_generation_model(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    """An exported causal LM republished: recognised as a generation model (from the manifest
    beside it), its tokenizer beside model.onnx, the generation config written; without a
    tokenizer.json the same graph is a tensor model (the engine could not tokenize for it)."""
    repo = tmp_path / "repo"
    exported = cli("export", "--model", tiny_models["gpt2"], "--name", "lm", "--repo", repo,
                   "--no-bench")  # fmt: skip
    assert exported.code == 0, exported.err
    result = cli("publish", repo / "lm" / "1", "--name", "copy", "--repo", repo)
    assert result.code == 0, result.err
    record = manifest(repo / "copy" / "1")
    assert record["model"]["task"] == "text-generation-with-past"  # from the manifest beside it
    assert (record["model"]["config_task"], record["model"]["served_as"]) == (
        "text-generation",
        "generation",
    )
    assert {"tokenizer.json", "generation_config.json", "config.json"} <= set(record["files"])
    config = (repo / "copy" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in config
    assert "model_transaction_policy { decoupled: true }" in config
    assert "model_warmup" not in config
    refused = cli("publish", repo / "lm" / "1", "--name", "copy2", "--repo", repo,
                  "--max-length", "64")  # fmt: skip
    assert refused.code == 1
    assert "--max-length 64: a text-generation-with-past model has no max_sequence_length" in (
        refused.err.replace("\n", " ")
    )
    assert not (repo / "copy2").exists()

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(repo / "lm" / "1" / "model.onnx", bare / "model.onnx")
    result = cli("publish", bare, "--name", "tensors", "--repo", repo)
    assert result.code == 0, result.err
    assert "no tokenizer.json for the generation engine" in result.out.replace("\n", " ")
    record = manifest(repo / "tensors" / "1")
    assert (record["model"]["task"], record["model"]["served_as"]) == (None, "tensors")
    assert "model_warmup" in (repo / "tensors" / "config.pbtxt").read_text()  # empty past


def test_publish_refuses_settings_the_daemon_would_refuse(tmp_path: Path, cli: CLI) -> None:
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    repo = tmp_path / "repo"
    result = cli("publish", model, "--name", "a", "--repo", repo, "--task", "text-classification",
                 "--max-batch-size", "0")  # fmt: skip
    assert result.code == 1
    assert "--max-batch-size 0" in result.err
    assert versions(repo / "a") == []
    for flag, value in (("--max-length", "1"), ("--max-batch-size", "-1")):
        done = _ortserve("publish", model, "--name", "a", "--repo", repo, flag, value)
        assert done.returncode == 2, (flag, done.stderr)
        assert f"argument {flag}: must be >=" in done.stderr


def _load(model_dir: Path, version: int) -> Any:
    """Load the version as the daemon does (config.pbtxt if any, sessions, warm-up, text
    pipeline); raises the daemon's ModelLoadError when it would refuse it."""
    from ortserve.registry.versions import load_version
    from ortserve.repository.config import read_config

    served = load_version("m", model_dir, read_config(model_dir), version, 32, "test", None)
    served.sessions.close()
    return served


def test_publish_tensor_model_writes_the_batching_asked_for(tmp_path: Path, cli: CLI) -> None:
    """No task known: --max-batch-size still makes a config.pbtxt (it was silently dropped)."""
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    repo = tmp_path / "repo"
    result = cli("publish", model, "--name", "add", "--repo", repo, "--max-batch-size", "4")
    assert result.code == 0, result.err
    config = parse_config_text((repo / "add" / "config.pbtxt").read_text(), "config.pbtxt").config
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert not config.parameters
    served = _load(repo / "add", 1)
    assert isinstance(served.adapter, TensorAdapter)
    assert served.model_config.max_batch_size == 4

    # The config exists now and is never overwritten: the flag is not applied, and says so.
    result = cli("publish", model, "--name", "add", "--repo", repo, "--max-batch-size", "8")
    assert result.code == 0, result.err
    assert "exists and is kept" in result.err
    assert "--max-batch-size not applied" in result.err
    assert "max_batch_size: 4" in (repo / "add" / "config.pbtxt").read_text()
    assert versions(repo / "add") == [1, 2]


def test_publish_refuses_flags_it_cannot_apply(tmp_path: Path, cli: CLI) -> None:
    model = tmp_path / "add.onnx"
    onnx.save(add_model(), str(model))
    repo = tmp_path / "repo"
    result = cli("publish", model, "--name", "add", "--repo", repo, "--max-length", "64")
    assert result.code == 1
    assert "--max-length 64" in result.err
    assert "no text task" in result.err
    assert not (repo / "add").exists()

    fixed = tmp_path / "fixed.onnx"  # batch dimension fixed at 1: the daemon cannot batch it
    onnx.save(add_model(batch=1), str(fixed))
    result = cli("publish", fixed, "--name", "fixed", "--repo", repo, "--max-batch-size", "4")
    assert result.code == 1
    assert "the daemon would not load" in result.err
    assert "dynamic first dimension" in result.err
    assert not (repo / "fixed").exists()
    result = cli("publish", fixed, "--name", "fixed", "--repo", repo, "--max-batch-size", "0")
    assert result.code == 0, result.err
    assert _load(repo / "fixed", 1).model_config.max_batch_size == 0


def test_publish_tensor_model_with_a_tokenizer_beside_it(
    tmp_path: Path, cli: CLI, tiny_models: dict[str, Path]
) -> None:
    """A tokenizer.json beside a model without token inputs would make the daemon load a text
    model and refuse it: the tokenizer files go in tokenizer/, and the daemon serves tensors."""
    folder = tmp_path / "add"
    folder.mkdir()
    onnx.save(add_model(), str(folder / "model.onnx"))
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(tiny_models["text-classification"] / name, folder / name)
    repo = tmp_path / "repo"
    result = cli("publish", folder, "--name", "add", "--repo", repo, "--task",
                 "text-classification")  # fmt: skip
    assert result.code == 1
    assert "--task text-classification" in result.err
    assert "not token inputs" in result.err
    assert versions(repo / "add") == []

    result = cli("publish", folder, "--name", "add", "--repo", repo)
    assert result.code == 0, result.err
    assert "published as a tensor model" in result.err
    assert "tokenizer/" in result.err
    version = repo / "add" / "1"
    assert not (version / "tokenizer.json").exists()
    assert (version / "tokenizer" / "tokenizer.json").is_file()
    record = manifest(version)
    assert record["model"]["served_as"] == "tensors"
    assert {"tokenizer/tokenizer.json", "tokenizer/config.json"} <= set(record["files"])
    served = _load(repo / "add", 1)  # before the fix: "a text model takes input_ids, ..."
    assert isinstance(served.adapter, TensorAdapter)
    assert [entry.name for entry in served.config.input] == ["x"]


def test_publish_refuses_what_the_daemon_would_refuse_with_its_config(
    tmp_path: Path, cli: CLI
) -> None:
    """An existing config.pbtxt is kept: a model it does not fit is refused before publishing."""
    model = tmp_path / "add.onnx"
    onnx.save(add_model(width=4), str(model))
    repo = tmp_path / "repo"
    (repo / "add").mkdir(parents=True)
    (repo / "add" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] } ]\n'
    )
    result = cli("publish", model, "--name", "add", "--repo", repo)
    assert result.code == 1
    assert "the daemon would not load" in result.err
    assert "config.pbtxt" in result.err
    assert versions(repo / "add") == []
    assert _staging_left(repo / "add") == []


def _staging_left(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]
