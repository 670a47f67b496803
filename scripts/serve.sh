#!/usr/bin/env bash
# Set up and serve the shipped model_repo/ on 127.0.0.1:8001 (extra arguments go to `ortserve serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh server
.venv/bin/python scripts/make_model_repo.py model_repo
exec .venv/bin/ortserve serve --model-repository model_repo "$@"
