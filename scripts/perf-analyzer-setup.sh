#!/usr/bin/env bash
# Installs Triton's load generator, perf_analyzer, in a form that runs on Debian 12 (glibc 2.36),
# and prints the path of a wrapper that runs it.
#
# (The workplace keeps the same recipe in ../shared/tools; this copy lets a checkout anywhere, CI
# included, install it: tests/integration/test_perf_analyzer_http.py and bench/ call it.)
#   scripts/perf-analyzer-setup.sh [DIR]      # default DIR: ~/.cache/ortserve-perf-analyzer
#   "$(scripts/perf-analyzer-setup.sh)" -m MODEL -u 127.0.0.1:8001 -i grpc ...
#
# Why this recipe: perf_analyzer releases from 2.52 on need glibc 2.38, and the PyPI package
# `perf-analyzer` resolves to a placeholder here. tritonclient 2.51.0's manylinux1 wheel still
# bundles bin/perf_analyzer built against glibc 2.34; it needs libb64 (Debian: libb64-0d) and
# libcudart.so.12 (PyPI: nvidia-cuda-runtime-cu12; no GPU is needed to run on CPU).
# Idempotent: a second call only prints the wrapper path.
set -euo pipefail
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ortserve-perf-analyzer}
wrapper=$dir/perf_analyzer
if [[ -x $wrapper ]] && "$wrapper" --version >/dev/null 2>&1; then
  echo "$wrapper"
  exit 0
fi
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && apt-get install -y -qq libb64-0d) >&2
  else
    echo "perf-analyzer-setup: needs the Debian package libb64-0d (run as root, or install it)" >&2
    exit 1
  fi
fi
mkdir -p "$dir"
python3 -m venv "$dir/venv" >&2
"$dir/venv/bin/pip" install -q "tritonclient[grpc]==2.51.0" nvidia-cuda-runtime-cu12 >&2
site=$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat >"$wrapper" <<EOF
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$site/nvidia/cuda_runtime/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$dir/venv/bin/perf_analyzer" "\$@"
EOF
chmod +x "$wrapper"
"$wrapper" --version >&2
echo "$wrapper"
