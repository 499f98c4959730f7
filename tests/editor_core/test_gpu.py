"""The checks that need a CUDA device (``scripts/gpu_check.sh`` runs them; skipped without one).

Their CPU halves run everywhere: tests/editor_core/test_state.py (replay on another layout) and
test_working_copy.py (bf16 multi-step exactness).
"""

from __future__ import annotations

import pytest
import torch

from editor_core.delta import Delta
from editor_core.editor import EditorConfig, SMEditor
from editor_core.state import WeightState
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, build_tiny, same_bits, snapshot

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)"),
]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_edit_and_revert_are_exact_on_the_gpu(tokenizer, family):
    model = build_tiny(family, len(tokenizer), torch.bfloat16).cuda()
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0))
    before = snapshot(model)
    deltas = [editor.edit([r]) for r in REQUESTS]
    assert same_bits(model, before)
    state = WeightState(model, editor.module_names)
    state.set_active(deltas)
    assert not same_bits(model, before)
    state.set_active([])
    assert same_bits(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_replayed_on_the_cpu_hash_like_the_live_gpu_ones(tokenizer, dtype):
    gpu_model = build_tiny("llama", len(tokenizer), dtype).cuda()
    editor = SMEditor(gpu_model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0))
    deltas = [editor.edit([r]) for r in REQUESTS]  # live deltas: tensors on the GPU
    assert all(t.is_cuda for d in deltas for s in d.shifts.values() for t in (s if isinstance(s, tuple) else (s,)))
    live = WeightState(gpu_model, editor.module_names)
    live.set_active(deltas)

    cpu_model = build_tiny("llama", len(tokenizer), dtype)
    replayed = WeightState(cpu_model, editor.module_names)
    replayed.set_active([Delta.from_bytes(d.to_bytes()) for d in deltas])
    assert replayed.weights_hash() == live.weights_hash()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_edit_on_a_model_split_over_two_devices(tokenizer):
    """Layers on cuda:0 and cuda:1 (as ``device_map`` places them): captures, solve and apply
    each stay on their module's device, and revert is exact."""
    accelerate = pytest.importorskip("accelerate")
    model = build_tiny("llama", len(tokenizer), torch.bfloat16)
    layers = len(model.model.layers)
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1}
    device_map |= {f"model.layers.{i}": 0 if i < layers // 2 else 1 for i in range(layers)}
    model = accelerate.dispatch_model(model, device_map=device_map)
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0))
    before = snapshot(model)
    delta = editor.edit(REQUESTS)
    assert same_bits(model, before)
    state = WeightState(model, editor.module_names)
    state.set_active([delta])
    state.set_active([])
    assert same_bits(model, before)


def test_captures_offloaded_to_the_cpu_give_the_same_delta(tokenizer):
    model = build_tiny("llama", len(tokenizer), torch.bfloat16).cuda()
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0, edit_batch_size=1))
    kept = editor.edit(REQUESTS)
    editor.capture_device = "cpu"
    with editor.working_copies():
        records = editor.run_steps(REQUESTS)
        editor.revert_steps(records)
    assert all(not c.keys.is_cuda and not c.grads.is_cuda for r in records for c in r.captures.values())
    offloaded = editor.edit(REQUESTS)
    for name in kept.module_names:
        assert torch.equal(offloaded.dense(name, exact=True).cpu(), kept.dense(name, exact=True).cpu())
