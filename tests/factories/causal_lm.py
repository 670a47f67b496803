"""Tiny random causal language models (GPT-2 and Llama with grouped-query attention), exported
as ortserve generation models. Nothing is downloaded: the byte-level BPE tokenizer is trained here
and the weights are random, with ``initializer_range`` raised so that greedy output is not one
token repeated.

``make_hf_causal_lm`` writes a Hugging Face folder (config.json, generation_config.json with an eos
id, weights, tokenizer.json + tokenizer_config.json); ``export_version`` exports it with Optimum
(text-generation-with-past) into a version folder of the layout the daemon reads, with a
hand-written config.pbtxt; ``cached_causal_lm`` builds both once per test session (export is slow:
torch) and ``write_generation_model`` copies the cached version into a model repository.
Needs the ``export`` extra (torch, transformers, optimum); everything heavy is imported lazily.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

ARCHS = ("gpt2", "llama")
EOS = "<|endoftext|>"
CONTEXT = 128  # n_positions / max_position_embeddings: the engine's context limit
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime serves models on CPUs and GPUs.",
    "Continuous batching lets many streams share each decode step.",
    "A model repository holds one folder per model and one per version.",
    "Hello world, this is a tiny tokenizer trained on a few sentences.",
    "What is the capital of France? Paris is the capital of France.",
    "Café, naïve, façade and jalapeño have accents.",
    "日本語のテキストと絵文字 🙂🚀 are several bytes each.",
]
FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json")  # fmt: skip


def train_tokenizer() -> Any:
    """The byte-level BPE tokenizer (``tokenizers.Tokenizer``) of these models: vocabulary 300,
    so multi-byte characters (accents, CJK, emoji) stay split over byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def _tokenizer(folder: Path, arch: str) -> int:
    """Save ``train_tokenizer()`` as the model's fast tokenizer; returns the vocabulary size."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    tok = train_tokenizer()
    kind: Any = GPT2TokenizerFast if arch == "gpt2" else PreTrainedTokenizerFast
    fast = kind(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=CONTEXT
    )
    fast.save_pretrained(folder)
    return int(tok.get_vocab_size())


def _model(arch: str, vocab: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "initializer_range": 0.3,
    }
    if arch == "gpt2":
        config: Any = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT, **common)
        return tf.GPT2LMHeadModel(config)
    config = tf.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 KV heads for 4 query heads
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        **common,
    )
    return tf.LlamaForCausalLM(config)


def make_hf_causal_lm(folder: Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """A 2-layer, 64-wide random ``arch`` (``ARCHS``) language model in HF layout in ``folder``."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"no tiny causal LM {arch!r} (known: {', '.join(ARCHS)})")
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(folder, arch)
    model = _model(arch, vocab)
    model.eval()
    model.generation_config.pad_token_id = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return folder


def config_text(name: str, parameters: dict[str, str] | None = None) -> str:
    """A generation model's config.pbtxt (as the exporter writes it), with extra parameters."""
    params = {"task": "text-generation", **(parameters or {})}
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
    ]
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def export_version(hf_folder: Path, version_dir: Path) -> Path:
    """Export ``hf_folder`` with Optimum (text-generation-with-past) into ``version_dir``:
    model.onnx plus the tokenizer and HF config files beside it."""
    from optimum.exporters.onnx import main_export

    work = version_dir.parent / f".{version_dir.name}.export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(
            str(hf_folder),
            output=work,
            task="text-generation-with-past",
            do_validation=False,
            local_files_only=True,
        )
    version_dir.mkdir(parents=True, exist_ok=True)
    for item in work.iterdir():
        if item.name == "model.onnx" or item.name.startswith("model.onnx"):
            shutil.move(str(item), version_dir / item.name)
    for name in FILES:
        if (hf_folder / name).is_file():
            shutil.copy(hf_folder / name, version_dir / name)
    shutil.rmtree(work)
    return version_dir


def cached_causal_lm(base: Path, arch: str = "gpt2") -> tuple[Path, Path]:
    """(HF folder, exported version folder) of the tiny ``arch`` model, built once under
    ``base`` (pass ``tmp_path_factory.getbasetemp()``): later calls find it there."""
    root = base / "causal_lm" / arch
    hf, version = root / "hf", root / "1"
    done = root / "done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_hf_causal_lm(hf, arch)
        export_version(hf, version)
        done.write_text("ok")
    return hf, version


def write_generation_model(
    repo: Path,
    name: str,
    base: Path,
    arch: str = "gpt2",
    parameters: dict[str, str] | None = None,
    version: int = 1,
) -> Path:
    """``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/`` (copied from the cached
    model); returns the version folder."""
    _, built = cached_causal_lm(base, arch)
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_text(name, parameters))
    target = model_dir / str(version)
    shutil.copytree(built, target, dirs_exist_ok=True)
    return target


def generation_config(version_dir: Path) -> dict[str, Any]:
    """The version folder's generation_config.json, read."""
    data: dict[str, Any] = json.loads((version_dir / "generation_config.json").read_text())
    return data
