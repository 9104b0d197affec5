#!/usr/bin/env bash
# Set up a virtual environment (once) and run the demo or the tests.
#   bash run.sh demo     convert a bundled model, print its accuracy-versus-T table
#   bash run.sh test     lint (ruff) and run the whole test suite, slow tests included (CI)
#   bash run.sh test tests/test_modes.py [-k ...]   run just those tests (slow ones
#                        deselected unless you pass -m slow)
# Extra arguments go to the command (e.g. `bash run.sh test -k fold`).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${ANN2SNN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# The interop extra (Norse, snnTorch) and sinabs let tests/interop compare the NIR readers'
# spikes with ours; sinabs pins nir<=1.0.4, so it goes in without its dependencies.
if ! python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
    ('ann2snn', 'pytest', 'onnxruntime', 'nir', 'norse', 'sinabs', 'snntorch')))" >/dev/null 2>&1; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[test,interop]"
  python -m pip install -q --no-deps "sinabs==3.1.3"
fi
if [ -z "${ANN2SNN_DATA:-}" ] && [ -d ../shared/datasets ]; then
  ANN2SNN_DATA="$(cd ../shared/datasets && pwd)"
  export ANN2SNN_DATA
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  demo) exec ann2snn demo "$@" ;;
  test)
    if [ $# -eq 0 ]; then
      ruff check .
      ruff format --check $(git ls-files '*.py' 2>/dev/null || find . -name '*.py' -not -path './.venv/*')
      # pyproject's addopts deselect slow tests; the full run selects them again.
      exec python -m pytest -q -m "slow or not slow" tests
    fi
    exec python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo|test [args...]" >&2; exit 2 ;;
esac
