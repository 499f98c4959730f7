"""Editor checkpoints: large key moments travel packed, and come back as the symmetric moment."""

from __future__ import annotations

import json

import torch

from editor_core import checkpoint
from editor_core.editor import EditorConfig, SMEditor
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, build_tiny


def test_large_moments_are_stored_packed_and_load_back_symmetric(tokenizer, tmp_path, monkeypatch):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2))
    editor.fit_key_moments(REQUESTS)
    whole = editor.save(tmp_path / "whole")
    monkeypatch.setattr(checkpoint, "PACK_MOMENT_BYTES", 1024)  # the tiny model's 128 x 128 moments count as large
    packed = editor.save(tmp_path / "packed")

    info = json.loads((packed / "editor.json").read_text())
    assert info["packed_moments"] == [f"key_moments.{i}.moment" for i in range(len(editor.module_names))]
    assert "packed_moments" not in json.loads((whole / "editor.json").read_text())
    assert (packed / "editor.safetensors").stat().st_size < (whole / "editor.safetensors").stat().st_size
    assert checkpoint.checkpoint_bytes(editor.state_dict()) < sum(
        t.numel() * t.element_size() for t in editor.state_dict().values())

    loaded = SMEditor.load(packed, model, tokenizer)
    for mine, theirs in zip(editor.key_moments, loaded.key_moments):
        assert theirs.moment.dtype == torch.float64 and torch.equal(theirs.moment, theirs.moment.T)
        torch.testing.assert_close(theirs.moment, mine.moment.float().double())
    exact = SMEditor.load(whole, model, tokenizer)  # small moments: bit for bit
    assert all(torch.equal(a.moment, b.moment) for a, b in zip(editor.key_moments, exact.key_moments))
    delta, again = editor.edit(REQUESTS[:1]), loaded.edit(REQUESTS[:1])
    for name in delta.module_names:
        torch.testing.assert_close(again.dense(name), delta.dense(name), rtol=1e-3, atol=1e-6)
