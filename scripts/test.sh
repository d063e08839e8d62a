#!/usr/bin/env bash
# The test command: pytest, then the C++ runtime built twice (release, and with ASan + UBSan) and tested by ctest.
# Run scripts/setup.sh first (it also installs the C++ dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}

"$PY" -m pytest -q "$@"

mkdir -p build
for variant in release sanitize; do
  build="build/cpp-$variant"
  flags=(-DCMAKE_BUILD_TYPE=Release)
  [ "$variant" = sanitize ] && flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPERCEIVER_SANITIZE=ON)
  cmake -S cpp -B "$build" -DPython_EXECUTABLE="$PY" "${flags[@]}" > "$build.configure.log" 2>&1 \
    || { cat "$build.configure.log"; exit 1; }
  cmake --build "$build" -j "$(nproc)" > "$build.build.log" 2>&1 || { cat "$build.build.log"; exit 1; }
  echo "== ctest ($variant)"
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "$build" --output-on-failure
done
