#!/usr/bin/env bash
# GPU check: extraction and patching on the GPU (--device cuda, bfloat16, the default model) against a float32
# CPU run of the same commands, within the dtype's tolerance; prompts/s and patched evaluations/s to JSON.
#
#   benchmarks/device_check.sh [--model M] [--n-prompts N] [--out FILE] ...   (options of device_check.py)
#
# Nothing depends on a GPU: without CUDA this prints "no GPU" and exits 0. DEVICE_CHECK_ON_CPU=1 runs the same
# comparison with the "device" on the CPU (a dry run of the script, e.g. with --dtype bfloat16 --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${DEVICE_CHECK_ON_CPU:-0}" != "1" ]; then
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check: no GPU (torch.cuda.is_available() is False, or torch is missing); nothing to check, exit 0"
    exit 0
  fi
fi
exec "$PY" benchmarks/device_check.py "$@"
