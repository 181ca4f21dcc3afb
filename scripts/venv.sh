# Sourced by the other scripts, from the repository root: set up .venv (scripts/setup.sh) and
# activate it.
bash scripts/setup.sh
# The activate script may read unset variables, so relax -u while sourcing it.
set +u
# shellcheck disable=SC1091
. .venv/bin/activate
set -u
