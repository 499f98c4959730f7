"""fp32 working copies: on a bf16 model, step 2 of an edit sees step 1's whole shift."""

from __future__ import annotations

import copy

import pytest
import torch

from editor_core.arch import get_module, weight_in_out
from editor_core.editor import EditorConfig, SMEditor
from editor_core.train import train_step
from editor_core.train_config import TrainConfig
from editor_core.working_copy import fp32_working_copies
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, build_tiny, same_bits, snapshot


def _editor(model, tokenizer, init_lr: float = 1.0) -> SMEditor:
    torch.manual_seed(1)
    return SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=8, init_lr=init_lr))


def test_step_two_captures_the_model_with_step_ones_whole_shift(tokenizer):
    model = build_tiny("llama", len(tokenizer), torch.bfloat16)
    editor = _editor(model, tokenizer, init_lr=0.05)  # shifts ~1e-3 of the weights, as real edits
    name = editor.module_names[0]
    base = weight_in_out(get_module(model, name)).detach().float().clone()
    before = snapshot(model)

    with editor.working_copies() as copied:
        assert copied == editor.module_names
        records = editor.run_steps(REQUESTS)
        step1 = records[0].delta.dense(name)
        exact = (base + step1) + records[1].delta.dense(name)  # what apply_ computes, step by step
        assert torch.equal(weight_in_out(get_module(model, name)), exact)
        editor.revert_steps(records)
    assert same_bits(model, before)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())

    # the control: applied to the bf16 weights themselves, most of the first step is rounded away
    records = editor.run_steps(REQUESTS)
    kept = weight_in_out(get_module(model, name)).float() - base
    lost = float((kept - records[0].delta.dense(name) - records[1].delta.dense(name)).norm())
    editor.revert_steps(records)
    assert lost > 0.1 * float(records[0].delta.dense(name).norm())


def test_bf16_edit_is_close_to_the_fp32_one_and_leaves_the_model_unchanged(tokenizer):
    """The bf16 delta differs from an fp32 run of the same weights by what bf16 activations in
    the other layers cost (measured ~1.1e-2 relative here), not by lost steps."""
    bf16 = build_tiny("llama", len(tokenizer), torch.bfloat16)
    fp32 = copy.deepcopy(bf16).float()
    editor32 = _editor(fp32, tokenizer)
    editor16 = _editor(bf16, tokenizer)
    editor16.load_state_dict(editor32.state_dict())
    before = snapshot(bf16)

    want, got = editor32.edit(REQUESTS), editor16.edit(REQUESTS)

    assert same_bits(bf16, before)
    num = sum(float((got.dense(n) - want.dense(n)).norm()) ** 2 for n in want.module_names) ** 0.5
    den = sum(float(want.dense(n).norm()) ** 2 for n in want.module_names) ** 0.5
    assert num / den < 3e-2
    assert all(got.dense(n).dtype == torch.float32 for n in got.module_names)


def test_meta_training_step_on_a_bf16_model_takes_fp32_weight_gradients(tokenizer):
    model = build_tiny("llama", len(tokenizer), torch.bfloat16)
    editor = _editor(model, tokenizer, init_lr=1e-2)
    before = snapshot(model)
    params = [p.detach().clone() for p in editor.parameters()]
    opt = torch.optim.Adam(editor.parameters(), lr=1e-3)
    stats = train_step(editor, REQUESTS, TrainConfig(reg="l2"), opt)
    assert torch.isfinite(torch.tensor(stats["grad_norm"])) and stats["grad_norm"] > 0
    assert any(not torch.equal(p, q) for p, q in zip(params, editor.parameters()))
    assert same_bits(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_models_get_no_copies(tokenizer, dtype):
    model = build_tiny("gpt2", len(tokenizer), dtype)
    editor = _editor(model, tokenizer)
    weight = get_module(model, editor.module_names[0]).weight
    with fp32_working_copies(model, editor.module_names) as copied:
        assert copied == []
        assert get_module(model, editor.module_names[0]).weight is weight


def test_copies_nest_and_are_removed_after_an_error(tokenizer):
    model = build_tiny("gpt2", len(tokenizer), torch.float16)
    editor = _editor(model, tokenizer)
    name = editor.module_names[0]
    weight = get_module(model, name).weight
    with pytest.raises(RuntimeError, match="boom"):
        with editor.working_copies():
            with editor.working_copies() as inner:
                assert inner == []  # already fp32: nothing more to copy
                assert get_module(model, name).weight.dtype == torch.float32
                raise RuntimeError("boom")
    assert get_module(model, name).weight is weight
    assert not get_module(model, name)._forward_hooks and not get_module(model, name)._forward_pre_hooks
