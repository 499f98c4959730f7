#!/usr/bin/env bash
# The checks that need a CUDA machine, in one run of under 8 minutes, results in OUT_DIR:
#   1. the GPU tests (bf16 edit/revert exactness, replay hash CPU vs GPU, a model split over two
#      devices when there are two): tests/editor_core/test_gpu.py       -> gpu_tests.log, gpu_tests.xml
#   2. bench.scale at real widths on the GPU (Llama-3-8B, GPT-J-6B)      -> scale.json, scale.png
#   3. bench.serving on the GPU (needs the service's packages)           -> serving_*.json
#   summary.txt says what ran, what was skipped and why, and each step's exit status.
#
#   bash scripts/gpu_check.sh OUT_DIR            on a CUDA machine (python: $PYTHON, else .venv, else python3)
#   bash scripts/gpu_check.sh --dry-run OUT_DIR  anywhere (CI): checks that everything it calls exists
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-}"
if [[ -z "$OUT" ]]; then
    echo "usage: bash scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
FAILED=0

# step NAME SECONDS CMD...: run with a time limit (or, dry, check that it can start)
step() {
    local name="$1" limit="$2"; shift 2
    if [[ $DRY == 1 ]]; then
        note "would run ($name, ${limit}s): $*"
        return 0
    fi
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc after $((SECONDS - started)) s (log: $name.log)"
    [[ $rc == 0 ]] || FAILED=1
}

if [[ $DRY == 1 ]]; then
    note "dry run with $PY"
    "$PY" - <<'EOF' || { note "dry run: a module the checks call is missing"; exit 1; }
import importlib
for name in ("torch", "transformers", "safetensors", "editor_core.working_copy", "editor_core.state", "bench.scale"):
    importlib.import_module(name)
EOF
    "$PY" -m pytest -q --collect-only -p no:cacheprovider tests/editor_core/test_gpu.py >"$OUT/collect.log" 2>&1 \
        || { note "dry run: the GPU tests do not collect (collect.log)"; exit 1; }
    for module in bench.scale bench.serving; do
        "$PY" -m "$module" --help >/dev/null 2>&1 || { note "dry run: $module --help fails"; exit 1; }
    done
    "$PY" -m bench.serving --help | grep -q -- "--quick" || { note "dry run: bench.serving has no --quick"; exit 1; }
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { note "no CUDA device visible to $PY: nothing to check (use --dry-run on CPU)"; exit 1; }
    note "python: $PY; $("$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'device(s)')")"
fi

step gpu_tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/editor_core/test_gpu.py --junitxml "$OUT/gpu_tests.xml"
step scale 240 env SMEDIT_BENCH_RESULTS="$OUT" "$PY" -m bench.scale --device cuda --families llama3-8b gptj-6b \
    --facts 1 16 256 1024 4096 --json "$OUT/scale.json"
if [[ $DRY == 1 ]] || "$PY" -c "import fastapi, sqlalchemy, pydantic" 2>/dev/null; then
    step serving 120 env SMEDIT_BENCH_RESULTS="$OUT" "$PY" -m bench.serving --quick
else
    note "serving: skipped, $PY lacks the service's packages (fastapi, sqlalchemy, pydantic): carry them as wheels"
fi

[[ $DRY == 1 ]] && note "dry run: every check exists"
exit $FAILED
