#!/usr/bin/env bash
# Device check of the CUDA path (issue 18): set up, build the kernels, run
# benchmarks/device_check.py. On a CUDA machine (repo root = the working directory):
#
#   bash benchmarks/device_check.sh --out "$OUT"          # < 8 minutes on an H100/H200
#   bash benchmarks/device_check.sh --dry-run --out DIR   # the same on the CPU, small sizes
#
# Other arguments go to device_check.py (--sections, --inject-mismatch, ...).
# Environment: PYTHON (default python3, or python), ANN2SNN_DATA (default: the first of
# out/device_data, shared/datasets, ../shared/datasets that exists), CUDA_HOME (default
# /usr/local/cuda), ANN2SNN_BUILD_DIR (default: a fresh folder under /tmp, so the CUDA
# build is timed cold), DEVICE_CHECK_TIMEOUT (seconds, default 470).
# Exit status: device_check.py's (0 ok, 1 mismatch or error, 2 cannot start), 124 on timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DRY=0
OUT_DIR=${OUT:-out/device_check}
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; PASS+=("$1") ;;
    --out) OUT_DIR=$2; shift ;;
    --out=*) OUT_DIR=${1#--out=} ;;
    *) PASS+=("$1") ;;
  esac
  shift
done
mkdir -p "$OUT_DIR"

if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3 || command -v python)
fi
say() { echo "[device_check.sh] $*"; }

if [ -z "${ANN2SNN_DATA:-}" ]; then
  for d in out/device_data shared/datasets ../shared/datasets; do
    if [ -d "$d" ]; then
      ANN2SNN_DATA=$(cd "$d" && pwd)
      export ANN2SNN_DATA
      break
    fi
  done
fi
say "data: ${ANN2SNN_DATA:-not set (ann2snn searches its default places)}"

if [ "$DRY" = 0 ]; then
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check.sh: torch sees no CUDA device; on a CPU machine use --dry-run" >&2
    exit 2
  fi
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
  fi
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c \
      'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
  fi
  # A failed build raises instead of falling back to the pure-torch reference.
  export ANN2SNN_BACKEND=compiled
  export ANN2SNN_BUILD_DIR=${ANN2SNN_BUILD_DIR:-$(mktemp -d /tmp/ann2snn_device_build.XXXXXX)}
  if ! command -v ninja >/dev/null && ! "$PYTHON" -c 'import ninja' 2>/dev/null; then
    say "WARNING: ninja not found (torch needs it to build the kernels): pip install ninja"
  fi
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo '?')"
  say "CUDA_HOME=${CUDA_HOME:-unset} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" \
    "ANN2SNN_BUILD_DIR=$ANN2SNN_BUILD_DIR"
fi

# Import the project from this tree: as it is when already installed from here, else an
# editable install, else (no setuptools/pip) a folder of links on PYTHONPATH.
importable() {
  "$PYTHON" - "$REPO" <<'EOF' 2>/dev/null
import pathlib, sys
import ann2snn, ann2snn.models  # noqa: E401
here = pathlib.Path(ann2snn.__file__).resolve().parent.parent
sys.exit(0 if here == pathlib.Path(sys.argv[1]).resolve() else 1)
EOF
}
start=$(date +%s.%N)
if importable; then
  say "ann2snn: already importable from $REPO"
elif "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/pip_install.log" 2>&1 \
  && importable; then
  say "ann2snn: pip install -e . done"
else
  say "ann2snn: pip install -e . failed (see $OUT_DIR/pip_install.log); using a link tree"
  SHIM=$(mktemp -d /tmp/ann2snn_shim.XXXXXX)
  mkdir "$SHIM/ann2snn"
  for entry in "$REPO"/ann2snn/*; do ln -s "$entry" "$SHIM/ann2snn/"; done
  ln -s "$REPO/models" "$SHIM/ann2snn/models"
  ln -s "$REPO/converter_passes" "$SHIM/ann2snn/converter_passes"
  ln -s "$REPO/cli" "$SHIM/ann2snn/cli"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  importable || { echo "device_check.sh: cannot import ann2snn" >&2; exit 2; }
fi
DEVICE_CHECK_INSTALL_S=$(awk "BEGIN {print $(date +%s.%N) - $start}")
export DEVICE_CHECK_INSTALL_S
say "install/import check: ${DEVICE_CHECK_INSTALL_S} s"

set +e
timeout "${DEVICE_CHECK_TIMEOUT:-470}" "$PYTHON" benchmarks/device_check.py \
  ${PASS[@]+"${PASS[@]}"} --out "$OUT_DIR"
status=$?
set -e
if [ "$status" = 124 ]; then
  echo "device_check.sh: timed out after ${DEVICE_CHECK_TIMEOUT:-470} s;" \
    "$OUT_DIR/device_check.json holds the sections finished so far" >&2
fi
exit "$status"
