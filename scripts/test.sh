#!/usr/bin/env bash
# Set up and run every check: lint, format, types, generated stubs, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh server,dev,export,minilm
# The Node.js interop client (tests/interop): its packages, locked, in the folder; nothing global.
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python protos/generate.py --check
.venv/bin/python -m pytest -p no:cacheprovider "$@"
# The export tests marked ort_range once more, against the newest onnxruntime that pyproject.toml
# admits (constraints.txt pins the one above), so that the next release cannot break the quick
# start unnoticed: a second venv, the same install without that pin. ORT_RANGE=0 skips it.
if [[ ${ORT_RANGE:-1} != 0 ]]; then
  VENV=.venv-ort-latest UNPIN=onnxruntime scripts/setup-venv.sh server,dev,export,minilm
  .venv-ort-latest/bin/python -c 'import onnxruntime; print("newest onnxruntime:", onnxruntime.__version__)'
  .venv-ort-latest/bin/python -m pytest -p no:cacheprovider -m ort_range tests/export
fi
