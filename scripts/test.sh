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
