"""bench.generation's model: a distilgpt2-sized random GPT-2 (6 layers, 768 wide, 12 heads,
vocabulary 50257), its tokenizer, its export into a model repository, and the prompts.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on random "words" until it
has exactly 50257 entries, so every id the random model can emit decodes to text (an id outside
the tokenizer would decode to nothing, and a streamed response is only sent for non-empty text).
The model is exported the way users do it, ``ortserve export --task text-generation`` (the
exporter's slicing of the LM head included), and the factory's plain Optimum export is the
fallback when the exporter fails. Everything is cached in ``bench/.generation/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import BENCH, ROOT

CACHE = BENCH / ".generation"
NAME = "gpt2bench"
VOCAB = 50257  # GPT-2's
EOS = "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus(words: int = 400_000, seed: int = 0) -> list[str]:
    """Lines of Zipf-distributed random words: enough distinct pairs for 50k BPE merges."""
    rng = np.random.default_rng(seed)
    lexicon = ["".join(rng.choice(list(LETTERS), size=n)) for n in rng.integers(2, 11, 60_000)]
    ranks = np.minimum(rng.zipf(1.15, size=words), len(lexicon)) - 1
    chosen = [lexicon[i] for i in ranks]
    return [" ".join(chosen[i : i + 20]) for i in range(0, len(chosen), 20)]


def train_tokenizer() -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of exactly ``VOCAB`` entries (eos is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    short = VOCAB - tok.get_vocab_size()
    if short > 0:  # the corpus ran out of merges: pad with plain (decodable) added tokens
        tok.add_tokens([f"w{i}x" for i in range(short)])
    return tok


def make_hf_model(folder: Path, seed: int = 0) -> Path:
    """The random GPT-2 and its tokenizer as a Hugging Face folder."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    fast = tf.GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=1024
    )
    fast.save_pretrained(folder)
    config = tf.GPT2Config(
        vocab_size=VOCAB,
        n_positions=1024,
        n_embd=768,
        n_layer=6,
        n_head=12,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.1,  # raised, so greedy output is not one token repeated
    )
    model = tf.GPT2LMHeadModel(config)
    model.eval()
    model.generation_config.pad_token_id = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return folder


def export_with_cli(hf: Path, repo: Path, log: Path) -> bool:
    """``ortserve export --task text-generation`` into ``repo``; False (log kept) if it fails."""
    cmd = [
        sys.executable, "-m", "ortserve", "export", "--model", str(hf), "--repo", str(repo),
        "--name", NAME, "--task", "text-generation", "--no-bench",
    ]  # fmt: skip
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    return done.returncode == 0 and (repo / NAME / "1" / "model.onnx").is_file()


def export_with_factory(hf: Path, repo: Path) -> None:
    """The test factory's export (plain Optimum, no LM-head slicing) and config."""
    from tests.factories.causal_lm import config_text, export_version

    shutil.rmtree(repo / NAME, ignore_errors=True)
    export_version(hf, repo / NAME / "1")
    (repo / NAME / "config.pbtxt").write_text(config_text(NAME))


def build(rebuild: bool = False) -> tuple[Path, str]:
    """The repository holding ``NAME`` (built once, then reused) and how it was exported."""
    hf, repo, done = CACHE / "hf", CACHE / "repo", CACHE / "done"
    if done.exists() and not rebuild:
        return repo, done.read_text().strip()
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    make_hf_model(hf)
    how = "ortserve export --task text-generation"
    if not export_with_cli(hf, repo, CACHE / "export.log"):
        print(f"ortserve export failed (see {CACHE / 'export.log'}); using the factory's export")
        export_with_factory(hf, repo)
        how = "tests.factories.causal_lm.export_version (ortserve export failed)"
    done.write_text(how)
    return repo, how


def prompts(tokenizer: Any, count: int, low: int = 8, high: int = 64, seed: int = 1) -> list[str]:
    """``count`` prompts of ``low``..``high`` tokens (uniform, fixed seed), of corpus words."""
    rng = np.random.default_rng(seed)
    words = corpus(words=20_000, seed=seed + 100)
    pool = " ".join(words).split(" ")
    out = []
    for target in rng.integers(low, high + 1, size=count):
        start = int(rng.integers(0, len(pool) - 200))
        text, tokens = "", 0
        for word in pool[start:]:  # words until ``target`` tokens; never past ``high``
            longer = f"{text} {word}" if text else word
            count = len(tokenizer.encode(longer).ids)
            if count > high:
                break
            text, tokens = longer, count
            if tokens >= target:
                break
        out.append(text)
    return out
