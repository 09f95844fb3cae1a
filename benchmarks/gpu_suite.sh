#!/usr/bin/env bash
# The GPU suite in one call (benchmarks/gpu_suite.py says what it measures): at most 8 minutes on one
# H100/H200. Usage, from anywhere:
#   bash benchmarks/gpu_suite.sh [--out DIR] [--no-compile]   # on a GPU: DIR/gpu-<date>.md (default benchmarks/results)
#   bash benchmarks/gpu_suite.sh --dry-run [--out DIR]        # on a CPU, tiny sizes, under a minute
#
# The GPU machine has torch and transformers but no diffusers, and no network. Missing packages are installed
# from wheels in benchmarks/wheels/ (git-ignored), fetched here beforehand with `make gpu-wheels`:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d benchmarks/wheels diffusers==0.42.1
# and carried with the tree (device tool: carry=["benchmarks/wheels"]). There, with the results sent back:
#   bash benchmarks/gpu_suite.sh --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3)}

if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  shopt -s nullglob
  wheels=(benchmarks/wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "diffusers is not installed and benchmarks/wheels/ holds no wheels: run 'make gpu-wheels' first," \
         "or install diffusers" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/opencanvas-gpu-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The 8-minute promise: the suite skips sections past its 450 s budget; this stops anything that hangs.
exec timeout 480 "$PYTHON" benchmarks/gpu_suite.py "$@"
