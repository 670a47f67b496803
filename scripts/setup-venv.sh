#!/usr/bin/env bash
# Create .venv (if needed) and install ortserve into it, editable, with the given extras.
#   scripts/setup-venv.sh server                     # the daemon
#   scripts/setup-venv.sh server,export,minilm       # + `ortserve export` and all-MiniLM-L6-v2 (serve.sh)
#   scripts/setup-venv.sh server,dev,export,minilm   # everything the tests need (test.sh)
# Two variables make a second venv that resolves some packages to their newest release that
# pyproject.toml admits, instead of the pin in constraints.txt (test.sh's onnxruntime-range step):
#   VENV=.venv-ort-latest UNPIN=onnxruntime scripts/setup-venv.sh server,dev,export,minilm
# Packages in UNPIN are upgraded on every run (a quick no-op while they are the newest).
# The install is skipped when nothing it depends on changed since the last one: .venv/.setup-stamp
# records a hash of pyproject.toml, constraints.txt, this script and the Python, and the extras
# installed. (The install is editable: changed source needs no reinstall.) Delete the stamp, or
# set SETUP_VENV_FORCE=1, to install again anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-server}
python=${PYTHON:-python3}
venv=${VENV:-.venv}
unpin=${UNPIN:-}
stamp=$venv/.setup-stamp
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi

# constraints.txt less the pins of the packages in UNPIN.
constraints=constraints.txt
if [[ -n $unpin ]]; then
  constraints=$venv/constraints-unpinned.txt
  pattern="^($(tr ' ' '|' <<<"$unpin"))=="
  grep -Eiv "$pattern" constraints.txt >"$constraints"
fi

digest=$("$venv/bin/python" -c '
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        h.update(f.read())
print(h.hexdigest())' pyproject.toml "$constraints" scripts/setup-venv.sh)

# covers INSTALLED WANTED: every extra of the comma list WANTED is in the comma list INSTALLED.
covers() {
  local extra
  for extra in ${2//,/ }; do
    [[ ",$1," == *",$extra,"* ]] || return 1
  done
}

installed=""
if [[ -f $stamp ]]; then
  read -r stamped_digest stamped_extras <"$stamp" || true
  if [[ ${stamped_digest:-} == "$digest" ]]; then
    installed=${stamped_extras:-}
  fi
fi
if [[ ${SETUP_VENV_FORCE:-0} != 1 ]] && [[ -n $installed ]] && covers "$installed" "$extras" \
  && "$venv/bin/python" -c 'import importlib.metadata as m; m.version("ortserve")' 2>/dev/null; then
  if [[ -n $unpin ]]; then # a release may have come out since: take it, within our range
    # shellcheck disable=SC2086 # UNPIN is a list of package names
    "$venv/bin/python" -m pip install -q -c "$constraints" --upgrade -e ".[${extras}]" $unpin
  fi
  exit 0 # installed already, from these very files
fi

rm -f "$stamp" # an install that fails half-way leaves no stamp behind
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$constraints" -e ".[${extras}]"
# pip keeps the extras installed before: with the same files, the venv now has both sets.
for extra in ${extras//,/ }; do
  covers "$installed" "$extra" || installed=${installed:+$installed,}$extra
done
printf '%s %s\n' "$digest" "$installed" >"$stamp"
