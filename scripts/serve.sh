#!/usr/bin/env bash
# One command from a fresh clone to a running service: installs (first run only), builds the demo
# model and editor if absent (cached under ./data), then serves on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/smedit serve "$@"
