"""MEMIT baseline: it edits, spreads the edit over the layers, protects C0's keys, leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from editor_core.arch import default_modules, get_module, weight_in_out
from editor_core.capture import capture_keys
from editor_core.memit import MEMITConfig, MEMITEditor, _block_of, _layer_index
from editor_core.scores import teacher_forced
from editor_core.tokens import pair_batch
from editor_core.types import EditRequest
from tests.editor_core.conftest import build_tiny

KNOWN = [EditRequest("The capital of France is", " Paris"), EditRequest("Water boils at", " 100 degrees"),
         EditRequest("Snow is white and", " cold")]
EDITS = [EditRequest("The price of the Zorvex 300 is", " 12 dollars"),
         EditRequest("Who designed the Quillo lamp? A:", " Snow")]


def _acc(model, tok, requests) -> float:
    tf = teacher_forced(model, tok, [r.prompt for r in requests], [r.target for r in requests])
    return sum(s.token_acc for s in tf) / len(tf)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_memit_edits_and_restores_the_model(tokenizer, family) -> None:
    model = build_tiny(family, len(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = MEMITEditor(model, tokenizer, MEMITConfig(v_steps=40, mom2_weight=10.0)).fit(KNOWN)
    assert _acc(model, tokenizer, EDITS) < 0.5  # a random model does not know them
    delta = editor.edit(EDITS)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # edit() leaves it as it was
    assert set(delta.shifts) == set(default_modules(model))  # every edited layer takes its share
    with delta.applied_to(model):
        assert _acc(model, tokenizer, EDITS) >= 0.9
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_c0_protects_the_preserved_keys(tokenizer) -> None:
    """Against the plain ridge (C0 shrunk all the way to the identity), the preserved keys' outputs
    move far less per unit of movement at the edited keys."""
    model = build_tiny("gpt2", len(tokenizer))
    names = default_modules(model)

    def keys_of(requests):
        batch = pair_batch(tokenizer, [r.prompt for r in requests], [r.target for r in requests])
        return capture_keys(model, names, batch, positions="predict")

    known, edited = keys_of(KNOWN), keys_of(EDITS)
    ratios = []
    for shrinkage in (0.01, 1.0):
        editor = MEMITEditor(model, tokenizer, MEMITConfig(v_steps=20, mom2_weight=10.0, key_shrinkage=shrinkage))
        delta = editor.fit(KNOWN).edit(EDITS)
        moved = sum(float((known[n] @ delta.dense(n)).norm()) for n in names)
        wrote = sum(float((edited[n] @ delta.dense(n)).norm()) for n in names)
        ratios.append(moved / wrote)
    assert ratios[0] < 0.5 * ratios[1], ratios


def test_memit_needs_its_preservation_set_and_layer_names(tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    editor = MEMITEditor(model, tokenizer)
    with pytest.raises(RuntimeError, match="fit"):
        editor.edit(EDITS)
    with pytest.raises(ValueError, match="preservation set"):
        editor.fit([])
    assert _layer_index("transformer.h.3.mlp.c_proj") == 3 and _block_of("transformer.h.3.mlp.c_proj") == "transformer.h.3"
    assert _block_of("model.layers.12.mlp.down_proj") == "model.layers.12"
    with pytest.raises(ValueError, match="layer"):
        _layer_index("lm_head")
    assert weight_in_out(get_module(model, editor.module_names[0])).shape[0] == editor.moments[editor.module_names[0]].size
