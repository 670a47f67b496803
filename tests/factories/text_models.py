"""Tiny text models in Hugging Face layout: an ONNX graph, a WordPiece tokenizer trained here, and
hand-written HF JSON files. Real files, real tokenizers, real ONNX Runtime; nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.factories.onnx_models import IR_VERSION, OPSET

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "paris is the capital of france and berlin is the capital of germany",
    "alice works at acme corporation in london",
    "bob visited new york with carol last summer",
    "i love this movie it is wonderful and great",
    "this film is terrible and boring i hate it",
    "what is the capital of france",
    "where does alice work",
    "machine learning models serve predictions over grpc",
    "a sentence about cats and dogs and birds",
] * 3
WIDTH = 8
TOKEN_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}


def train_tokenizer(vocab_size: int = 200) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def _graph(
    name: str,
    nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def _embed(vocab: int, seed: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Token states h = E[ids] + T[type_ids]: [batch, seq, WIDTH]."""
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((vocab, WIDTH)).astype(np.float32), "E")
    types = numpy_helper.from_array(rng.standard_normal((2, WIDTH)).astype(np.float32) * 0.1, "T")
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["e"]),
        helper.make_node("Gather", ["T", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["h"]),
    ]
    return nodes, [table, types]


def embedder(vocab: int, seed: int = 0) -> onnx.ModelProto:
    nodes, inits = _embed(vocab, seed)
    nodes.append(helper.make_node("Identity", ["h"], ["last_hidden_state"]))
    out = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", WIDTH]
    )
    return _graph("embedder", nodes, [out], inits)


def classifier(vocab: int, labels: int, seed: int = 0) -> onnx.ModelProto:
    """Masked mean of token states, then a linear layer: logits [batch, labels]."""
    nodes, inits = _embed(vocab, seed)
    rng = np.random.default_rng(seed + 1)
    inits += [
        numpy_helper.from_array(rng.standard_normal((WIDTH, labels)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis_last"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["c"], keepdims=0),
        helper.make_node("Div", ["s", "c"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", labels])
    return _graph("classifier", nodes, [out], inits)


def token_classifier(vocab: int, labels: int, seed: int = 0) -> onnx.ModelProto:
    nodes, inits = _embed(vocab, seed)
    rng = np.random.default_rng(seed + 2)
    inits.append(
        numpy_helper.from_array(rng.standard_normal((WIDTH, labels)).astype(np.float32) * 3, "W")
    )
    nodes.append(helper.make_node("MatMul", ["h", "W"], ["logits"]))
    out = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", labels]
    )
    return _graph("tokens", nodes, [out], inits)


def question_answerer(vocab: int, seed: int = 0) -> onnx.ModelProto:
    nodes, inits = _embed(vocab, seed)
    rng = np.random.default_rng(seed + 3)
    inits += [
        numpy_helper.from_array(rng.standard_normal((WIDTH, 1)).astype(np.float32), "Ws"),
        numpy_helper.from_array(rng.standard_normal((WIDTH, 1)).astype(np.float32), "We"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    nodes += [
        helper.make_node("MatMul", ["h", "Ws"], ["s3"]),
        helper.make_node("MatMul", ["h", "We"], ["e3"]),
        helper.make_node("Squeeze", ["s3", "axis_last"], ["start_logits"]),
        helper.make_node("Squeeze", ["e3", "axis_last"], ["end_logits"]),
    ]
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch_size", "sequence_length"])
        for n in ("start_logits", "end_logits")
    ]
    return _graph("qa", nodes, outs, inits)


def write_text_model(
    repo: Path,
    name: str,
    task: str,
    version: int = 1,
    config: str | None = None,
    labels: dict[int, str] | None = None,
    sentence_transformers: bool = False,
    extra_files: dict[str, str] | None = None,
) -> tuple[Path, Tokenizer]:
    """Lay out ``<repo>/<name>/<version>/`` with model.onnx, tokenizer.json and HF files."""
    tokenizer = train_tokenizer()
    vocab = tokenizer.get_vocab_size()
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    hf: dict[str, object] = {"model_type": "bert"}
    if task == "text-classification":
        labels = labels or {0: "NEGATIVE", 1: "POSITIVE"}
        model = classifier(vocab, len(labels))
        hf["architectures"] = ["BertForSequenceClassification"]
    elif task == "token-classification":
        labels = labels or TOKEN_LABELS
        model = token_classifier(vocab, len(labels))
        hf["architectures"] = ["BertForTokenClassification"]
    elif task == "question-answering":
        model = question_answerer(vocab)
        hf["architectures"] = ["BertForQuestionAnswering"]
    else:
        model = embedder(vocab)
        hf["architectures"] = ["BertModel"]
    if labels:
        hf["id2label"] = {str(k): v for k, v in labels.items()}
        hf["label2id"] = {v: k for k, v in labels.items()}
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]))  # fmt: skip
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": WIDTH, "pooling_mode_mean_tokens": True}
        ))  # fmt: skip
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    for rel, text in (extra_files or {}).items():
        (folder / rel).write_text(text)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return folder, tokenizer
