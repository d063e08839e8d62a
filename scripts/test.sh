#!/usr/bin/env bash
# The test command: build the C++ runtime (release, and with ASan + UBSan) and its fuzz targets (clang), run pytest
# (which also drives the release perceiver_run tool), ctest on both builds, then fuzz the C++ readers of untrusted
# input for FUZZ_SECONDS each (default 60), build the docs site strictly, and check the packages (scripts/check_dist.sh).
# Run scripts/setup.sh first (it also installs the C++ dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}

mkdir -p build
for variant in release sanitize; do
  build="build/cpp-$variant"
  flags=(-DCMAKE_BUILD_TYPE=Release)
  [ "$variant" = sanitize ] && flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPERCEIVER_SANITIZE=ON)
  cmake -S cpp -B "$build" -DPython_EXECUTABLE="$PY" "${flags[@]}" > "$build.configure.log" 2>&1 \
    || { cat "$build.configure.log"; exit 1; }
  cmake --build "$build" -j "$(nproc)" > "$build.build.log" 2>&1 || { cat "$build.build.log"; exit 1; }
done
cmake -S cpp/fuzz -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ > build/fuzz.configure.log 2>&1 \
  || { cat build/fuzz.configure.log; exit 1; }
cmake --build build/fuzz -j "$(nproc)" > build/fuzz.build.log 2>&1 || { cat build/fuzz.build.log; exit 1; }

PERCEIVER_RUN="$PWD/build/cpp-release/perceiver_run" "$PY" -m pytest -q "$@"

for variant in release sanitize; do
  echo "== ctest ($variant)"
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "build/cpp-$variant" --output-on-failure
done

# Any crash, uncaught exception, leak, sanitizer report, single allocation over 64 MB or input slower than 10 s is a
# finding: the script fails and libFuzzer leaves the input in build/fuzz/findings/. Once fixed, it goes into
# cpp/fuzz/regressions/<target>/, which ctest replays on both builds.
mkdir -p build/fuzz/findings
for target in npy manifest; do
  echo "== fuzz $target (${FUZZ_SECONDS} s)"
  mkdir -p "build/fuzz/corpus-$target"
  "build/fuzz/${target}_fuzz" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 \
    -dict="cpp/fuzz/$target.dict" -artifact_prefix="build/fuzz/findings/$target-" -print_final_stats=1 \
    "build/fuzz/corpus-$target" "cpp/fuzz/corpus/$target" "cpp/fuzz/regressions/$target" > "build/fuzz/$target.log" 2>&1 \
    || { tail -n 60 "build/fuzz/$target.log"; echo "fuzz $target: FINDING, input in build/fuzz/findings/"; exit 1; }
  grep -E "^(Done|stat::(average_exec_per_sec|new_units_added|peak_rss_mb))" "build/fuzz/$target.log"
done

# The documentation site: a broken link or anchor, or a page missing from the nav, fails (mkdocs.yml: validation).
echo "== docs: mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict -q -d build/site

# The packages as users get them: sdist and wheel, `twine check`, each installed into a fresh environment outside
# the checkout, the main job run from there.
echo "== packages"
bash scripts/check_dist.sh
