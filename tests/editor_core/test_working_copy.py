"""Working copies: on a bf16 model step 2 of an edit sees step 1's whole shift; no backups."""

from __future__ import annotations

import copy

import pytest
import torch

from editor_core.arch import get_module, weight_in_out
from editor_core.editor import EditorConfig, SMEditor
from editor_core.train import train_step
from editor_core.train_config import TrainConfig
from editor_core.working_copy import WorkingCopies
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

    with editor.working_copies():
        records = editor.run_steps(REQUESTS)
        step1, step2 = records[0].delta.dense(name), records[1].delta.dense(name)
        assert torch.equal(weight_in_out(get_module(model, name)), (base + step1) + step2)  # one rounding per step
        editor.revert_steps(records)
        assert torch.equal(weight_in_out(get_module(model, name)), base)
    assert same_bits(model, before)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())

    # the control: added to the bf16 weights themselves, most of the first step is rounded away
    rounded = (base.bfloat16().float() + step1).bfloat16().float() - base
    assert float((rounded - step1).norm()) > 0.1 * float(step1.norm())
    with pytest.raises(RuntimeError, match="inside `with editor.working_copies"):
        editor.run_steps(REQUESTS)


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
def test_full_precision_modules_get_a_copy_of_their_own_dtype_and_no_hooks(tokenizer, dtype):
    model = build_tiny("gpt2", len(tokenizer), dtype)
    editor = _editor(model, tokenizer)
    module = get_module(model, editor.module_names[0])
    weight = module.weight
    with WorkingCopies(model, editor.module_names):
        assert module.weight is not weight and module.weight.dtype == dtype
        assert torch.equal(module.weight, weight)
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert module.weight is weight


def test_copies_nest_and_are_removed_after_an_error(tokenizer):
    model = build_tiny("gpt2", len(tokenizer), torch.float16)
    editor = _editor(model, tokenizer)
    name = editor.module_names[0]
    module = get_module(model, name)
    weight = module.weight
    with pytest.raises(RuntimeError, match="boom"):
        with editor.working_copies():
            copy = module.weight
            with editor.working_copies():
                assert module.weight is copy and copy.dtype == torch.float32  # the outer block's copy
            assert module.weight is copy  # the inner block did not restore
            raise RuntimeError("boom")
    assert module.weight is weight
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_a_step_on_an_fp32_model_gives_the_bits_of_adding_to_the_weights(tokenizer):
    """fp32: the copies change nothing numerically (the demo editors' edits are unchanged)."""
    model = build_tiny("gpt2", len(tokenizer))
    editor = _editor(model, tokenizer)
    name = editor.module_names[0]
    base = weight_in_out(get_module(model, name)).detach().clone()
    with editor.working_copies():
        records = editor.run_steps(REQUESTS[:2])
        assert torch.equal(weight_in_out(get_module(model, name)),
                           (base + records[0].delta.dense(name)) + records[1].delta.dense(name))
        editor.revert_steps(records)


def test_an_edit_inside_an_open_block_leaves_the_copies_as_the_originals(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = _editor(model, tokenizer)
    name = editor.module_names[0]
    base = weight_in_out(get_module(model, name)).detach().clone()
    with editor.working_copies():
        delta = editor.edit(REQUESTS[:1])
        assert delta.sq_norm() > 0
        assert torch.equal(weight_in_out(get_module(model, name)), base)  # reset, not left shifted
    assert torch.equal(weight_in_out(get_module(model, name)), base)
