#!/usr/bin/env bash
# benchmarks/gpu_check.py with the repository's .venv where there is one, else python3 (a GPU
# machine's own PyTorch; the package then comes from this checkout via PYTHONPATH).
# Usage: benchmarks/gpu_check.sh [WORKDIR] [--overlay EXTRA.yaml ...] [--timeout 540] ...
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="$repo/.venv/bin/python"
[ -x "$python" ] || python=python3
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
