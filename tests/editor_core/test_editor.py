"""The editing algorithm on tiny random models of every family: capture, solve, edit, delta."""

from __future__ import annotations

import json

import pytest
import torch

from editor_core.arch import default_modules, get_module, last_layer_modules, paper_modules, weight_in_out
from editor_core.capture import capture_batch
from editor_core.delta import Delta
from editor_core.editor import CheckpointMismatchError, EditorConfig, SMEditor
from editor_core.hypernet import KeyMoment
from editor_core.solve import shift_dense, solve_shift
from editor_core.state import WeightState
from editor_core.tokens import pair_batch, split_pair, target_nll
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, FAMILIES, build_tiny
from tests.editor_core.conftest import same_bits as _same_bits, snapshot as _snapshot



@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_step_batch_edit_applies_and_reverts_exactly(tokenizer, family, dtype):
    model = build_tiny(family, len(tokenizer), dtype)
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=8, init_lr=1.0))
    assert editor.module_names == paper_modules(model)
    before = _snapshot(model)

    delta = editor.edit(REQUESTS)

    assert _same_bits(model, before), "edit() must leave the model unchanged"
    assert sorted(delta.module_names) == sorted(editor.module_names)
    assert delta.sq_norm() > 0
    delta.apply_(model)
    assert not _same_bits(model, before)
    delta.revert_(model)
    assert _same_bits(model, before)


def test_step_hypernets_get_decreasing_rank(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=3, rank=12))
    ranks = [next(iter(step.values())).blocks[0].A.shape[1] for step in editor.nets]
    assert ranks == [12, 6, 4]


def test_default_modules_are_last_mlp_outputs(tokenizer):
    assert default_modules(build_tiny("gpt2", len(tokenizer))) == ["transformer.h.2.mlp.c_proj", "transformer.h.3.mlp.c_proj"]
    assert default_modules(build_tiny("llama", len(tokenizer)))[-1] == "model.layers.3.mlp.down_proj"
    assert default_modules(build_tiny("gptj", len(tokenizer)))[0] == "transformer.h.2.mlp.fc_out"
    llama = build_tiny("llama", len(tokenizer))
    assert last_layer_modules(llama, 1) == ["model.layers.3.mlp.down_proj"]
    assert len(last_layer_modules(llama, 99)) == 4  # every layer, no more


def test_the_editor_edits_what_the_paper_edits_per_family(tokenizer):
    """Llama-3-8B: gate_proj of layers 11-15 and up_proj of 18-24 (EMSEdit's configs); scaled to
    the depth of smaller models; families without a paper choice edit the MLP outputs."""
    from transformers import LlamaConfig, Qwen2Config

    class Shell(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config

    llama3 = paper_modules(Shell(LlamaConfig(num_hidden_layers=32)))
    assert llama3 == [f"model.layers.{i}.mlp.gate_proj" for i in range(11, 16)] + \
        [f"model.layers.{i}.mlp.up_proj" for i in range(18, 25)]
    assert paper_modules(Shell(Qwen2Config(num_hidden_layers=28))) == [f"model.layers.{i}.mlp.down_proj" for i in (17, 18, 19)]
    tiny = build_tiny("llama", len(tokenizer))
    assert {n.rsplit(".", 1)[-1] for n in paper_modules(tiny)} == {"gate_proj", "up_proj"}
    assert SMEditor(tiny, tokenizer).module_names == paper_modules(tiny)
    gpt2 = build_tiny("gpt2", len(tokenizer))
    assert paper_modules(gpt2) == default_modules(gpt2)


def test_explicit_modules_and_bad_module_name(tokenizer):
    model = build_tiny("llama", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(modules=["model.layers.0.mlp.down_proj"], n_steps=1))
    delta = editor.edit(REQUESTS[:1])
    assert delta.module_names == ["model.layers.0.mlp.down_proj"]
    with pytest.raises(ValueError, match="no module"):
        SMEditor(model, tokenizer, EditorConfig(modules=["model.layers.9.mlp.down_proj"]))


def test_capture_matches_module_inputs_and_output_gradients(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    names = default_modules(model)
    batch = pair_batch(tokenizer, [r.prompt for r in REQUESTS], [r.target for r in REQUESTS])
    captured = capture_batch(model, names, batch)

    # Reference: retain the module outputs' gradients with plain autograd.
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, out):
            inputs[name] = args[0].detach()
            out.retain_grad()
            outputs[name] = out
        return hook

    model.requires_grad_(True)
    handles = [get_module(model, n).register_forward_hook(keep(n)) for n in names]
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    target_nll(logits, batch).sum().backward()
    for h in handles:
        h.remove()
    model.requires_grad_(False)
    n_positions = int(batch.predict_mask.sum())
    for name in names:
        assert captured[name].keys.shape[0] == n_positions
        torch.testing.assert_close(captured[name].keys, inputs[name][batch.predict_mask])
        torch.testing.assert_close(captured[name].grads, outputs[name].grad[batch.predict_mask])


def test_target_tokens_follow_the_prompt_in_context(tokenizer):
    prompt_ids, target_ids = split_pair(tokenizer, "The capital of France is", "Paris")
    assert tokenizer.decode(prompt_ids + target_ids) == "The capital of France is Paris"


@pytest.mark.parametrize("n", [5, 80])
def test_solve_is_the_ridge_normal_equation(n):
    torch.manual_seed(0)
    keys, dv = torch.randn(n, 40, dtype=torch.float64), torch.randn(n, 7, dtype=torch.float64)
    lam = torch.tensor(0.3, dtype=torch.float64)
    expected = torch.linalg.solve(keys.T @ keys + lam.exp() * torch.eye(40, dtype=torch.float64), keys.T @ dv)
    shift = solve_shift(keys, dv, lam)
    assert isinstance(shift, tuple) == (n <= 40)
    torch.testing.assert_close(shift_dense(shift), expected)


@pytest.mark.parametrize("n", [5, 80])
@pytest.mark.parametrize("kind", ["full", "diag"])
def test_covariance_weighted_solve(n, kind):
    torch.manual_seed(1)
    keys, dv = torch.randn(n, 40, dtype=torch.float64), torch.randn(n, 7, dtype=torch.float64)
    lam = torch.tensor(-0.5, dtype=torch.float64)
    if kind == "full":
        root = torch.randn(40, 40, dtype=torch.float64)
        cov = root @ root.T / 40 + 0.1 * torch.eye(40, dtype=torch.float64)
        precision = torch.linalg.inv(cov)
    else:
        cov_diag = torch.rand(40, dtype=torch.float64) + 0.1
        cov, precision = torch.diag(cov_diag), 1 / cov_diag
    expected = torch.linalg.solve(keys.T @ keys + lam.exp() * cov, keys.T @ dv)
    torch.testing.assert_close(shift_dense(solve_shift(keys, dv, lam, precision)), expected)


def test_delta_roundtrip_bytes_and_low_rank_storage(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=8))
    delta = editor.edit(REQUESTS[:1])
    n_tokens = len(split_pair(tokenizer, REQUESTS[0].prompt, REQUESTS[0].target)[1])
    for name in delta.module_names:
        d_in, d_out = weight_in_out(get_module(model, name)).shape
        assert isinstance(delta.shifts[name], tuple), "a few tokens must give low-rank factors"
        assert delta.rank(name) == 2 * n_tokens  # one rank per edited token and step
    again = Delta.from_bytes(delta.to_bytes())
    assert again.metadata["base_fingerprint"] == editor.base_fingerprint
    for name in delta.module_names:
        assert torch.equal(again.dense(name), delta.dense(name))
    with pytest.raises(ValueError, match="not a valid delta"):
        Delta.from_bytes(b"garbage")


def test_delta_cannot_be_applied_twice_or_reverted_unapplied(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    delta = SMEditor(model, tokenizer, EditorConfig(n_steps=1)).edit(REQUESTS[:1])
    with pytest.raises(RuntimeError):
        delta.revert_(model)
    delta.apply_(model)
    with pytest.raises(RuntimeError):
        delta.apply_(model)
    delta.revert_(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weight_state_rebuilds_any_active_set_bit_exactly(tokenizer, dtype):
    model = build_tiny("qwen2", len(tokenizer), dtype)
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, init_lr=1.0))
    d1, d2, d3 = (editor.edit([r]) for r in REQUESTS)
    before = _snapshot(model)
    state = WeightState(model, editor.module_names)
    base_hash = state.weights_hash()

    state.set_active([d1, d2, d3])
    h123 = state.weights_hash()
    assert h123 != base_hash
    state.set_active([d1, d3])  # undo the middle edit
    h13 = state.weights_hash()
    state.set_active([d1, d2, d3])
    assert state.weights_hash() == h123
    state.set_active([d1, d3])
    assert state.weights_hash() == h13
    state.set_active([])
    assert _same_bits(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_state_cached_sums_give_the_bits_of_a_fresh_rebuild(tokenizer, dtype):
    """The gate's moves (try active+[new], back to active, commit) through the cached running
    sums end in the same bits as a state rebuilt from the masters with no cache."""
    import random

    model = build_tiny("gpt2", len(tokenizer), dtype)
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, init_lr=1.0))
    pool = [editor.edit([r]) for r in REQUESTS] + [editor.edit(REQUESTS[:2])]
    cached = WeightState(model, editor.module_names)
    rng = random.Random(0)
    active: list = []
    hits = 0
    for _ in range(12):
        new = rng.choice(pool)
        cached.set_active(active + [new])  # the candidate
        cached.set_active(active)  # back
        if rng.random() < 0.7:
            active = active + [new]  # commit
        elif active:
            active = active[: rng.randrange(len(active))]  # a restore
        hits += cached._longest_cached_prefix(active)[0] > 0
        cached.set_active(active)
        got = cached.weights_hash()
        fresh = WeightState.__new__(WeightState)
        fresh.__dict__.update(cached.__dict__)
        fresh._sums, fresh.cached_states = [], 0
        fresh.set_active(list(active))
        assert fresh.weights_hash() == got
        cached.set_active(list(active))
    assert hits > 3  # the cache was actually used
    cached.set_active([])
    assert cached.weights_hash() == WeightState(model, editor.module_names).weights_hash()


def test_edit_is_deterministic_and_does_not_change_the_editor(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=8))
    editor_state = {k: v.clone() for k, v in editor.state_dict().items()}
    first = editor.edit(REQUESTS)
    second = editor.edit(REQUESTS)
    for name in first.module_names:
        assert torch.equal(first.dense(name), second.dense(name))
    assert all(torch.equal(v, editor_state[k]) for k, v in editor.state_dict().items())


def test_captures_can_wait_on_another_device_without_changing_the_delta(tokenizer):
    """``capture_device`` set (offloading a GPU edit's captures to the CPU: tests/editor_core/test_gpu.py
    runs it across devices) takes the same code path on a CPU and gives the same bits."""
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, init_lr=1.0))
    kept = editor.edit(REQUESTS)
    editor.capture_device = "cpu"
    again = editor.edit(REQUESTS)
    assert all(torch.equal(kept.dense(n), again.dense(n)) for n in kept.module_names)


def test_chunked_capture_gives_the_same_delta(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    whole = SMEditor(model, tokenizer, EditorConfig(n_steps=2, edit_batch_size=32, token_chunk=4096))
    chunked = SMEditor(model, tokenizer, EditorConfig(n_steps=2, edit_batch_size=1, token_chunk=2))
    chunked.load_state_dict(whole.state_dict())
    a, b = whole.edit(REQUESTS), chunked.edit(REQUESTS)
    for name in a.module_names:
        torch.testing.assert_close(a.dense(name), b.dense(name), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shrinkage", [0.01, 0.1, 1.0])
def test_key_moment_precision_is_the_shrunk_moment_inverse(shrinkage):
    torch.manual_seed(2)
    keys = torch.randn(300, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    moment = KeyMoment(12, "full", shrinkage)
    moment.update(keys[:100])
    moment.update(keys[100:])  # running average over batches = the moment of all keys
    second = keys.T @ keys / 300
    scale = torch.trace(second) / 12
    expected = torch.linalg.inv((1 - shrinkage) * second + shrinkage * scale * torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(moment.precision(torch.float64), expected)
    if shrinkage == 1.0:  # all identity: MALMEN's plain ridge, rescaled
        torch.testing.assert_close(moment.precision(torch.float64), torch.eye(12, dtype=torch.float64) / scale)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_key_shrinkage_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="key_shrinkage"):
        KeyMoment(4, "full", bad)


def test_key_shrinkage_travels_with_the_checkpoint(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, key_shrinkage=0.02))
    editor.save(tmp_path / "ed")
    loaded = SMEditor.load(tmp_path / "ed", model, tokenizer)
    assert loaded.config.key_shrinkage == 0.02
    assert [m.shrinkage for m in loaded.key_moments] == [0.02] * len(loaded.module_names)

    torch.manual_seed(0)
    same_weights = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, key_shrinkage=0.02))
    torch.manual_seed(0)
    other_setting = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, key_shrinkage=0.5))
    assert same_weights.compute_editor_id() != other_setting.compute_editor_id()  # it changes the edits

    # a checkpoint from before the setting existed keeps the shrinkage it was trained with
    meta_path = tmp_path / "ed" / "editor.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["key_shrinkage"]
    meta_path.write_text(json.dumps(meta))
    legacy = SMEditor.load(tmp_path / "ed", model, tokenizer)
    assert legacy.config.key_shrinkage == 0.1 == EditorConfig().key_shrinkage


def test_checkpoint_roundtrip_and_fingerprint_mismatch(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=8))
    with torch.no_grad():
        for p in editor.parameters():
            p.add_(0.01)
    editor.save(tmp_path / "ed")
    loaded = SMEditor.load(tmp_path / "ed", model, tokenizer)
    assert loaded.editor_id == editor.editor_id
    for k, v in editor.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k].cpu())

    other = build_tiny("gpt2", len(tokenizer))
    with torch.no_grad():
        other.lm_head.weight.mul_(2)
    with pytest.raises(CheckpointMismatchError, match="trained for base model"):
        SMEditor.load(tmp_path / "ed", other, tokenizer)
