#!/usr/bin/env bash
# The test command: installs what is needed (first run only), then runs the whole suite.
# Integration tests need Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_browser.sh  # Debian's chromium + chromedriver for the console's browser tests
exec .venv/bin/python -m pytest -q "$@"
