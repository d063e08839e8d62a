#!/usr/bin/env bash
# Dependencies of the C++ runtime (cpp/):
#  - nlohmann-json, OpenSSL's libcrypto headers (sha256), cmake, and clang with libFuzzer (the fuzz targets in
#    cpp/fuzz) from the machine's own Debian suites;
#  - ONNX Runtime's C/C++ headers from Debian's libonnxruntime-dev. Debian 13 (trixie) has it; on
#    Debian 12 it is fetched from trixie with a private apt configuration (the system's sources,
#    lists and caches are not touched) and only the headers are unpacked into .deps/onnxruntime.
# The shared library itself comes from the onnxruntime Python wheel (see cpp/CMakeLists.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if ! dpkg -s nlohmann-json3-dev libssl-dev cmake g++ clang >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nlohmann-json3-dev libssl-dev cmake g++ clang >/dev/null
fi
# libFuzzer and clang's sanitizer runtimes are in libclang-rt-N-dev from Debian 12 on (before, in clang's own packages).
CLANG_RT="libclang-rt-$(clang++ -dumpversion | cut -d. -f1)-dev"
if ! dpkg -s "$CLANG_RT" >/dev/null 2>&1 && apt-cache show "$CLANG_RT" >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$CLANG_RT" >/dev/null
fi

PREFIX=${PREFIX:-$ROOT/.deps/onnxruntime}
if [ -f "$PREFIX/include/onnxruntime_cxx_api.h" ]; then
  echo "ONNX Runtime headers already in $PREFIX/include ($(cat "$PREFIX/include/.libonnxruntime-dev.version" 2>/dev/null))"
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Reuse the mirror host of the system's Debian source (deb822 or one-line format).
MIRROR=${MIRROR:-$(
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '^deb ' | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; break}}'
  } | grep -E '/debian/?$' | head -n1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg   # bookworm's keyring already holds the trixie keys
[ -r "$KEYRING" ] || { echo "missing $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }

mkdir -p "$WORK"/{etc/preferences.d,lists/partial,cache/archives/partial,deb,x}
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" > "$WORK/etc/sources.list"
# let apt's unprivileged '_apt' download user write into the private dirs (avoids the sandbox warning)
if [ "$(id -u)" = 0 ] && id -u _apt >/dev/null 2>&1; then
  chown _apt "$WORK" "$WORK/deb" "$WORK/lists/partial" "$WORK/cache/archives/partial"
fi
: > "$WORK/status"   # empty dpkg status: solver does not see (or care about) installed pkgs

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
VER=$(apt-cache "${APT_OPTS[@]}" policy libonnxruntime-dev | awk '/Candidate:/{print $2}')
echo "trixie libonnxruntime-dev version: $VER"
( cd "$WORK/deb" && apt-get "${APT_OPTS[@]}" download libonnxruntime-dev )
DEB=$(ls "$WORK"/deb/libonnxruntime-dev_*.deb)
dpkg-deb -x "$DEB" "$WORK/x"
INCDIR=$(dirname "$(find "$WORK/x" -name onnxruntime_c_api.h | head -n1)")
echo "headers found in: ${INCDIR#$WORK/x}"
mkdir -p "$PREFIX/include"
cp -a "$INCDIR"/. "$PREFIX/include/"
grep -m1 -E '#define ORT_API_VERSION' "$PREFIX/include/onnxruntime_c_api.h"
echo "$VER" > "$PREFIX/include/.libonnxruntime-dev.version"
echo "installed headers into $PREFIX/include"
