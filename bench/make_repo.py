"""Build the perf_analyzer benchmark repository: model ``encoder`` + an input-data JSON file.

    .venv/bin/python bench/make_repo.py [REPO]      # default: bench/.repo

Writes REPO/encoder/1/model.onnx (tests/factories/onnx_models.py's encoder_model()),
REPO/encoder/config.pbtxt (max_batch_size 64, intra_op_thread_count "2") and the
perf_analyzer --input-data file REPO/encoder-input-seq32.json (the daemon ignores plain files
at the repository root).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories.onnx_models import encoder_model, write_model

BENCH = Path(__file__).resolve().parent
MODEL = "encoder"
SEQ = 32
VOCAB = 30522

CONFIG = """\
name: "encoder"
platform: "onnxruntime_onnx"
max_batch_size: 64
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "2" }
}
"""


def input_data(seq: int = SEQ, vocab: int = VOCAB, seed: int = 0) -> dict[str, Any]:
    """perf_analyzer --input-data: one row of ids within the vocabulary and an all-ones mask."""
    ids = np.random.default_rng(seed).integers(1, vocab, size=seq, dtype=np.int64)
    return {
        "data": [
            {
                "input_ids": {"content": [int(v) for v in ids], "shape": [seq]},
                "attention_mask": {"content": [1] * seq, "shape": [seq]},
            }
        ]
    }


def build(repo: Path) -> Path:
    """Write the repository; return the path of the input-data JSON file."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, MODEL, encoder_model(vocab=VOCAB), config=CONFIG)
    data = repo / f"{MODEL}-input-seq{SEQ}.json"
    data.write_text(json.dumps(input_data()) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", type=Path, default=BENCH / ".repo")
    args = parser.parse_args(argv)
    data = build(args.repo)
    print(f"repository: {args.repo}")
    print(f"input data: {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
