#!/usr/bin/env bash
# Build helper for docker/Dockerfile.jetson: the L4T-specific steps. Runs as root inside an NVIDIA L4T base image
# (l4t-jetpack). The steps that do not depend on L4T (venv, vqz-edge install, user, folders, entrypoint) are
# docker/image-setup.sh's, shared with the x86 image that CI builds and runs.
#
#   jetson-setup.sh check-tensorrt VERSION  fail unless the base image ships TensorRT VERSION (e.g. 10.3.0)
#   jetson-setup.sh python                  the Python interpreter vqz-edge runs on (>= 3.10)
#   jetson-setup.sh build-deps              compilers, headers and venv support (build stage only)
#   jetson-setup.sh venv DIR                a venv at DIR (image-setup.sh venv) in which `import tensorrt` finds the
#                                           base image's TensorRT
#
# JetPack 6 (L4T r36, Ubuntu 22.04) has Python 3.10 and JetPack's TensorRT bindings for it (python3-libnvinfer):
# the venv links that package in. JetPack 5 (L4T r35, Ubuntu 20.04) has Python 3.8, older than vqz-edge
# supports, and JetPack ships TensorRT bindings for 3.8 only: Python 3.10 comes from the deadsnakes PPA and the
# bindings are compiled for it from NVIDIA's TensorRT OSS python/ sources (github.com/NVIDIA/TensorRT, branch
# release/<major.minor>, python/README.md and python/build.sh) against the base image's own TensorRT headers and
# libraries -- the TensorRT libraries stay JetPack's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)  # image-setup.sh lies beside this script
MULTIARCH=aarch64-linux-gnu
TRT_HEADER=${TRT_HEADER:-/usr/include/${MULTIARCH}/NvInferVersion.h}  # overridable for tests
PYBIND11_REF=v2.6.2  # the version NVIDIA's python/README.md names for the 8.x bindings

log() { echo "jetson-setup: $*" >&2; }
die() { echo "jetson-setup: ERROR: $*" >&2; exit 1; }

apt_install() {
  apt-get update
  apt-get install -y --no-install-recommends "$@"
  rm -rf /var/lib/apt/lists/*
}

system_python_ok() {
  command -v python3 >/dev/null 2>&1 \
    && python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null
}

python_bin() {
  if system_python_ok; then command -v python3; else echo /usr/bin/python3.10; fi
}

base_tensorrt_version() {
  [[ -f $TRT_HEADER ]] || return 1
  local major minor patch
  major=$(awk '/^#define NV_TENSORRT_MAJOR /{print $3}' "$TRT_HEADER")
  minor=$(awk '/^#define NV_TENSORRT_MINOR /{print $3}' "$TRT_HEADER")
  patch=$(awk '/^#define NV_TENSORRT_PATCH /{print $3}' "$TRT_HEADER")
  if [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ && $patch =~ ^[0-9]+$ ]]; then
    echo "${major}.${minor}.${patch}"
    return 0
  fi
  # newer headers define the numbers through other macros: ask dpkg for libnvinfer's version instead
  local pkg
  pkg=$(dpkg-query -W -f='${Version}\n' 'libnvinfer[0-9]*' 2>/dev/null | head -n 1)  # e.g. 10.3.0.30-1+cuda12.5
  [[ $pkg =~ ^([0-9]+\.[0-9]+\.[0-9]+) ]] || return 1
  echo "${BASH_REMATCH[1]}"
}

cmd_check_tensorrt() {
  local want=${1:?usage: check-tensorrt VERSION} have
  have=$(base_tensorrt_version) || die "no TensorRT in the base image ($TRT_HEADER missing): use an l4t-jetpack image (docker/docker-bake.json)"
  [[ $have == "$want" ]] || die "the base image ships TensorRT $have but the build declares TENSORRT=$want: pick the BASE_IMAGE/TENSORRT pair from docker/docker-bake.json"
  log "base image TensorRT $have (matches TENSORRT=$want)"
}

cmd_python() {
  if system_python_ok; then
    log "system $(python3 --version) is new enough"
    return 0
  fi
  log "system Python is older than 3.10 (JetPack 5): installing Python 3.10 from the deadsnakes PPA"
  apt_install software-properties-common gpg-agent
  add-apt-repository -y ppa:deadsnakes/ppa
  apt_install python3.10
  /usr/bin/python3.10 --version
}

cmd_build_deps() {
  local pkgs=(build-essential cmake git ca-certificates)
  if system_python_ok; then pkgs+=(python3-dev python3-venv); else pkgs+=(python3.10-dev python3.10-venv); fi
  apt_install "${pkgs[@]}"
}

link_system_bindings() {
  # JetPack's python3-libnvinfer for the system Python: link only the tensorrt package (and its metadata) into
  # the venv instead of exposing all of dist-packages.
  local venv=$1 site pkgdir
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  pkgdir=$(python3 - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("tensorrt")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")
PY
)
  [[ -n $pkgdir && -d $pkgdir ]] || return 1
  local parent
  parent=$(dirname "$pkgdir")
  shopt -s nullglob
  local entry
  for entry in "$parent"/tensorrt "$parent"/tensorrt-*.dist-info "$parent"/tensorrt-*.egg-info; do
    ln -s "$entry" "$site/$(basename "$entry")"
    log "linked $entry into the venv"
  done
  shopt -u nullglob
}

build_bindings() {
  # TensorRT OSS python/build.sh for Python 3.10 against the base image's TensorRT (JetPack 5).
  local venv=$1 trt ref work=/tmp/trt-bindings
  trt=$(base_tensorrt_version) || die "no TensorRT headers in the base image ($TRT_HEADER)"
  ref=${TENSORRT_OSS_REF:-release/${trt%.*}}
  log "building TensorRT $trt Python 3.10 bindings from NVIDIA/TensorRT@$ref (python/) with pybind11 $PYBIND11_REF"
  rm -rf "$work" && mkdir -p "$work/ext/python3.10/include/${MULTIARCH}"
  git clone --depth 1 --branch "$ref" https://github.com/NVIDIA/TensorRT "$work/TensorRT"
  git clone --depth 1 --branch "$PYBIND11_REF" https://github.com/pybind/pybind11 "$work/ext/pybind11"
  cp -r /usr/include/python3.10/. "$work/ext/python3.10/include/"
  cp -r "/usr/include/${MULTIARCH}/python3.10" "$work/ext/python3.10/include/${MULTIARCH}/"
  # Compile against the headers of the TensorRT that will run (the base image's), not the branch's copy.
  rm -rf "$work/TensorRT/include"
  ln -s "/usr/include/${MULTIARCH}" "$work/TensorRT/include"
  "$venv/bin/python" -m pip install --no-cache-dir "setuptools<70" wheel
  (
    cd "$work/TensorRT/python"
    PATH="$venv/bin:$PATH" PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=10 TARGET_ARCHITECTURE=aarch64 \
      TRT_OSSPATH="$work/TensorRT" EXT_PATH="$work/ext" CUDA_ROOT=/usr/local/cuda bash ./build.sh
  )
  local wheel
  wheel=$(find "$work/TensorRT/python/build/dist" -name 'tensorrt-*.whl' | head -n 1)
  [[ -n $wheel ]] || die "the TensorRT bindings build produced no wheel"
  "$venv/bin/python" -m pip install --no-cache-dir "$wheel"
  rm -rf "$work"
}

cmd_venv() {
  local venv=${1:?usage: venv DIR}
  bash "$HERE/image-setup.sh" venv "$venv" "$(python_bin)"  # the step shared with the x86 image
  "$venv/bin/python" -m pip install --no-cache-dir --upgrade pip
  if system_python_ok && link_system_bindings "$venv"; then
    log "TensorRT bindings: JetPack's python3-libnvinfer (system Python $(python3 --version | cut -d' ' -f2))"
  elif system_python_ok; then
    die "the base image has Python >= 3.10 but no TensorRT Python bindings (python3-libnvinfer): use an l4t-jetpack base image"
  else
    build_bindings "$venv"
  fi
  # Importing tensorrt needs the Jetson driver libraries that the NVIDIA runtime mounts at start, so the build
  # checks that the package is there; the entrypoint checks that it imports on the device.
  "$venv/bin/python" - <<'PY'
import importlib.util, sys
spec = importlib.util.find_spec("tensorrt")
if spec is None:
    sys.exit("jetson-setup: ERROR: tensorrt is not importable from the venv")
print(f"jetson-setup: tensorrt package at {spec.origin}", file=sys.stderr)
PY
}

case ${1:-} in
  check-tensorrt) shift; cmd_check_tensorrt "$@" ;;
  python) cmd_python ;;
  build-deps) cmd_build_deps ;;
  venv) shift; cmd_venv "$@" ;;
  *) die "usage: jetson-setup.sh check-tensorrt VERSION | python | build-deps | venv DIR" ;;
esac
