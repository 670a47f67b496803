"""``ortserve export`` of causal LMs: the generation model layout, the LM head sliced to the last
position (same logits as the plain export and PyTorch, prefill and one decode step), and
``--quantize`` on the with-past graph. Tiny random GPT-2 (tied embeddings) and Llama (grouped-
query attention) from tests/factories/causal_lm.py, built once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve.export.convert.last_position import find_lm_head, slice_to_last_position
from ortserve.export.graph import describe_graph
from ortserve.export.repository.config_writer import config_text
from ortserve.repository.config import parse_config_text
from tests.export.conftest import CLI, manifest, versions

LAYOUT = ("model.onnx", "tokenizer.json", "config.json", "generation_config.json",
          "tokenizer_config.json", "special_tokens_map.json", "manifest.json")  # fmt: skip
PROMPTS = ["The quick brown fox", "Hello world, this is", "a"]


@pytest.fixture(scope="session")
def causal_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hugging Face folders of the tiny random GPT-2 and Llama, by architecture."""
    pytest.importorskip("optimum.exporters.onnx")
    from tests.factories.causal_lm import make_hf_causal_lm

    root = tmp_path_factory.mktemp("causal-lm-hf")
    return {arch: make_hf_causal_lm(root / arch, arch) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def plain_exports(
    causal_lms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Optimum's own text-generation-with-past export of each (unsliced), by architecture."""
    from tests.factories.causal_lm import export_version

    root = tmp_path_factory.mktemp("causal-lm-plain")
    return {arch: export_version(hf, root / arch) / "model.onnx" for arch, hf in causal_lms.items()}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _left_padded(hf: Path) -> dict[str, np.ndarray[Any, Any]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(PROMPTS, padding=True, return_tensors="np")
    mask = encoded["attention_mask"].astype(np.int64)
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": mask,
        "position_ids": np.clip(np.cumsum(mask, axis=1) - 1, 0, None),
    }


def _feeds(session: Any, tokens: dict[str, Any], past: dict[str, Any] | None) -> dict[str, Any]:
    feeds = {}
    for arg in session.get_inputs():
        if arg.name in tokens:
            feeds[arg.name] = tokens[arg.name]
        elif past is not None:
            feeds[arg.name] = past[arg.name]
        else:
            batch = tokens["input_ids"].shape[0]
            feeds[arg.name] = np.zeros((batch, arg.shape[1], 0, arg.shape[3]), np.float32)
    return feeds


def _run(
    session: Any, tokens: dict[str, Any], past: dict[str, Any] | None = None
) -> dict[str, Any]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, _feeds(session, tokens, past)), strict=True))


def _torch_last_logits(hf: Path, tokens: dict[str, Any]) -> np.ndarray[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in tokens.items()})
    logits: np.ndarray[Any, Any] = out.logits[:, -1:, :].float().numpy()
    return logits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sliced_graph_gives_the_last_position_of_the_plain_export_and_pytorch(
    tmp_path: Path, causal_lms: dict[str, Path], plain_exports: dict[str, Path], arch: str
) -> None:
    """Prefill (empty past) and one decode step fed the prefill's past: the sliced graph's
    logits are [batch, 1, vocab] and equal the plain export's last position and PyTorch's."""
    plain = plain_exports[arch]
    sliced_path = tmp_path / "model.onnx"
    sliced = slice_to_last_position(plain, sliced_path)
    assert sliced is not None
    assert sliced.head == "/lm_head/MatMul"
    full, cut = _session(plain), _session(sliced_path)
    assert cut.get_outputs()[0].shape[1] == 1
    tokens = _left_padded(causal_lms[arch])
    a, b = _run(full, tokens), _run(cut, tokens)
    vocab = a["logits"].shape[-1]
    assert b["logits"].shape == (len(PROMPTS), 1, vocab)
    np.testing.assert_allclose(b["logits"], a["logits"][:, -1:, :], atol=1e-5)
    for name in a:
        if name.startswith("present."):
            np.testing.assert_allclose(b[name], a[name], atol=1e-6)
    np.testing.assert_allclose(b["logits"], _torch_last_logits(causal_lms[arch], tokens), atol=1e-4)

    # one decode step with the past: PyTorch runs the whole sequence again
    next_ids = b["logits"].argmax(axis=-1).astype(np.int64)
    mask = np.concatenate([tokens["attention_mask"], np.ones_like(next_ids)], axis=1)
    step = {"input_ids": next_ids, "attention_mask": mask,
            "position_ids": tokens["position_ids"][:, -1:] + 1}  # fmt: skip
    past = {f"past_key_values.{k.removeprefix('present.')}": v
            for k, v in b.items() if k.startswith("present.")}  # fmt: skip
    decoded = _run(cut, step, past)["logits"]
    assert decoded.shape == (len(PROMPTS), 1, vocab)
    whole = {
        "input_ids": np.concatenate([tokens["input_ids"], next_ids], axis=1),
        "attention_mask": mask,
        "position_ids": np.concatenate([tokens["position_ids"], step["position_ids"]], axis=1),
    }
    np.testing.assert_allclose(decoded, _torch_last_logits(causal_lms[arch], whole), atol=1e-4)


@pytest.mark.parametrize(("arch", "task"), [("gpt2", "text-generation"), ("llama", None)])
def test_export_publishes_a_generation_model(
    tmp_path: Path, cli: CLI, causal_lms: dict[str, Path], arch: str, task: str | None
) -> None:
    from ortserve.generation.model import GenerationModel
    from ortserve.repository.config import complete_config
    from ortserve.runtime.session import session_signature

    repo = tmp_path / "repo"
    args = ["export", "--model", causal_lms[arch], "--name", "lm", "--repo", repo, "--no-bench"]
    args += ["--task", task] if task else []
    result = cli(*args)
    assert result.code == 0, result.err
    assert versions(repo / "lm") == [1]
    v1 = repo / "lm" / "1"
    assert sorted(str(p.relative_to(v1)) for p in v1.rglob("*") if p.is_file()) == sorted(LAYOUT)

    text = (repo / "lm" / "config.pbtxt").read_text()
    parsed = parse_config_text(text, "config.pbtxt")
    config = parsed.config
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching")
    assert not config.model_warmup
    assert {k: v.string_value for k, v in config.parameters.items()} == {"task": "text-generation"}

    record = manifest(v1)
    assert record["model"]["task"] == (task or "text-generation-with-past")
    assert (record["model"]["config_task"], record["model"]["served_as"]) == (
        "text-generation",
        "generation",
    )
    assert "LM head on the last position" in record["model"]["description"]
    fp32 = record["checks"]["variants"]["fp32"]
    assert fp32["passed"]
    assert fp32["max_abs_diff"] < 1e-4
    assert fp32["label_agreement"] == 1.0
    assert fp32["outputs"] == ["decode_logits", "logits"]
    logits = next(o for o in record["graph"]["outputs"] if o["name"] == "logits")
    assert logits["dims"][1] == 1
    assert any(i["name"] == "past_key_values.0.key" for i in record["graph"]["inputs"])
    generation = json.loads((v1 / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0

    # the daemon's own reader of a generation version takes it
    session = _session(v1 / "model.onnx")
    completed = complete_config(parsed, "lm", session_signature(session, v1 / "model.onnx"), 8)
    model = GenerationModel.load(v1, completed, "test")
    assert model.eos_ids == frozenset({0})
    assert model.spec.kv_heads == (2 if arch == "llama" else 4)  # GQA: 2 KV heads for 4


def test_tied_embeddings_are_stored_once(causal_lms: dict[str, Path], tmp_path: Path) -> None:
    """GPT-2's LM head is its embedding matrix: with accelerate (the export extra), Optimum
    finds the tie and the ONNX file holds it once (a Transpose feeds the LM head)."""
    from ortserve.export.convert.export import export_onnx
    from ortserve.export.source import resolve_source

    hf = causal_lms["gpt2"]
    path = export_onnx(resolve_source(str(hf)), "text-generation", None, tmp_path / "export")
    config = json.loads((hf / "config.json").read_text())
    embedding = config["vocab_size"] * config["n_embd"] * 4
    weights = describe_graph(path)["initializer_bytes"]
    safetensors = (hf / "model.safetensors").stat().st_size
    assert weights < safetensors  # the weights once (a second embedding would add 1/4 more)
    assert weights + embedding > safetensors * 1.1
    head = find_lm_head(onnx.load(str(path)).graph)
    assert head is not None
    assert head[0].input[1] == "transformer.wte.weight_transposed"


def test_quantize_weight_only_publishes_a_checked_generation_variant(
    tmp_path: Path, cli: CLI, causal_lms: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", causal_lms["llama"], "--name", "lm", "--repo", repo,
                 "--no-bench", "--quantize", "weight-only")  # fmt: skip
    assert result.code == 0, result.err
    assert versions(repo / "lm") == [1, 2]
    v2 = manifest(repo / "lm" / "2")
    assert (v2["model"]["variant"], v2["model"]["served_as"]) == ("int8-weight-only", "generation")
    figures = v2["checks"]["variants"]["int8-weight-only"]
    assert figures["passed"]
    assert figures["min_cosine"] >= 0.98
    ops = {n.op_type for n in onnx.load(str(repo / "lm" / "2" / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops


def test_quantize_on_gpt2_dynamic_int8_or_a_clear_refusal(
    tmp_path: Path, cli: CLI, causal_lms: dict[str, Path]
) -> None:
    """GPT-2's layers export as Gemm: dynamic INT8 quantizes them (the tied LM head stays FP32,
    read through a Transpose); weight-only (MatMulNBits) finds nothing and says so."""
    repo = tmp_path / "repo"
    refused = cli("export", "--model", causal_lms["gpt2"], "--name", "w", "--repo", repo,
                  "--no-bench", "--quantize", "weight-only")  # fmt: skip
    assert refused.code == 1
    message = refused.err.replace("\n", " ")
    assert "--quantize weight-only: nothing in the graph was quantized" in message
    assert "use dynamic INT8" in message
    assert versions(repo / "w") == []

    # random logits are nearly flat, so argmax agreement is a weak test here: judge on cosine
    result = cli("export", "--model", causal_lms["gpt2"], "--name", "d", "--repo", repo,
                 "--no-bench", "--quantize", "--min-agreement", "0.5")  # fmt: skip
    assert result.code == 0, result.err
    assert versions(repo / "d") == [1, 2]
    v2 = manifest(repo / "d" / "2")
    assert v2["model"]["variant"].startswith("int8-")
    assert v2["checks"]["variants"][v2["model"]["variant"]]["passed"]
    ops = {n.op_type for n in onnx.load(str(repo / "d" / "2" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops


# -- without torch: the surgery on hand-made graphs, and the config text -------------------------


def _head_graph(tied: bool, rank: int = 3) -> onnx.ModelProto:
    """hidden [b, s, 4] -> MatMul(W or Transpose(E)) -> Add(bias) -> logits [b, s, 6]."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4) if tied else (4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bias")]  # fmt: skip
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0])] if tied else []
    nodes += [
        helper.make_node("MatMul", ["hidden", "Wt" if tied else "W"], ["mm"], name="/lm_head/mm"),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
    ]
    dims: list[Any] = ["b", "s", 4][3 - rank :]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*dims[:-1], 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("tied", [False, True])
def test_slice_on_a_hand_made_head(tmp_path: Path, tied: bool) -> None:
    source, target = tmp_path / "head.onnx", tmp_path / "out" / "model.onnx"
    onnx.save(_head_graph(tied), str(source))
    sliced = slice_to_last_position(source, target)
    assert sliced is not None
    assert (sliced.head, sliced.hidden) == ("/lm_head/mm", "hidden")
    onnx.checker.check_model(str(target), full_check=True)
    hidden = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    (full,) = _session(source).run(None, {"hidden": hidden})
    (last,) = _session(target).run(None, {"hidden": hidden})
    assert last.shape == (2, 1, 6)
    np.testing.assert_allclose(last, full[:, -1:, :], atol=1e-6)


def test_no_head_found_leaves_the_graph_alone(tmp_path: Path) -> None:
    renamed = _head_graph(False)
    renamed.graph.output[0].name = "scores"  # no logits output
    renamed.graph.node[-1].output[0] = "scores"
    flat = _head_graph(True, rank=2)  # [rows, hidden]: axis 1 is not a sequence
    for model in (renamed, flat):
        source, target = tmp_path / "head.onnx", tmp_path / "model.onnx"
        onnx.save(model, str(source))
        assert slice_to_last_position(source, target) is None
        assert not target.exists()


def test_generation_config_text() -> None:
    for batch, extra in ((0, {}), (8, {"max_num_seqs": "8"})):
        config = parse_config_text(config_text("text-generation", batch, 128, {}), "c").config
        assert config.max_batch_size == 0
        assert config.model_transaction_policy.decoupled
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params == {"task": "text-generation", **extra}
