#!/usr/bin/env bash
# Triton's load generator, perf_analyzer (PyPI `perf-analyzer`), for `loadtest --client perf_analyzer` and its tests.
#  - The wheel holds one C++ binary built for glibc 2.38 (its tag is manylinux_2_38_x86_64; every release on PyPI,
#    2.58 to 2.60, has that tag). On such a machine it is pip-installed into the venv (the `perf` extra) and runs
#    natively.
#  - On an older glibc (Debian 12 has 2.36) pip will not install it into the venv, so the same wheel goes into
#    .deps/perf_analyzer/wheel (pip --target --platform), and Debian 13 (trixie)'s libc6, libstdc++6 and libgcc-s1
#    are fetched with a private apt configuration (the system's sources, lists and caches are not touched, as in
#    install_cpp_deps.sh) and unpacked into .deps/perf_analyzer/trixie; the binary then runs through trixie's
#    loader: .deps/perf_analyzer/bin/perf_analyzer is that command line.
# Idempotent: a second run finds the binary running (`.deps/perf_analyzer/bin/perf_analyzer --version`) and stops.
#   VENV     the virtual environment (default .venv)
#   PA_SPEC  the requirement (default perf-analyzer==2.60.0)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PA_SPEC=${PA_SPEC:-perf-analyzer==2.60.0}  # the `perf` extra's requirement, pinned to the release tested here
PREFIX=${PREFIX:-$ROOT/.deps/perf_analyzer}
WRAPPER="$PREFIX/bin/perf_analyzer"

# perf_analyzer has no --help (without arguments it prints its usage and exits 99); --version exits 0. A binary the
# loader cannot run prints "GLIBC_2.38 not found" instead.
works() { "$@" --version 2>&1 | grep -q "Perf Analyzer Version"; }

if [ -x "$WRAPPER" ] && works "$WRAPPER"; then
  echo "perf_analyzer already runs: $WRAPPER"
  exit 0
fi

# 1. A machine whose glibc takes the wheel: install it into the venv, where the binary runs as it is.
if "$PY" -m pip install --quiet "$PA_SPEC" 2>/dev/null; then
  BIN=$("$PY" -c "import perf_analyzer, pathlib; print(pathlib.Path(perf_analyzer.__file__).parent / 'bin/perf_analyzer')")
  if works "$BIN"; then
    mkdir -p "$PREFIX/bin"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$BIN" > "$WRAPPER"
    chmod +x "$WRAPPER"
    echo "perf_analyzer runs natively: $BIN"
    exit 0
  fi
fi

# 2. An older glibc: the same wheel beside the venv, and trixie's C runtime to run it with.
rm -rf "$PREFIX"
mkdir -p "$PREFIX/wheel" "$PREFIX/trixie" "$PREFIX/bin"
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --target "$PREFIX/wheel" "$PA_SPEC"
BIN="$PREFIX/wheel/perf_analyzer/bin/perf_analyzer"
[ -x "$BIN" ] || { echo "no perf_analyzer binary in the $PA_SPEC wheel" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MIRROR=${MIRROR:-$(
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '^deb ' | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; break}}'
  } | grep -E '/debian/?$' | head -n1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg   # bookworm's keyring already holds the trixie keys
[ -r "$KEYRING" ] || { echo "missing $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }
mkdir -p "$WORK"/{etc/preferences.d,lists/partial,cache/archives/partial,deb}
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" > "$WORK/etc/sources.list"
if [ "$(id -u)" = 0 ] && id -u _apt >/dev/null 2>&1; then
  chown _apt "$WORK" "$WORK/deb" "$WORK/lists/partial" "$WORK/cache/archives/partial"
fi
: > "$WORK/status"
APT_OPTS=(
  -o Dir::Etc::sourcelist="$WORK/etc/sources.list"
  -o Dir::Etc::sourceparts=-
  -o Dir::Etc::preferencesparts="$WORK/etc/preferences.d"
  -o Dir::State::Lists="$WORK/lists"
  -o Dir::State::status="$WORK/status"
  -o Dir::Cache="$WORK/cache"
  -o APT::Get::List-Cleanup=0
  -o Debug::NoLocking=1
)
apt-get "${APT_OPTS[@]}" update -qq
# The binary also needs libz, libssl3 and libcrypto: the system's own (built for an older glibc) load under the newer one.
PKGS=(libc6 libstdc++6 libgcc-s1)
( cd "$WORK/deb" && apt-get "${APT_OPTS[@]}" download "${PKGS[@]}" )
for deb in "$WORK"/deb/*.deb; do
  dpkg-deb -x "$deb" "$PREFIX/trixie"
  dpkg-deb -f "$deb" Package Version | awk "{print \$2}" | paste -sd= >> "$PREFIX/trixie/.versions"
done
LIBDIR="$PREFIX/trixie/usr/lib/x86_64-linux-gnu"
LOADER="$LIBDIR/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || LOADER="$PREFIX/trixie/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[ -e "$LOADER" ] || { echo "no ld-linux-x86-64.so.2 in trixie's libc6" >&2; exit 1; }
# Trixie's libs first, then the system's (libssl, libz); the binary's own path is argv[0] for its usage text.
cat > "$WRAPPER" <<EOF
#!/bin/sh
# perf_analyzer (glibc 2.38) run through Debian 13's loader and C runtime ($(paste -sd, "$PREFIX/trixie/.versions")).
exec "$LOADER" --library-path "$LIBDIR:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "$BIN" "\$@"
EOF
chmod +x "$WRAPPER"
if ! works "$WRAPPER"; then
  echo "perf_analyzer does not run through trixie's loader:" >&2
  "$WRAPPER" --version 2>&1 | tail -5 >&2
  exit 1
fi
echo "perf_analyzer runs through trixie's loader: $WRAPPER ($(tr '\n' ';' < "$PREFIX/trixie/.versions"))"
