"""bench.scale on a tiny family (the code path of the real widths, in seconds) and the GPU script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scale_suite_measures_edits_and_extrapolates_to_full_depth(results, tmp_path):
    from bench import scale

    out = tmp_path / "scale_copy.json"
    scale.main(["--families", "tiny", "--facts", "1", "8", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert payload == json.loads((results / "scale.json").read_text())
    (family,) = payload["families"]
    assert family["family"] == "tiny" and family["layers"] == 2
    assert [r["n"] for r in family["rows"]] == [1, 8]
    for row in family["rows"]:
        assert row["edit_s"] > 0 and row["full_edit_s"] >= 0 and row["module_mb"] >= 0 and row["block_mb"] >= 0
    assert family["full_modules"] and family["full_checkpoint_mb"] >= family["checkpoint_mb"] > 0
    assert 0 < family["full_checkpoint_share"]
    assert family["train_step"]["seconds"] > 0
    assert (results / "scale.png").is_file()


def test_full_depth_shapes_are_exact_without_allocating():
    from bench.scale import FAMILIES, full_depth_shapes

    params, ckpt, modules = full_depth_shapes(FAMILIES["llama3-8b"])
    assert 8.0e9 < params < 8.1e9  # Llama-3-8B has 8.03B parameters
    assert modules[0] == "model.layers.11.mlp.gate_proj" and len(modules) == 12
    assert 12 * 4096 * 4097 // 2 * 4 < ckpt < 0.05 * 2 * params  # 12 packed moments; under 5 % of the bf16 model


def test_scale_refuses_a_single_block():
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--layers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--layers must be at least 2" in proc.stderr


def test_gpu_check_dry_run_finds_everything_it_calls(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for name in ("gpu_tests", "scale", "serving"):
        assert f"would run ({name}," in summary
    assert "every check exists" in summary


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    assert "no CUDA device" in (tmp_path / "out" / "summary.txt").read_text()


def test_gpu_check_needs_an_output_folder():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
