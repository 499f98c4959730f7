"""Meta-training: the decoupled backward equals plain autograd; checkpoints resume; reg applied once."""

from __future__ import annotations

import pytest
import torch

from editor_core.arch import get_module
from editor_core.editor import SMEditor
from editor_core.solve import shift_dense, solve_shift
from editor_core.tokens import target_nll
from editor_core.capture import capture_keys
from editor_core.train import (
    TrainConfig,
    _generalisation_batch,
    _locality_batch,
    meta_train,
    shift_penalty,
    train_step,
)
from editor_core.types import EditRequest, LocalityProbe
from tests.editor_core.conftest import build_tiny

REQUESTS = [
    EditRequest("The capital of France is", "Rome", paraphrases=("France's capital is",),
                locality=(LocalityProbe("Water boils at", "100 degrees"),)),
    EditRequest("The price of the Zorvex 300 is", "12 dollars", paraphrases=("Zorvex 300 costs",),
                locality=(LocalityProbe("Snow is", "white"),)),
]


class _ZeroLR(torch.optim.SGD):
    """An optimiser that leaves parameters alone, so a test can read the gradients train_step made."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)

    def zero_grad(self, set_to_none: bool = True) -> None:  # keep .grad for inspection
        pass


def _reference_grads(editor: SMEditor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """S=1 loss differentiated end to end with autograd: shift kept in the graph via hooks."""
    captures = editor.capture(REQUESTS)
    editor.update_stats(0, captures)
    editor.zero_grad(set_to_none=True)
    shifts = {}
    for name, cap in captures.items():
        net, idx = editor.net_for(0, name)
        dv = net.value_diffs(cap.keys, cap.grads, idx)
        shifts[name] = shift_dense(solve_shift(cap.keys, dv, net.ridge_log(idx), editor.key_moment(name).precision(dv.dtype)))

    def hook(shift):
        return lambda module, args, out: out + args[0] @ shift

    handles = [get_module(editor.model, n).register_forward_hook(hook(s)) for n, s in shifts.items()]
    try:
        batch = _generalisation_batch(editor.tokenizer, REQUESTS, cfg)
        logits = editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = target_nll(logits, batch).mean() + cfg.reg_coef * sum(s.pow(2).sum() for s in shifts.values())
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    return {n: p.grad.clone() for n, p in editor.named_parameters() if p.grad is not None}


def test_decoupled_backward_matches_end_to_end_autograd(tokenizer):
    torch.manual_seed(0)
    model = build_tiny("gpt2", len(tokenizer)).double()
    cfg = TrainConfig(n_steps=1, reg="l2", reg_coef=0.5, rank=4, init_lr=0.5, batch_size=2, grad_clip=1e9)
    ref_editor = SMEditor(model, tokenizer, cfg.editor_config()).double()
    with torch.no_grad():  # make the blocks non-trivial so every parameter gets a gradient
        for p in ref_editor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    editor = SMEditor(model, tokenizer, cfg.editor_config()).double()
    editor.load_state_dict(ref_editor.state_dict())

    expected = _reference_grads(ref_editor, cfg)
    train_step(editor, REQUESTS, cfg, _ZeroLR(editor.parameters()))
    got = {n: p.grad for n, p in editor.named_parameters() if p.grad is not None}

    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_a_fresh_editor_trains_every_hypernetwork_parameter(tokenizer):
    """At init the blocks are the identity (B = 0, bias = 0: the pre-activation is exactly 0).
    Their nonlinearity must still pass a gradient there, or A, B, bias and scale never train and
    the "hypernetwork" is a learned step size (a bug the perturbed test above could not see)."""
    torch.manual_seed(0)
    model = build_tiny("gpt2", len(tokenizer))
    cfg = TrainConfig(n_steps=2, reg="l2", rank=4, init_lr=0.5, batch_size=2)
    editor = SMEditor(model, tokenizer, cfg.editor_config())
    train_step(editor, REQUESTS, cfg, _ZeroLR(editor.parameters()))
    dead = [n for n, p in editor.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    # A and scale act through B @ ... = 0 at init: they start moving once B has; all else at once
    assert [n for n in dead if not n.endswith((".A", ".scale.weight"))] == []
    assert any(n.endswith(".B") for n, _ in editor.named_parameters())
    editor.zero_grad(set_to_none=True)
    opt = torch.optim.Adam(editor.parameters(), lr=1e-3)
    for _ in range(2):
        train_step(editor, REQUESTS, cfg, opt)
    train_step(editor, REQUESTS, cfg, _ZeroLR(editor.parameters()))
    dead = [n for n, p in editor.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []


def test_kl_step_runs_and_needs_locality_answers(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    cfg = TrainConfig(n_steps=1, reg="kl", reg_coef=1.0, rank=4, init_lr=0.5, batch_size=2)
    editor = SMEditor(model, tokenizer, cfg.editor_config())
    opt = torch.optim.Adam(editor.parameters(), lr=1e-3)
    stats = train_step(editor, REQUESTS, cfg, opt)
    assert stats["kl"] >= 0
    with pytest.raises(ValueError, match="locality probes"):
        train_step(editor, [EditRequest("a b", "c")], cfg, opt)


def test_locality_l2_metric_is_the_norm_plus_the_output_change_on_unrelated_prompts(tokenizer):
    """l2_metric="locality": the squared norm of the total shift mixed with its squared effect on
    the locality prompts' keys (normalised to unit mean eigenvalue), with the exact gradient."""
    torch.manual_seed(0)
    model = build_tiny("gpt2", len(tokenizer))
    cfg = TrainConfig(n_steps=2, reg="l2", l2_metric="locality", rank=4, init_lr=0.5, batch_size=2,
                      locality_weight=0.7)
    editor = SMEditor(model, tokenizer, cfg.editor_config())
    keys = capture_keys(model, editor.module_names, _locality_batch(tokenizer, REQUESTS, cfg))
    with editor.working_copies():
        records = editor.run_steps(REQUESTS)
        try:
            value, grads = shift_penalty(editor, records, cfg, keys)
        finally:
            editor.revert_steps(records)
    expected = 0.0
    for name in editor.module_names:
        total = torch.stack([r.delta.dense(name) for r in records]).sum(0).requires_grad_(True)
        k = keys[name]
        assert k.shape[0] > len(REQUESTS)  # every token of every probe, not one row per probe
        cov = k.T @ k / k.shape[0]
        cov = cov / (torch.trace(cov) / cov.shape[0])
        penalty = 0.3 * total.pow(2).sum() + 0.7 * (total * (cov @ total)).sum()
        penalty.backward()
        torch.testing.assert_close(grads[name], total.grad, rtol=1e-4, atol=1e-8)
        expected += float(penalty.detach())
    assert value == pytest.approx(expected, rel=1e-5)
    frobenius, _ = shift_penalty(editor, records, TrainConfig(reg="l2"))
    assert value != pytest.approx(frobenius)  # the metric matters

    opt = torch.optim.Adam(editor.parameters(), lr=1e-3)
    assert train_step(editor, REQUESTS, cfg, opt)["l2"] > 0
    with pytest.raises(ValueError, match="locality probes"):
        train_step(editor, [EditRequest("a b", "c")], cfg, opt)


def test_meta_train_is_seeded_and_resumable(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    requests = REQUESTS * 4
    cfg = TrainConfig(n_steps=2, rank=4, batch_size=2, max_steps=4, val_every=2, val_size=2, seed=3)
    full = meta_train(model, tokenizer, requests, REQUESTS, cfg, tmp_path / "full", progress=False)

    half = TrainConfig(**{**cfg.__dict__, "max_steps": 2})
    meta_train(model, tokenizer, requests, REQUESTS, half, tmp_path / "resumed", progress=False)
    resumed = meta_train(model, tokenizer, requests, REQUESTS, cfg, tmp_path / "resumed", progress=False)
    again = meta_train(model, tokenizer, requests, REQUESTS, cfg, tmp_path / "again", progress=False)

    for k, v in full.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0, msg=f"not seeded: {k}")
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-7, msg=f"resume differs: {k}")
    loaded = SMEditor.load(tmp_path / "full", model, tokenizer)
    assert loaded.editor_id == full.editor_id

    other = TrainConfig(**{**cfg.__dict__, "reg_coef": 0.5})
    with pytest.raises(ValueError, match="other settings.*reg_coef"):
        meta_train(model, tokenizer, requests, REQUESTS, other, tmp_path / "full", progress=False)


def test_train_config_rejects_unknown_regulariser():
    with pytest.raises(ValueError, match="reg must be"):
        TrainConfig(reg="l1")
    with pytest.raises(ValueError, match="l2_metric must be"):
        TrainConfig(l2_metric="nuclear")
    with pytest.raises(ValueError, match="locality_weight"):
        TrainConfig(l2_metric="locality", locality_weight=1.5)


def test_step_size_calibration_averages_batches_and_refines_the_grid(tokenizer, monkeypatch):
    """The pick minimises the objective averaged over batches, to a quarter decade."""
    import math

    import editor_core.train as train_mod

    editor = SMEditor(build_tiny("gpt2", len(tokenizer)), tokenizer)
    seen_batches: list[int] = []

    def fake_objective(ed, batch, cfg):
        lr = ed.net_for(0, ed.module_names[0])[0].log_lr.weight[0, 0].exp().item()
        seen_batches.append(len(batch))
        # batch 1 alone would pick 10^-1.5; the mean of both is smallest at 10^-2.3
        centre = -1.5 if batch[0] is REQUESTS[0] else -3.1
        return (math.log10(lr) - centre) ** 2

    monkeypatch.setattr(train_mod, "_objective", fake_objective)
    cfg = TrainConfig(batch_size=1)
    lr = train_mod.calibrate_init_lr(editor, REQUESTS, cfg)
    assert math.isclose(math.log10(lr), -2.25, abs_tol=1e-9)  # coarse -2.5, then refined
    assert set(seen_batches) == {1} and len(seen_batches) == 2 * (len(train_mod.CALIBRATION_GRID) + 2)
    assert all(math.isclose(net.log_lr.weight.detach().exp().max().item(), lr, rel_tol=1e-6)
               for nets in editor.nets for net in nets.values())



def test_step_size_calibration_scores_the_locality_metric_training_uses(tokenizer):
    """The calibration objective's L2 term is measured as training measures it (l2_metric)."""
    from editor_core.train import _objective

    editor = SMEditor(build_tiny("gpt2", len(tokenizer)), tokenizer)
    for nets in editor.nets:
        for net in nets.values():
            net.log_lr.weight.data.fill_(0.0)  # a step size that moves the weights visibly

    def objective(**kw) -> float:
        return _objective(editor, REQUESTS, TrainConfig(reg_coef=1e3, **kw))

    plain = objective(l2_metric="frobenius")
    assert objective(l2_metric="locality", locality_weight=0.0) == pytest.approx(plain, rel=1e-5)
    assert objective(l2_metric="locality", locality_weight=1.0) != pytest.approx(plain, rel=1e-3)
