"""Tiny random `transformers` models, one per task, with tokenizers trained here (never downloaded).

Each builder writes a folder that `ortserve export --model FOLDER` takes: config.json, the
weights (safetensors) and a fast tokenizer saved with ``save_pretrained``. BERT models get a
WordPiece tokenizer saved as ``BertTokenizerFast``; GPT-2 a byte-level BPE tokenizer saved as
``GPT2TokenizerFast`` (a plain ``PreTrainedTokenizerFast`` would emit ``token_type_ids``).
Needs the ``export`` extra (torch, transformers, sentence-transformers); import it lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime serves models on CPUs and GPUs.",
    "A model repository holds one folder per model and one per version.",
    "Dynamic batching groups requests that arrive close together.",
    "Hello world, this is a tiny tokenizer trained on a few sentences.",
    "What is the capital of France? Paris is the capital of France.",
    "Sentence embeddings are pooled token vectors, often normalized.",
    "Tokens, labels, spans and scores come back from the server.",
]

BERT_TASKS = (
    "text-classification",
    "token-classification",
    "question-answering",
    "feature-extraction",
    "sentence-embeddings",
)


def _bert_tokenizer(folder: Path, max_length: int) -> int:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(SENTENCES, WordPieceTrainer(vocab_size=160, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    fast.save_pretrained(folder)
    return int(tok.get_vocab_size())


def _gpt2_tokenizer(folder: Path, max_length: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=max_length,
    )
    fast.save_pretrained(folder)
    return int(tok.get_vocab_size())


def _bert_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        **extra,
    )


def make_bert(folder: Path, task: str, seed: int = 0, max_length: int = 128) -> Path:
    """A 2-layer, 32-wide random BERT for ``task`` (one of ``BERT_TASKS``) in ``folder``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bert_tokenizer(folder, max_length)
    if task == "text-classification":
        labels = {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}
        model: Any = tf.BertForSequenceClassification(_bert_config(vocab, **labels))
    elif task == "token-classification":
        labels = {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}
        model = tf.BertForTokenClassification(_bert_config(vocab, **labels))
    elif task == "question-answering":
        model = tf.BertForQuestionAnswering(_bert_config(vocab))
    elif task in ("feature-extraction", "sentence-embeddings"):
        model = tf.BertModel(_bert_config(vocab))
    else:
        raise ValueError(f"no tiny BERT for task {task!r}")
    model.eval()
    model.save_pretrained(folder)
    if task == "sentence-embeddings":
        _add_sentence_transformers_files(folder)
    return folder


def _add_sentence_transformers_files(folder: Path) -> None:
    """The files sentence-transformers writes: mean pooling, then Normalize."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "2_Normalize").mkdir(exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    pooling = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False})
    )
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))


def make_gpt2(folder: Path, seed: int = 0, max_length: int = 128) -> Path:
    """A 2-layer, 32-wide random GPT-2 language model in ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _gpt2_tokenizer(folder, max_length)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.eval()
    model.save_pretrained(folder)
    return folder
