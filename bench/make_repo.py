"""Build the perf_analyzer benchmark repository: model ``encoder`` + an input-data JSON file.

    .venv/bin/python -m bench.make_repo [REPO]      # default: bench/.repo

Writes REPO/encoder/1/model.onnx (tests/factories/onnx_models.py's encoder_model()),
REPO/encoder/config.pbtxt (max_batch_size 64, intra_op_thread_count "2") and the
perf_analyzer --input-data file REPO/encoder-input-seq32.json (the daemon ignores plain files
at the repository root).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.lib import BENCH
from bench.lib.encoder import MODEL, SEQ, VOCAB, input_data
from tests.factories.onnx_models import encoder_model, write_model

CONFIG = """\
name: "encoder"
platform: "onnxruntime_onnx"
max_batch_size: 64
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "2" }
}
"""


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
