#!/usr/bin/env bash
# Set up .venv, then run the linter and the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +u
# shellcheck disable=SC1091
. .venv/bin/activate
set -u
ruff check .
exec python -m pytest "$@"
