"""Generate the shipped model_repo/'s model files (kept out of git), if they are missing.

    python scripts/make_model_repo.py [REPO]     # default: model_repo

model_repo/encoder is a synthetic sentence-encoder-shaped model with random weights (int64
input_ids + attention_mask [batch, seq] -> mean-pooled FP32 [batch, 384]), built with the onnx
helper API. Its config.pbtxt is checked in; version 1's model.onnx is made here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.factories.onnx_models import encoder_model  # noqa: E402


def main() -> int:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "model_repo"
    target = repo / "encoder" / "1" / "model.onnx"
    if target.exists():
        print(f"{target} exists")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(".model.onnx.partial")
    partial.write_bytes(encoder_model().SerializeToString())
    os.replace(partial, target)  # never leave a half-written model where the daemon looks
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
