#!/usr/bin/env bash
# The two virtualenvs deploy/Dockerfile's targets contain, built the same way outside Docker (no engine here):
# the wheel from this checkout, a pip-less venv, `pip --python VENV install`, bytecode compiled.
#   slim: pip install fleetpilot                  full: torch (CPU build) first, then fleetpilot[rl,prophet]
# Usage: bash benchmarks/image_venvs.sh [WORKDIR]   (default /tmp/fleetpilot-image-venvs; removed and rebuilt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/fleetpilot-image-venvs}"
PY="${PYTHON:-python3}"
rm -rf "$WORK" && mkdir -p "$WORK/src" "$WORK/dist"
# the same sources as the Dockerfile's build stage
( cd "$ROOT" && cp -r pyproject.toml README.md __init__.py __main__.py agent envs forecasting policies simulations \
    examples "$WORK/src/" && mkdir -p "$WORK/src/data" && cp -r data/traces "$WORK/src/data/" )
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/fleetpilot-*.whl)"
for target in slim full; do
    "$PY" -m venv --without-pip "$WORK/$target"
    if [ "$target" = full ]; then
        "$PY" -m pip --python "$WORK/full/bin/python" install -q 'torch>=2.3,<2.14'
        "$PY" -m pip --python "$WORK/full/bin/python" install -q "$WHEEL[rl,prophet]"
    else
        "$PY" -m pip --python "$WORK/slim/bin/python" install -q "$WHEEL"
    fi
    "$WORK/$target/bin/python" -m compileall -q -x 'py312_intrinsics' "$WORK/$target"
    "$WORK/$target/bin/fleetpilot" --version
done
"$WORK/slim/bin/python" -c "import importlib.util as u; print('slim: torch importable:', u.find_spec('torch') is not None)"
"$WORK/full/bin/python" -c "import torch; print('full: torch', torch.__version__)"
echo "--- installed sizes (du -sh: disk usage; --apparent-size: bytes)"
du -sh "$WORK/slim" "$WORK/full"
du -sh --apparent-size "$WORK/slim" "$WORK/full"
echo "--- largest packages"
for target in slim full; do
    echo "$target:"; du -sh "$WORK/$target"/lib/python3*/site-packages/* | sort -h | tail -6
done
