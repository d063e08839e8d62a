#!/usr/bin/env bash
# A real Triton Inference Server for the tests (tests/test_triton_server.py) and `scripts/serve_vs_triton.py`: the
# `tritonserver` binary and Python backend that PyPI's nvidia-pytriton bundles, laid out in .deps/triton.
#  - .deps/triton/wheel        the nvidia-pytriton wheel (pip --target --no-deps: only its binaries are used)
#  - .deps/triton/backends     a backend directory holding python/ (libtriton_python.so, triton_python_backend_utils.py
#                              and the stub for the stub environment's Python version)
#  - .deps/triton/stub-venv    the stub's own environment: numpy < 2 (with numpy 2 the stub hands execute() corrupted
#                              tensors: an FP32 [1, 2, 3.5] arrives as [1, 1, 1]), this package and what the
#                              onnxruntime runner imports; no torch. The package is installed from the checkout
#                              EDITABLE: the stub's interpreter runs in this venv (see the wrapper), so its site.py
#                              runs the editable install's .pth and the stub serves the checkout's current code; a
#                              copy would go stale with every change until this script ran again.
#  - .deps/triton/bin/tritonserver  the command line: sets LD_LIBRARY_PATH to the stub Python's shared libpython
#                              (the stub links libpython3.X.so.1.0) and the wheel's nvidia_pytriton.libs, puts
#                              stub-venv/bin first on PATH (the stub's interpreter then runs in that venv), passes
#                              --backend-directory, then runs the bundled binary with the caller's arguments.
#  - .deps/triton/env          shell lines naming the stub's site-packages (TRITON_STUB_SITE_PACKAGES) and Python.
# The wheel has no ONNX Runtime or TensorRT backend: repositories for those platforms parse but do not load here.
# Idempotent: a second run finds the same stamp and `tritonserver --help` working, and stops.
#   VENV           the project's virtual environment, whose pip and base Python are used (default .venv)
#   TRITON_SPEC    the requirement (default nvidia-pytriton==0.7.0: Triton 2.51.0, the release tested here)
#   STUB_PYTHON    the interpreter the stub embeds and its environment is made from: a shared build (Py_ENABLE_SHARED)
#                  of a version the wheel has a stub for, 3.8 to 3.13 (default /usr/bin/python3.11 with Debian's
#                  libpython3.11, apt-installed if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
TRITON_SPEC=${TRITON_SPEC:-nvidia-pytriton==0.7.0}
PREFIX=${PREFIX:-$ROOT/.deps/triton}
WRAPPER="$PREFIX/bin/tritonserver"
STUB_VENV="$PREFIX/stub-venv"
# What the stub environment holds: numpy < 2, and the runtime dependencies of the onnxruntime runner (the package
# itself goes in without its declared dependencies, which include torch).
STUB_REQS=("numpy<2" "onnxruntime>=1.18" "onnx>=1.17" "ml_dtypes>=0.4" "safetensors>=0.4" "jsonschema>=4.18")

# The stamp: the wheel's requirement, the stub's Python and requirements, the checkout, and its declared metadata.
stamp() {
  { echo "$TRITON_SPEC ${STUB_PYTHON:-default} $ROOT"; printf '%s\n' "${STUB_REQS[@]}"; cat pyproject.toml; } \
    | sha256sum | cut -d' ' -f1
}
# `tritonserver --help` prints its usage and exits 1; a binary the loader cannot run prints no usage.
works() { local out; out=$("$WRAPPER" --help 2>&1 || true); grep -q -- "--model-repository" <<<"$out"; }

if [ -x "$WRAPPER" ] && [ -x "$STUB_VENV/bin/python" ] && [ -f "$PREFIX/.stamp" ] && [ "$(cat "$PREFIX/.stamp")" = "$(stamp)" ] && works; then
  echo "tritonserver already runs: $WRAPPER"
  exit 0
fi

# 1. The wheel, beside the venv: its Python package (pytriton) is not used, so none of its dependencies either.
if [ ! -x "$PREFIX/wheel/pytriton/tritonserver/bin/tritonserver" ]; then
  rm -rf "$PREFIX/wheel"
  "$PY" -m pip install --quiet --no-deps --only-binary=:all: --target "$PREFIX/wheel" "$TRITON_SPEC"
fi
TS="$PREFIX/wheel/pytriton/tritonserver"
LIBS="$PREFIX/wheel/nvidia_pytriton.libs"
[ -x "$TS/bin/tritonserver" ] || { echo "no tritonserver binary in the $TRITON_SPEC wheel" >&2; exit 1; }

# 2. The Python the stub embeds: a shared build (the stub links libpython3.X.so.1.0), of a version the wheel has a stub for.
shared_libdir() {
  "$1" -c "import sysconfig; s = sysconfig.get_config_var; print(s('LIBDIR') if s('Py_ENABLE_SHARED') else '')" 2>/dev/null
}
# Debian's python3.11 by default: a system Python that apt installs on a clean machine, shared, with no numpy of its own.
if [ -z "${STUB_PYTHON:-}" ]; then
  if [ ! -x /usr/bin/python3.11 ] || [ ! -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] \
      || ! /usr/bin/python3.11 -c "import venv, ensurepip" 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv libpython3.11 >/dev/null
  fi
  STUB_PYTHON=/usr/bin/python3.11
fi
PYVER=$("$STUB_PYTHON" -c "import sys; print('%d.%d' % sys.version_info[:2])")
PYLIBDIR=$(shared_libdir "$STUB_PYTHON")
[ -n "$PYLIBDIR" ] || { echo "$STUB_PYTHON is not a shared build (Py_ENABLE_SHARED=0): set STUB_PYTHON" >&2; exit 1; }
STUB="$TS/python_backend_stubs/$PYVER/triton_python_backend_stub"
[ -x "$STUB" ] || { echo "the wheel has no Python backend stub for Python $PYVER ($(ls "$TS/python_backend_stubs"))" >&2; exit 1; }

# 3. The backend directory: the Python backend with the stub beside it, where Triton looks for it.
rm -rf "$PREFIX/backends"
mkdir -p "$PREFIX/backends/python" "$PREFIX/bin"
cp "$TS/backends/python/libtriton_python.so" "$TS/backends/python/triton_python_backend_utils.py" "$PREFIX/backends/python/"
cp "$STUB" "$PREFIX/backends/python/"
# Both copies find nvidia_pytriton.libs through RPATHs relative to the wheel; LD_LIBRARY_PATH (the wrapper) covers them here.

# 4. The stub's environment.
if [ ! -x "$STUB_VENV/bin/python" ] || [ "$("$STUB_VENV/bin/python" -c "import sys; print('%d.%d' % sys.version_info[:2])")" != "$PYVER" ]; then
  rm -rf "$STUB_VENV"
  "$STUB_PYTHON" -m venv "$STUB_VENV"
fi
"$STUB_VENV/bin/python" -m pip install --quiet --upgrade pip
"$STUB_VENV/bin/python" -m pip install --quiet "${STUB_REQS[@]}"
"$STUB_VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall -e "$ROOT"
SITE=$("$STUB_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The runner must import from there with numpy < 2, as the stub will, and from this checkout.
(cd / && "$STUB_VENV/bin/python" - <<'PY')
import numpy, perceiver_export.runtime as rt
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
assert "torch" not in __import__("sys").modules
rt.runner_class("onnxruntime")
print(f"stub environment: numpy {numpy.__version__}, perceiver_export from {rt.__file__}")
PY

cat > "$WRAPPER" <<EOF
#!/bin/sh
# Triton $(basename "$TS") from $TRITON_SPEC; the Python backend's stub embeds $STUB_PYTHON ($PYVER, $PYLIBDIR).
LD_LIBRARY_PATH="$PYLIBDIR:$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# The stub embeds Python without naming an executable, so Python looks its name (python3) up on PATH: the stub
# environment's bin first makes it find stub-venv/pyvenv.cfg, and that environment's site-packages (numpy < 2) are
# on the stub's sys.path from the start (triton_python_backend_utils imports numpy before model.py runs).
PATH="$STUB_VENV/bin:\$PATH"
export LD_LIBRARY_PATH PATH
exec "$TS/bin/tritonserver" --backend-directory="$PREFIX/backends" "\$@"
EOF
chmod +x "$WRAPPER"
cat > "$PREFIX/env" <<EOF
TRITON_SERVER=$WRAPPER
TRITON_STUB_PYTHON=$STUB_VENV/bin/python
TRITON_STUB_SITE_PACKAGES=$SITE
EOF
if ! works; then
  echo "tritonserver does not run:" >&2
  "$WRAPPER" --help 2>&1 | tail -5 >&2
  exit 1
fi
stamp > "$PREFIX/.stamp"
echo "tritonserver runs: $WRAPPER (Python backend stub for $PYVER; stub site-packages $SITE)"
