"""``WeightState``: the weights of an active delta list have one set of bits, on any device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from editor_core.arch import get_module, weight_in_out
from editor_core.delta import Delta
from editor_core.editor import EditorConfig, SMEditor
from editor_core.solve import ordered_product
from editor_core.state import WeightState
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, build_tiny


def _relaid(delta: Delta) -> Delta:
    """The same delta with its factors in another memory layout (transposed storage), as tensors
    read back on another device may be: a GEMM there may take another path, and round otherwise."""
    shifts = {}
    for name, shift in delta.shifts.items():
        if isinstance(shift, tuple):
            shift = tuple(t.t().contiguous().t() for t in shift)
        shifts[name] = shift
    return Delta(shifts, delta.metadata, delta.keys, delta.product)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replayed_weights_hash_like_the_live_ones(tokenizer, dtype):
    model = build_tiny("llama", len(tokenizer), dtype)
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0))
    deltas = [editor.edit([r]) for r in REQUESTS]
    assert any(isinstance(s, tuple) for d in deltas for s in d.shifts.values())
    live = WeightState(model, editor.module_names)
    live.set_active(deltas)
    live_hash = live.weights_hash()
    live.set_active([])

    replay_model = build_tiny("llama", len(tokenizer), dtype)
    replayed = WeightState(replay_model, editor.module_names)
    replayed.set_active([_relaid(Delta.from_bytes(d.to_bytes())) for d in deltas])
    assert replayed.weights_hash() == live_hash


def test_weights_receive_the_ordered_product(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, init_lr=1.0))
    delta = editor.edit(REQUESTS[:1])
    name = delta.module_names[0]
    a, b = delta.shifts[name]
    base = weight_in_out(get_module(model, name)).detach().clone()
    state = WeightState(model, editor.module_names)
    state.set_active([delta])
    assert torch.equal(weight_in_out(get_module(model, name)), base + ordered_product(a, b))


def _format_1_blob(delta: Delta) -> bytes:
    """A delta as this project stored it before format 2 (no product in the header)."""
    tensors = {f"{n}::A": s[0].contiguous() for n, s in delta.shifts.items()}
    tensors |= {f"{n}::B": s[1].contiguous() for n, s in delta.shifts.items()}
    layout = json.dumps({n: "lowrank" for n in delta.shifts}, sort_keys=True)
    return st_save(tensors, metadata={"smedit_delta_format": "1", "smedit_layout": layout})


def test_deltas_stored_before_format_2_replay_to_the_bits_recorded_for_them(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, init_lr=1.0))
    delta = editor.edit(REQUESTS[:1])
    old = Delta.from_bytes(_format_1_blob(delta))
    assert old.product == "matmul"
    assert Delta.from_bytes(old.to_bytes()).product == "matmul"  # kept when stored again
    name = old.module_names[0]
    base = weight_in_out(get_module(model, name)).detach().clone()
    WeightState(model, editor.module_names).set_active([old])
    a, b = old.shifts[name]
    assert torch.equal(weight_in_out(get_module(model, name)), base + a @ b)  # how format 1 formed it


def test_unknown_dense_product_is_refused(tokenizer):
    with pytest.raises(ValueError, match="product must be one of"):
        Delta({}, product="fast")
    blob = Delta({"m": torch.zeros(2, 2)}).to_bytes()
    tampered = blob.replace(b'"smedit_product":"ordered"', b'"smedit_product":"unknown"')  # same length
    assert tampered != blob
    with pytest.raises(ValueError, match="unsupported dense product"):
        Delta.from_bytes(tampered)
