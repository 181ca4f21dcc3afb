#!/usr/bin/env bash
# Set up .venv, then run the linter and the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ruff check .
exec python -m pytest "$@"
