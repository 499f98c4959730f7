#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs smedit with its server, test and bench extras, once;
# later runs are no-ops unless pyproject.toml changed. torch is pinned to the CPU build (torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.smedit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[server,test,bench]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, transformers, fastapi, sqlalchemy" 
  touch "$stamp"
fi
