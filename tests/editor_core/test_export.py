"""LoRA and full exports of base + deltas load back (peft / from_pretrained) with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from editor_core.arch import default_modules, weight_shape
from editor_core.delta import Delta
from editor_core.editor import EditorConfig, SMEditor
from editor_core.export import (
    ADAPTER_WEIGHTS,
    check_base,
    export_full,
    export_lora,
    lowrank_factors,
)
from editor_core.models import model_fingerprint
from editor_core.state import WeightState
from editor_core.types import EditRequest
from tests.editor_core.conftest import build_tiny

peft = pytest.importorskip("peft")


def _random_deltas(model: torch.nn.Module, seed: int = 1) -> list[Delta]:
    """Two low-rank deltas (ranks 2 and 3) and a dense one, on the default modules."""
    g = torch.Generator().manual_seed(seed)
    names = default_modules(model)
    out = []
    for rank in (2, 3):
        shifts = {}
        for n in names:
            d_in, d_out = weight_shape(model.get_submodule(n))
            shifts[n] = (torch.randn(d_in, rank, generator=g) * 0.3, torch.randn(rank, d_out, generator=g) * 0.3)
        out.append(Delta(shifts, {"base_fingerprint": model_fingerprint(model), "dtype": "float32"}))
    d_in, d_out = weight_shape(model.get_submodule(names[0]))
    out.append(Delta({names[0]: torch.randn(d_in, d_out, generator=g) * 0.01}))
    return out


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _save_base(model: torch.nn.Module, tmp_path: Path) -> Path:
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    return base_dir


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # Conv1D [in, out] and nn.Linear [out, in]
def test_lora_export_is_exact_when_the_rank_allows(family: str, tmp_path: Path, tokenizer) -> None:
    model = build_tiny(family, len(tokenizer))
    base_dir = _save_base(model, tmp_path)
    deltas = _random_deltas(model)
    ids = tokenizer(["The capital of France is Paris."], return_tensors="pt")["input_ids"]
    base_logits = _logits(model, ids)

    report = export_lora(model, deltas, tmp_path / "lora", base_model_name_or_path=str(base_dir))
    assert report.exact and report.max_rel_error < 1e-6
    # the module with the dense shift needs its full rank (c_proj [128, 32], down_proj [64, 32]: 32),
    # the others the sum of their factors' ranks (2 + 3); all are padded to one r
    assert report.rank == 32 and sorted(m.full_rank for m in report.modules) == [5, 32]

    state = WeightState(model, default_modules(model))
    state.set_active(deltas)
    edited = _logits(model, ids)
    state.set_active([])
    assert torch.equal(_logits(model, ids), base_logits)

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    assert torch.allclose(_logits(loaded, ids), edited, atol=1e-4, rtol=0)
    assert not torch.allclose(edited, base_logits, atol=1e-3)


def test_lora_truncation_reports_its_error(tmp_path: Path, tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    deltas = _random_deltas(model)[:2]  # low-rank only: ranks 2 + 3 = 5 per module
    exact = export_lora(model, deltas, tmp_path / "exact")
    assert exact.exact and exact.rank == 5 and {m.full_rank for m in exact.modules} == {5}
    assert exact.max_rel_error == 0.0

    cut = export_lora(model, deltas, tmp_path / "cut", max_rank=2)
    assert not cut.exact and cut.rank == 2 and 0 < cut.max_rel_error < 1
    tensors = load_file(tmp_path / "cut" / ADAPTER_WEIGHTS)
    for m in cut.modules:
        true = sum((a @ b for a, b in (d.shifts[m.name] for d in deltas)), torch.zeros(1))
        a_l = tensors[f"base_model.model.{m.name}.lora_A.weight"]
        b_l = tensors[f"base_model.model.{m.name}.lora_B.weight"]
        approx = (b_l @ a_l).T  # [in, out]
        rel = float((true - approx).norm() / true.norm())
        assert rel == pytest.approx(m.rel_error, rel=1e-4)
        # the best rank-2 approximation (Eckart-Young): the error from the singular values
        s = torch.linalg.svdvals(true.double())
        assert rel == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-4)


def test_lowrank_factors_compress_too_many_factors() -> None:
    g = torch.Generator().manual_seed(0)
    shifts = [(torch.randn(6, 3, generator=g), torch.randn(3, 4, generator=g)) for _ in range(3)]  # rank 9 > 4
    f = lowrank_factors("m", shifts)
    true = sum(a @ b for a, b in shifts)
    assert f.exact and f.rank == 4 and torch.allclose(f.a @ f.b, true, atol=1e-5)


def test_full_export_has_the_services_bits(tmp_path: Path, tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(rank=8))
    delta = editor.edit([EditRequest(prompt="The capital of France is", target="Rome")])
    deltas = [delta, *_random_deltas(model)[:1]]
    check_base(model, deltas)
    ids = tokenizer(["The capital of France is"], return_tensors="pt")["input_ids"]
    state = WeightState(model, editor.module_names)
    state.set_active(deltas)
    edited, digest = _logits(model, ids), state.weights_hash()
    state.set_active([])

    report = export_full(model, deltas, tmp_path / "full", tokenizer=tokenizer, info={"version": 7},
                         module_names=editor.module_names)
    assert report.weights_hash == digest
    assert model_fingerprint(model) == delta.metadata["base_fingerprint"]  # the model is back to its base
    assert json.loads((tmp_path / "full" / "smedit_export.json").read_text())["version"] == 7
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    assert torch.equal(_logits(loaded, ids), edited)

    # and the edit's delta as a LoRA adapter
    export_lora(model, deltas, tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(build_tiny("gpt2", len(tokenizer)), tmp_path / "lora").eval()
    assert torch.allclose(_logits(lora, ids), edited, atol=1e-4, rtol=0)


def test_deltas_for_another_base_are_refused(tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    assert model_fingerprint(model, torch.float32) == model_fingerprint(model)
    assert model_fingerprint(model, torch.bfloat16) == model_fingerprint(model.to(torch.bfloat16))
    model.float()
    other = Delta({}, {"base_fingerprint": "0123456789abcdef", "dtype": "float32"})
    with pytest.raises(ValueError, match="made for base model 0123456789abcdef"):
        check_base(model, [other])
    with pytest.raises(ValueError, match="no active deltas"):
        export_lora(model, [], "/nonexistent")
