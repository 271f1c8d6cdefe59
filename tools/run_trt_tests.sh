#!/usr/bin/env bash
# Run the TensorRT test suite (pytest -m trt) where TensorRT and an NVIDIA GPU exist:
#
#   tools/run_trt_tests.sh                         # on this host: a Jetson (JetPack 6.x) or a GPU host
#   tools/run_trt_tests.sh --container IMAGE       # inside a Jetson / TensorRT container (docker + nvidia runtime)
#   tools/run_trt_tests.sh -k explicit             # extra arguments go to pytest
#
# Needs, in the Python that runs it: tensorrt (JetPack's python3-libnvinfer, or NVIDIA's wheels), pycuda, numpy,
# onnx, onnx-graphsurgeon, onnxruntime, polygraphy, pytest, scikit-image, and this package (pip install -e .).
# The demo model is exported with torch; where torch is missing (a bare Jetson), copy calibration/mobilenet_v2
# from a workstation run of the demo and point VQZ_EDGE_TRT_TEST_CALIBRATION at it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --container ]]; then
  image=${2:?usage: tools/run_trt_tests.sh --container IMAGE [pytest args]}
  shift 2
  env_args=()
  if [[ -n ${VQZ_EDGE_TRT_TEST_CALIBRATION:-} ]]; then
    env_args=(-v "$(realpath "$VQZ_EDGE_TRT_TEST_CALIBRATION")":/calibration:ro -e VQZ_EDGE_TRT_TEST_CALIBRATION=/calibration)
  fi
  gpu_args=(--gpus all)
  [[ $(uname -m) == aarch64 ]] && gpu_args=(--runtime nvidia)  # Jetson: NVIDIA's container runtime
  exec docker run --rm "${gpu_args[@]}" -v "$PWD":/src -w /src "${env_args[@]}" "$image" \
    bash -c 'python3 -m pip install -q --no-deps -e . && tools/run_trt_tests.sh "$@"' run_trt_tests "$@"
fi

PY=${PYTHON:-python3}
"$PY" - <<'PY'
import sys
from vqz_edge.device import read_gpu, read_l4t
from vqz_edge.errors import VqzError
from vqz_edge.trt.compat import import_tensorrt
try:
    trt = import_tensorrt()
    gpu = read_gpu()
except VqzError as exc:  # report and stop: there is nothing to test here
    sys.exit(f"run_trt_tests: {exc}")
if gpu is None:
    sys.exit("run_trt_tests: TensorRT is installed but no CUDA GPU was found")
print(f"run_trt_tests: TensorRT {trt.__version__}, GPU {gpu.name} (sm {gpu.compute_capability}, "
      f"integrated={gpu.integrated}), L4T {read_l4t() or '-'}")
PY
exec "$PY" -m pytest -m trt tests/trt -v -rs -p no:cacheprovider "$@"
