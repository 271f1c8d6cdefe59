#!/usr/bin/env bash
# The device side on JetPack 5's Python 3.8: install vqz-edge (base dependencies, no torch) into .venv38 and run
# the device commands' tests (build / run / bench / check-memory / install / status / rollback / bundle verify,
# the runtime, the TensorRT 8.5 double) there.
#
#   bash tools/test_device_py38.sh                  # finds python3.8 (PYTHON38, PATH, or pyenv)
#   VQZ_TEST_MOBILENET_ONNX=calibration/mobilenet_v2/model.onnx bash tools/test_device_py38.sh   # + the real model
set -euo pipefail
cd "$(dirname "$0")/.."

# the first candidate that really is a working Python 3.8 (pyenv's shim on PATH may not be activated)
PY38=""
for cand in "${PYTHON38:-}" "$(command -v python3.8 || true)" \
            $(find "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions -maxdepth 3 -path "*/3.8*/bin/python3.8" 2>/dev/null | sort -rV); do
  if [[ -n $cand ]] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))' >/dev/null 2>&1; then
    PY38=$cand
    break
  fi
done
[[ -n $PY38 ]] || { echo "device-py38: no working Python 3.8 found (set PYTHON38=/path/to/python3.8)" >&2; exit 1; }

VENV=${VENV38:-.venv38}
STAMP="$VENV/.vqz-setup-$(cat pyproject.toml tests/requirements-device.txt tools/test_device_py38.sh | sha256sum | cut -c1-16)"
if [[ ! -f $STAMP ]]; then
  echo "device-py38: creating $VENV with $("$PY38" --version)"
  rm -rf "$VENV"
  "$PY38" -m venv "$VENV"
  "$VENV/bin/python" -m pip -q --disable-pip-version-check install --upgrade pip
  "$VENV/bin/python" -m pip -q --disable-pip-version-check install -e . -r tests/requirements-device.txt
  touch "$STAMP"
fi
echo "device-py38: $("$VENV/bin/python" --version), vqz-edge $("$VENV/bin/python" -m vqz_edge --version | cut -d' ' -f2)"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_trt_doubles.py tests/test_trt_doubles_cli.py tests/test_build_logic.py tests/test_targets.py \
  tests/test_runtime.py tests/test_memory.py tests/test_install.py tests/test_install_crash.py tests/test_bundle.py \
  tests/test_install_hostile.py tests/test_fsutil.py "$@"
