#!/usr/bin/env bash
# The test command: build the C++ runtime (release, and with ASan + UBSan), run pytest (which also drives the
# release perceiver_run tool through its property tests), then ctest on both builds.
# Run scripts/setup.sh first (it also installs the C++ dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}

mkdir -p build
for variant in release sanitize; do
  build="build/cpp-$variant"
  flags=(-DCMAKE_BUILD_TYPE=Release)
  [ "$variant" = sanitize ] && flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPERCEIVER_SANITIZE=ON)
  cmake -S cpp -B "$build" -DPython_EXECUTABLE="$PY" "${flags[@]}" > "$build.configure.log" 2>&1 \
    || { cat "$build.configure.log"; exit 1; }
  cmake --build "$build" -j "$(nproc)" > "$build.build.log" 2>&1 || { cat "$build.build.log"; exit 1; }
done

PERCEIVER_RUN="$PWD/build/cpp-release/perceiver_run" "$PY" -m pytest -q "$@"

for variant in release sanitize; do
  echo "== ctest ($variant)"
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "build/cpp-$variant" --output-on-failure
done
