#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch, ONNX, ONNX Runtime and this package.
#   TORCH_SPEC   the torch requirement (default torch==2.13.0; on a CPU-only CI box that is the CPU build)
#   ORT_EXTRA    cpu (onnxruntime, default) or gpu (onnxruntime-gpu)
#   EXTRAS       further extras (default rtx: TensorRT for RTX, which builds engines without a GPU)
#   VENV         where to create the environment (default .venv)
#   WITH_CPP     1 (default): also install the C++ runtime's dependencies (scripts/install_cpp_deps.sh, uses apt)
#   WITH_TRITON  1: also install a real Triton server with its Python backend into .deps/triton
#                (scripts/install_triton.sh; tests/test_triton_server.py runs it). CI sets it (.ci/run).
# The docs site's Mermaid comes from npm (package.json, package-lock.json: `npm ci` into node_modules/), so the built
# site loads nothing from another host; npm itself from Debian where it is missing.
# On Linux x86_64 it also installs Triton's perf_analyzer (scripts/install_perf_analyzer.sh; the tests drive `serve` with it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ORT_EXTRA=${ORT_EXTRA:-cpu}
EXTRAS=${EXTRAS-rtx}
WITH_CPP=${WITH_CPP:-1}
WITH_TRITON=${WITH_TRITON:-0}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
# torch first and explicitly, so nothing else pulls a different (multi-GB) build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet -e ".[$ORT_EXTRA,serve,test${EXTRAS:+,$EXTRAS}]"
"$PY" - <<'PY'
import torch, onnx, onnxruntime, onnxscript
from perceiver_export.engines.flavor import installed_flavors
print(f"ready: torch {torch.__version__}, onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, "
      f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())}), "
      f"TensorRT flavors: {', '.join(installed_flavors()) or 'none'}")
PY
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
if [ "$(uname -s)/$(uname -m)" = Linux/x86_64 ]; then
  VENV="$VENV" bash scripts/install_perf_analyzer.sh
fi
if [ "$WITH_CPP" = 1 ]; then
  bash scripts/install_cpp_deps.sh
fi
if [ "$WITH_TRITON" = 1 ]; then
  VENV="$VENV" bash scripts/install_triton.sh
fi
