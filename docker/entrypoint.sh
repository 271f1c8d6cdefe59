#!/usr/bin/env bash
# vqz-edge container entrypoint (docker/Dockerfile.jetson). See docker/README.md.
#
#   serve            (default) check the device, install the mounted bundle, then stay up for `docker exec`
#   install          check the device and install the mounted bundle, then exit
#   run IMAGE...     install if needed, then `vqz-edge run` the current release on the images
#   bench [ARGS]     install if needed, then `vqz-edge bench` the current release (ARGS go to bench)
#   status [ARGS]    `vqz-edge status` of the install root (read-only)
#   check            only the checks: bundle, key, GPU, TensorRT
#   healthcheck      exit 0 when the current release is healthy (the image's HEALTHCHECK)
#   anything else    executed as given (e.g. `bash`, `vqz-edge targets`)
#
# Environment (defaults set by the image):
#   VQZ_ROOT            install root on the volume (/var/lib/vqz-edge). Releases live in
#                       releases/<model>-<target>-v<N>-<manifest digest>/builds/<backend>-l4t<L4T>/ with the engine
#                       and the TensorRT timing cache, so a restart with the same bundle rebuilds nothing.
#   VQZ_BUNDLE          the bundle file; default: the only *.tar in VQZ_BUNDLE_DIR (/bundle)
#   VQZ_KEY             the signer's public key (/keys/fleet.pub)
#   VQZ_ALLOW_UNSIGNED  1: install without verifying a signature (printed loudly by vqz-edge)
#   VQZ_BACKEND         tensorrt (the image's default) or onnxruntime (CPU; skips the GPU/TensorRT checks)
#   VQZ_INSTALL_ARGS    extra arguments for `vqz-edge install` (e.g. "--keep 2 --device-target orin-nx-16gb")
#
# Exit codes: 64 usage, 66 bundle or key missing, 69 no GPU visible, 71 TensorRT missing; otherwise vqz-edge's.
set -euo pipefail

VQZ_ROOT=${VQZ_ROOT:-/var/lib/vqz-edge}
VQZ_BUNDLE_DIR=${VQZ_BUNDLE_DIR:-/bundle}
VQZ_KEY=${VQZ_KEY:-/keys/fleet.pub}
VQZ_BACKEND=${VQZ_BACKEND:-tensorrt}
VQZ_EDGE=${VQZ_EDGE:-vqz-edge}
PYTHON=${VQZ_PYTHON:-python3}

say() { echo "[vqz-entrypoint] $*" >&2; }
fail() {
  local code=$1
  shift
  echo "[vqz-entrypoint] ERROR: $*" >&2
  exit "$code"
}

find_bundle() {
  if [[ -n ${VQZ_BUNDLE:-} ]]; then
    [[ -f $VQZ_BUNDLE ]] || fail 66 "no bundle at VQZ_BUNDLE=$VQZ_BUNDLE: mount it, e.g. -v \$PWD/b.tar:$VQZ_BUNDLE:ro"
    echo "$VQZ_BUNDLE"
    return
  fi
  local found=()
  if [[ -d $VQZ_BUNDLE_DIR ]]; then
    while IFS= read -r -d '' f; do found+=("$f"); done < <(find "$VQZ_BUNDLE_DIR" -maxdepth 1 -name '*.tar' -print0)
  fi
  case ${#found[@]} in
    1) echo "${found[0]}" ;;
    0) fail 66 "no bundle mounted: found no *.tar in $VQZ_BUNDLE_DIR. Mount one read-only, e.g." \
         "-v \$PWD/bundle.tar:$VQZ_BUNDLE_DIR/bundle.tar:ro (make it on the build host: vqz-edge bundle ...)" ;;
    *) fail 66 "${#found[@]} bundles in $VQZ_BUNDLE_DIR (${found[*]}): mount one, or set VQZ_BUNDLE to the one to install" ;;
  esac
}

check_key() {
  if [[ ${VQZ_ALLOW_UNSIGNED:-0} == 1 ]]; then
    say "WARNING: VQZ_ALLOW_UNSIGNED=1: the bundle's signature will NOT be verified"
    return
  fi
  [[ -f $VQZ_KEY ]] || fail 66 "no public key at VQZ_KEY=$VQZ_KEY: mount the signer's key, e.g." \
    "-v \$PWD/fleet.pub:$VQZ_KEY:ro (or VQZ_ALLOW_UNSIGNED=1, not for production)"
}

check_gpu() {
  # The CUDA driver API through ctypes: no CUDA Python package needed, and exactly what TensorRT will use.
  local out
  if ! out=$("$PYTHON" - 2>&1 <<'PY'
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"libcuda.so.1 cannot be loaded ({exc})")
rc = cuda.cuInit(0)
if rc != 0:
    names = {100: "CUDA_ERROR_NO_DEVICE", 999: "CUDA_ERROR_UNKNOWN", 35: "CUDA_ERROR_INSUFFICIENT_DRIVER"}
    sys.exit(f"cuInit failed: CUDA error {rc} ({names.get(rc, 'see cuda.h')})")
count = ctypes.c_int(0)
rc = cuda.cuDeviceGetCount(ctypes.byref(count))
if rc != 0 or count.value < 1:
    sys.exit(f"no CUDA device (cuDeviceGetCount -> error {rc}, count {count.value})")
name = ctypes.create_string_buffer(128)
cuda.cuDeviceGetName(name, 128, 0)
print(f"{count.value} CUDA device(s): {name.value.decode(errors='replace')}")
PY
  ); then
    fail 69 "no NVIDIA GPU visible in this container: $out." \
      "Start it with the NVIDIA runtime (docker run --runtime nvidia ..., JetPack ships nvidia-container-toolkit)," \
      "or set VQZ_BACKEND=onnxruntime to serve the ONNX model on the CPU"
  fi
  say "GPU: $out"
}

check_tensorrt() {
  local out
  if ! out=$("$PYTHON" - 2>&1 <<'PY'
import sys
from vqz_edge.errors import VqzError
from vqz_edge.trt.compat import import_tensorrt
try:
    trt = import_tensorrt()
except VqzError as exc:
    sys.exit(str(exc))
print(trt.__version__)
PY
  ); then
    fail 71 "TensorRT is not usable in this container: $out." \
      "The image takes TensorRT from its L4T base image (JetPack); rebuild it from docker/Dockerfile.jetson"
  fi
  say "TensorRT $out (image built for TensorRT ${VQZ_IMAGE_TENSORRT:-?}, JetPack ${VQZ_IMAGE_JETPACK:-?})"
}

preflight() {
  BUNDLE=$(find_bundle)
  check_key
  case $VQZ_BACKEND in
    tensorrt) check_gpu; check_tensorrt ;;
    onnxruntime) say "backend onnxruntime: serving the ONNX model on the CPU (no GPU/TensorRT checks)" ;;
    *) fail 64 "VQZ_BACKEND must be tensorrt or onnxruntime, got '$VQZ_BACKEND'" ;;
  esac
}

install_bundle() {
  local args=(install "$BUNDLE" --root "$VQZ_ROOT" --backend "$VQZ_BACKEND")
  if [[ ${VQZ_ALLOW_UNSIGNED:-0} == 1 ]]; then args+=(--allow-unsigned); else args+=(--key "$VQZ_KEY"); fi
  if [[ -n ${VQZ_INSTALL_ARGS:-} ]]; then
    local extra
    read -r -a extra <<<"$VQZ_INSTALL_ARGS"
    args+=("${extra[@]}")
  fi
  mkdir -p "$VQZ_ROOT"
  say "installing $BUNDLE into $VQZ_ROOT (verify signature and hashes, build, smoke test, switch);" \
    "an unchanged bundle on an unchanged device is a no-op"
  if [[ ${1:-} == --to-stderr ]]; then
    "$VQZ_EDGE" "${args[@]}" >&2  # run/bench: keep stdout for their output (e.g. --json)
  else
    "$VQZ_EDGE" "${args[@]}"
  fi
}

served_path() {
  "$VQZ_EDGE" status --root "$VQZ_ROOT" --json | "$PYTHON" -c '
import json, sys
st = json.load(sys.stdin)
if not st.get("healthy") or not st.get("current"):
    sys.exit("no healthy current release")
print(st["current"]["served"])'
}

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

cmd=${1:-serve}
[[ $# -gt 0 ]] && shift

case $cmd in
  serve)
    preflight
    install_bundle
    sleep infinity &
    sleeper=$!
    trap 'say "stopping"; kill "$sleeper" 2>/dev/null; exit 0' TERM INT
    say "ready: current = $(served_path). docker exec <container> vqz-entrypoint run IMAGE... | bench"
    wait "$sleeper"
    ;;
  install)
    preflight
    install_bundle
    ;;
  run | bench)
    preflight
    install_bundle --to-stderr
    served=$(served_path) || fail 1 "the install root $VQZ_ROOT has no healthy current release"
    backend=ort
    [[ $VQZ_BACKEND == tensorrt ]] && backend=trt
    if [[ $cmd == run ]]; then
      [[ $# -gt 0 ]] || fail 64 "usage: run IMAGE... [vqz-edge run options]"
      exec "$VQZ_EDGE" run "$served" --backend "$backend" --input "$@"
    fi
    exec "$VQZ_EDGE" bench "$served" --backend "$backend" "$@"
    ;;
  status)
    exec "$VQZ_EDGE" status --root "$VQZ_ROOT" "$@"
    ;;
  check)
    preflight
    say "checks passed: bundle $BUNDLE, backend $VQZ_BACKEND"
    ;;
  healthcheck)
    served_path >/dev/null 2>&1 || { echo "unhealthy: no healthy current release in $VQZ_ROOT"; exit 1; }
    echo "healthy"
    ;;
  help | -h | --help)
    usage
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
