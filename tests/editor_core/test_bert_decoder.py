"""A BERT used as a causal decoder (``BertLMHeadModel``, ``is_decoder=True``) with a WordPiece tokenizer.

BERT tokenizers wrap text in ``[CLS] ... [SEP]`` by default; the library must never put a ``[SEP]``
(the EOS) at the end of a prompt or anything special between prompt and target.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editor_core.arch import default_modules, get_module
from editor_core.editor import EditorConfig, SMEditor
from editor_core.scores import greedy_answers, greedy_keeps, greedy_token_ids
from editor_core.tokens import leading_ids, pair_batch, prompt_ids
from tests.editor_core.conftest import CORPUS, EDIT_REQUESTS as REQUESTS, build_tiny, same_bits as _same_bits
from tests.editor_core.conftest import snapshot as _snapshot, wordpiece_tokenizer



def test_bert_edits_the_mlp_outputs_of_its_last_layers(wordpiece):
    model = build_tiny("bert", len(wordpiece))
    assert default_modules(model) == ["bert.encoder.layer.2.output.dense", "bert.encoder.layer.3.output.dense"]
    assert isinstance(get_module(model, default_modules(model)[0]), nn.Linear)


def test_wordpiece_pairs_have_no_special_tokens_inside(wordpiece):
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    assert leading_ids(wordpiece) == [cls]  # [CLS] is the BOS: it starts every text
    batch = pair_batch(wordpiece, [r.prompt for r in REQUESTS], [r.target for r in REQUESTS])
    for b, row in enumerate(batch.input_ids.tolist()):
        ids = row[: int(batch.attention_mask[b].sum())]
        assert ids[0] == cls and cls not in ids[1:] and sep not in ids
    assert wordpiece.decode(batch.labels[0][batch.predict_mask[0]]) == "rome"
    ids = prompt_ids(wordpiece, "The capital of France is")
    assert ids[0] == cls and ids[-1] != sep and sep not in ids
    # the same tokenizer without a BOS: nothing is added at all
    plain = wordpiece_tokenizer(CORPUS, _tmp_dir(), bos_eos=False)
    assert leading_ids(plain) == [] and plain.cls_token_id not in prompt_ids(plain, "The capital of France is")
    batch = pair_batch(plain, ["The capital of France is"], ["Paris"])
    assert not set(batch.input_ids[0].tolist()) & {plain.cls_token_id, plain.sep_token_id}


def _tmp_dir():
    import tempfile

    return tempfile.mkdtemp(prefix="wordpiece-")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_step_edit_on_a_bert_decoder_applies_and_reverts_exactly(wordpiece, dtype):
    model = build_tiny("bert", len(wordpiece), dtype)
    editor = SMEditor(model, wordpiece, EditorConfig(n_steps=3, rank=8, init_lr=1.0))
    before = _snapshot(model)
    delta = editor.edit(REQUESTS)
    assert _same_bits(model, before)
    assert sorted(delta.module_names) == sorted(default_modules(model)) and delta.sq_norm() > 0
    delta.apply_(model)
    assert not _same_bits(model, before)
    delta.revert_(model)
    assert _same_bits(model, before)


def test_greedy_decoding_with_the_cache_matches_full_forward_passes(wordpiece):
    model = build_tiny("bert", len(wordpiece))
    prompts = ["The capital of France is", "Water boils at"]
    got = greedy_token_ids(model, wordpiece, prompts, max_new_tokens=4)
    for prompt, tokens in zip(prompts, got):
        ids = prompt_ids(wordpiece, prompt)
        assert ids[-1] != wordpiece.sep_token_id
        for _ in range(len(tokens)):
            with torch.no_grad():
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert tokens == ids[-len(tokens):][: len(tokens)]
    from editor_core.scores import _plain_head

    assert not _plain_head(model)  # BERT's head transforms before it decodes: full logits
    assert greedy_keeps(model, wordpiece, prompts, got) == [True, True]
    assert all(isinstance(a, str) for a in greedy_answers(model, wordpiece, prompts, 3))


def test_finetune_lm_trains_a_bert_decoder_and_saves_a_loadable_model(wordpiece, tmp_path):
    from editor_core.models import load_model
    from demo_world.pretrain import PretrainConfig, answer_accuracy, finetune_lm

    model = build_tiny("bert", len(wordpiece))
    pairs = [("The capital of France is", "Paris"), ("Water boils at", "100 degrees")]
    cfg = PretrainConfig(max_steps=60, lr=3e-3, batch_size=2, warmup_steps=5, eval_every=20, max_seconds=60)
    stats = finetune_lm(model, wordpiece, pairs, tmp_path / "lm", cfg, progress=False)
    assert stats["steps"] <= 60 and stats["accuracy"] == 1.0 and stats["vocab_size"] == len(wordpiece)
    loaded, tok = load_model(tmp_path / "lm", device="cpu")
    assert type(loaded).__name__ == "BertLMHeadModel" and loaded.config.is_decoder
    assert (tok.bos_token, tok.eos_token) == ("[CLS]", "[SEP]")
    assert answer_accuracy(loaded, tok, pairs) == 1.0
    assert greedy_answers(loaded, tok, ["The capital of France is"], 1) == ["paris"]


def test_finetune_lm_needs_an_eos_token(tmp_path):
    from demo_world.pretrain import finetune_lm

    tok = wordpiece_tokenizer(CORPUS, tmp_path / "tok", bos_eos=False)
    with pytest.raises(ValueError, match="EOS"):
        finetune_lm(build_tiny("bert", len(tok)), tok, [("a", "b")], tmp_path / "lm", progress=False)
