#!/usr/bin/env bash
# Localize the objects in examples/ with Grad-CAM; results go to out/. Extra args pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec wsolkit localize examples --method gradcam --target top1 --out out --overlays "$@"
