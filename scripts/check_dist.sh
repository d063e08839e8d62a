#!/usr/bin/env bash
# The package as users get it: build the sdist (and the wheel from it), `twine check` both, then install each into
# a fresh virtual environment outside the checkout and run the main job there: --version, onnx, verify, inspect.
#   PY          the Python that builds (default .venv/bin/python, which has `build` and `twine`: the test extra)
#   TORCH_SPEC  torch for the fresh environments (default torch==2.13.0, the local CPU build, as scripts/setup.sh)
#   ORT_EXTRA   cpu (default) or gpu
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
PY=${PY:-$PWD/.venv/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ORT_EXTRA=${ORT_EXTRA:-cpu}
dist=build/dist
rm -rf "$dist"
mkdir -p build
"$PY" -m build --outdir "$dist" . > build/dist.log 2>&1 || { cat build/dist.log; exit 1; }
"$PY" -m twine check --strict "$dist"/*
version=$("$PY" -c "import perceiver_export; print(perceiver_export.__version__)")
work=$(mktemp -d /tmp/perceiver-dist.XXXXXX)
trap 'rm -rf "$work"' EXIT

for kind in wheel sdist; do
  if [ "$kind" = wheel ]; then pkg=$(ls "$checkout/$dist"/*.whl); else pkg=$(ls "$checkout/$dist"/*.tar.gz); fi
  echo "== $kind: $(basename "$pkg") into a fresh environment"
  venv="$work/$kind-venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v WARNING || true
  "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC" 2>&1 | grep -v WARNING || true
  "$venv/bin/python" -m pip install --quiet "$pkg[$ORT_EXTRA]" 2>&1 | grep -v WARNING || true
  cd "$work"
  # Nothing of the checkout on sys.path: the package must come from the environment.
  CHECKOUT=$checkout VENV=$venv "$venv/bin/python" - <<'PY'
import os, sys
import perceiver_export
checkout, venv = os.path.realpath(os.environ["CHECKOUT"]), os.path.realpath(os.environ["VENV"])
on_path = [p for p in sys.path if p and os.path.realpath(p).startswith(checkout)]
assert not on_path, f"the checkout is on sys.path: {on_path}"
assert os.path.realpath(perceiver_export.__file__).startswith(venv), perceiver_export.__file__
print(f"   perceiver_export from {os.path.dirname(perceiver_export.__file__)}")
PY
  got=$("$venv/bin/perceiver-export" --version)
  [ "$got" = "perceiver-export $version" ] || { echo "--version printed '$got'"; exit 1; }
  "$venv/bin/perceiver-export" onnx --out "$work/$kind-artifact" > "$work/$kind-onnx.log" 2>&1 \
    || { cat "$work/$kind-onnx.log"; exit 1; }
  tail -1 "$work/$kind-onnx.log"
  "$venv/bin/python" -m perceiver_export verify "$work/$kind-artifact" --no-write > "$work/$kind-verify.log" 2>&1 \
    || { cat "$work/$kind-verify.log"; exit 1; }
  grep -q "parity PASSED" "$work/$kind-verify.log" || { cat "$work/$kind-verify.log"; exit 1; }
  "$venv/bin/python" -m perceiver_export inspect "$work/$kind-artifact" > "$work/$kind-inspect.log" 2>&1 \
    || { cat "$work/$kind-inspect.log"; exit 1; }
  grep -q "perceiver-export $version" "$work/$kind-inspect.log" || { cat "$work/$kind-inspect.log"; exit 1; }
  # The pages help texts point at ship with the package.
  "$venv/bin/python" -m perceiver_export docs parity | grep -q "^# " || { echo "docs parity printed no page"; exit 1; }
  echo "   $kind: --version, onnx, verify (parity PASSED), inspect, docs: ok"
  cd "$checkout"
done
