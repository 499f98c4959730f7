"""Pretraining the demo LM and building the demo (tiny size; editors not trained here)."""

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from demo_world import build as demo_mod
from demo_world.build import DemoSize, build_demo, demo_paths
from editor_core.hypernet import TRAINING_VERSION
from demo_world.pretrain import (
    PretrainConfig,
    answer_accuracy,
    build_model,
    encode_pair,
    pretrain_lm,
    train_tokenizer,
)
from demo_world.world import World, generate_world


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    started = time.perf_counter()
    paths = build_demo(data_dir, size="tiny", seed=0, progress=False, train_editor=False)
    return data_dir, paths, time.perf_counter() - started


def test_tiny_demo_layout(tiny_demo):
    data_dir, paths, seconds = tiny_demo
    assert paths.root == data_dir / "demo" / "tiny" == demo_paths(data_dir, "tiny").root
    assert paths.world_json.is_file() and paths.stats_json.is_file() and paths.stamp_json.is_file()
    assert (paths.model_dir / "model.safetensors").is_file()
    assert not paths.has_editors
    assert seconds < 300, f"tiny demo took {seconds:.0f} s"  # ~30 s on 2 idle cores
    assert not list(paths.root.parent.glob(".tiny.build-*"))
    stats = json.loads(paths.stats_json.read_text())
    assert stats["pretrain"]["steps"] > 0 and stats["pretrain"]["tokens_per_second"] > 0
    assert set(stats["knowledge"]) >= {"seen", "anchor_other_entities", "unseen"}


def test_saved_model_and_tokenizer_load(tiny_demo):
    _, paths, _ = tiny_demo
    model = AutoModelForCausalLM.from_pretrained(paths.model_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(paths.model_dir, local_files_only=True)
    assert model.config.model_type == "gpt2"
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token is not None and tok.pad_token is not None
    for text in ["Zürich ☃ price?", "The price of Zorvex 300 is 49 dollars", "  tabs\tand\nnewlines 😀"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # no BOS is added (editor_core.tokens relies on it)
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]


def test_trained_model_knows_seen_facts_untrained_does_not(tiny_demo):
    _, paths, _ = tiny_demo
    world = World.load(paths.world_json)
    tok = AutoTokenizer.from_pretrained(paths.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(paths.model_dir, local_files_only=True).eval()
    seen = world.qa_pairs("seen")
    trained = answer_accuracy(model, tok, seen)
    torch.manual_seed(0)
    untrained = answer_accuracy(build_model(PretrainConfig.preset("tiny"), tok).eval(), tok, seen)
    assert trained >= 0.8, trained
    assert untrained <= 0.05, untrained
    # greedy generation produces the answer too (teacher-forced argmax == greedy decoding)
    prompt, answer = seen[0]
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if answer_accuracy(model, tok, [(prompt, answer)]) == 1.0:
        assert text.strip().startswith(answer)


def test_second_build_is_cached(tiny_demo):
    data_dir, paths, _ = tiny_demo
    before = _mtimes(paths.root)
    started = time.perf_counter()
    again = build_demo(data_dir, size="tiny", seed=0, progress=False, train_editor=False)
    assert time.perf_counter() - started < 5
    assert again == paths
    assert _mtimes(paths.root) == before


@pytest.fixture
def micro(monkeypatch):
    """Make the 'tiny' size much smaller so rebuild tests take seconds."""
    cfg = replace(PretrainConfig.preset("tiny"), max_steps=15, eval_every=10**9, max_seconds=None)
    monkeypatch.setitem(demo_mod.DEMO_SIZES, "tiny", DemoSize(n_products=12, pretrain=cfg))


def test_force_and_changed_inputs_rebuild(micro, tmp_path):
    paths = build_demo(tmp_path, size="tiny", seed=0, progress=False, train_editor=False)
    stamp = json.loads(paths.stamp_json.read_text())
    assert stamp["key"]["seed"] == 0 and stamp["editors"] is None
    assert build_demo(tmp_path, size="tiny", seed=0, progress=False, train_editor=False) == paths
    assert json.loads(paths.stamp_json.read_text()) == stamp  # cached

    build_demo(tmp_path, size="tiny", seed=0, force=True, progress=False, train_editor=False)
    forced = json.loads(paths.stamp_json.read_text())
    assert forced["built_at"] > stamp["built_at"]
    world0 = paths.world_json.read_text()
    assert world0 == generate_world(seed=0, n_products=12).to_json()

    build_demo(tmp_path, size="tiny", seed=1, progress=False, train_editor=False)  # other seed
    assert json.loads(paths.stamp_json.read_text())["key"]["seed"] == 1
    assert paths.world_json.read_text() != world0
    assert sorted(p.name for p in paths.root.parent.iterdir()) == [".tiny.lock", "tiny"]


def test_editors_are_added_to_a_cached_build(micro, tmp_path, monkeypatch):
    """train_editor=True on a demo built without editors trains only the editors (fake trainer)."""
    import sys
    import types

    calls = []

    class TrainConfig:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    def meta_train(model, tokenizer, train_requests, val_requests, config, out_dir, progress=True, preserve=None):
        assert train_requests and val_requests
        assert preserve is None  # the tiny demo's editor protects nothing
        train_entities = {r.meta["entity"] for r in train_requests}
        assert not train_entities & {r.meta["entity"] for r in val_requests}
        assert all(r.meta["split"] == "train" for r in train_requests + val_requests)
        calls.append(config.kwargs)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "editor.safetensors").write_text("fake")

    fake = types.ModuleType("editor_core.train")
    fake.TrainConfig, fake.meta_train = TrainConfig, meta_train
    monkeypatch.setitem(sys.modules, "editor_core.train", fake)

    paths = build_demo(tmp_path, size="tiny", progress=False, train_editor=False)
    model_before = _mtimes(paths.model_dir)
    assert not paths.has_editors and not calls
    build_demo(tmp_path, size="tiny", progress=False, train_editor=True)
    assert paths.has_editors and (paths.editor_dir / "editor.safetensors").is_file()
    assert [(c["n_steps"], c["reg"]) for c in calls] == [(2, "l2"), (1, "kl")]
    assert _mtimes(paths.model_dir) == model_before
    assert json.loads(paths.stamp_json.read_text())["editors"] == {"steps": 200, "edit_layers": None,
                                                                   "training": TRAINING_VERSION, "malmen": "plain ridge"}
    assert "editors" in json.loads(paths.stats_json.read_text())
    build_demo(tmp_path, size="tiny", progress=False, train_editor=True)  # cached now
    assert len(calls) == 2
    build_demo(tmp_path, size="tiny", progress=False, comparison=False)  # serving needs no more either
    assert len(calls) == 2

    # other editor settings retrain the editors (edit_layers names the modules), not the model
    spec = demo_mod.DEMO_SIZES["tiny"]
    monkeypatch.setitem(demo_mod.DEMO_SIZES, "tiny", replace(spec, edit_layers=2))
    build_demo(tmp_path, size="tiny", progress=False, train_editor=True)
    assert len(calls) == 4 and _mtimes(paths.model_dir) == model_before
    assert calls[-1]["modules"] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]

    # the SMEdit editor's regulariser and key shrinkage reach its training and its stamp key
    monkeypatch.setitem(demo_mod.DEMO_SIZES, "tiny", replace(spec, editor_reg=5e-4, editor_l2_metric="locality",
                                                             editor_locality_weight=0.9, editor_key_shrinkage=0.03))
    build_demo(tmp_path, size="tiny", progress=False, train_editor=True)
    assert len(calls) == 6 and _mtimes(paths.model_dir) == model_before
    smedit = calls[-2]
    assert (smedit["reg_coef"], smedit["l2_metric"], smedit["locality_weight"], smedit["key_shrinkage"]) == (
        5e-4, "locality", 0.9, 0.03)
    # MALMEN keeps its own plain ridge, whatever the SMEdit editor's shrinkage
    assert (calls[-1]["precondition"], calls[-1]["key_shrinkage"]) == ("none", 1.0)
    stamp = json.loads(paths.stamp_json.read_text())["editors"]
    assert stamp["reg"] == [5e-4, "locality", 0.9] and stamp["key_shrinkage"] == 0.03


def test_serving_builds_only_the_smedit_editor_and_the_benchmarks_add_malmen(micro, tmp_path, monkeypatch):
    """The service's first start trains only the editor it serves with; MALMEN comes when a
    benchmark asks for the comparison, without retraining SMEdit."""
    import sys
    import types

    trained = []

    def meta_train(model, tokenizer, train_requests, val_requests, config, out_dir, progress=True, preserve=None):
        trained.append(config.n_steps == 1 and config.reg == "kl" and "malmen" or "smedit")
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "editor.safetensors").write_text("fake")

    import editor_core.train as real_train

    fake = types.ModuleType("editor_core.train")
    fake.TrainConfig, fake.meta_train = real_train.TrainConfig, meta_train
    monkeypatch.setitem(sys.modules, "editor_core.train", fake)
    paths = build_demo(tmp_path, size="tiny", progress=False, comparison=False)
    assert trained == ["smedit"] and paths.editor_dir.is_dir() and not paths.malmen_dir.exists()
    assert json.loads(paths.stamp_json.read_text())["trained"] == ["smedit"]
    build_demo(tmp_path, size="tiny", progress=False, comparison=False)  # cached
    assert trained == ["smedit"]
    build_demo(tmp_path, size="tiny", progress=False)  # the benchmarks' call: MALMEN only
    assert trained == ["smedit", "malmen"] and paths.has_editors
    assert json.loads(paths.stamp_json.read_text())["trained"] == ["smedit", "malmen"]
    assert set(json.loads(paths.stats_json.read_text())["editors"]) >= {"smedit", "malmen"}


def test_failed_build_leaves_nothing_that_looks_complete(micro, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(demo_mod, "pretrain_lm", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_demo(tmp_path, size="tiny", progress=False, train_editor=False)
    paths = demo_paths(tmp_path, "tiny")
    assert not paths.root.exists()
    assert [p.name for p in paths.root.parent.iterdir()] == [".tiny.lock"]


def test_a_failure_while_training_editors_keeps_the_pretrained_model(micro, tmp_path, monkeypatch):
    """The expensive part (pretraining) survives; the next call trains only the editors."""
    calls = []

    def failing(*args, **kwargs):
        calls.append("fail")
        raise RuntimeError("editor training crashed")

    monkeypatch.setattr(demo_mod, "_train_editors", failing)
    with pytest.raises(RuntimeError, match="editor training crashed"):
        build_demo(tmp_path, size="tiny", progress=False, train_editor=True)
    paths = demo_paths(tmp_path, "tiny")
    assert paths.model_dir.is_dir() and not paths.has_editors
    assert json.loads(paths.stamp_json.read_text())["editors"] is None  # not marked as having editors
    model_before = _mtimes(paths.model_dir)

    def working(*args, **kwargs):
        calls.append("ok")
        return {"fake": True}

    monkeypatch.setattr(demo_mod, "pretrain_lm", lambda *a, **k: pytest.fail("pretrained again"))
    monkeypatch.setattr(demo_mod, "_train_editors", working)
    build_demo(tmp_path, size="tiny", progress=False, train_editor=True)
    assert calls == ["fail", "ok"] and _mtimes(paths.model_dir) == model_before
    assert json.loads(paths.stamp_json.read_text())["editors"] == demo_mod._editor_key(demo_mod.DEMO_SIZES["tiny"])


def test_pretrain_lm_on_plain_strings(tmp_path):
    texts = ["The sky is blue", "Grass is green", "Snow is white"] * 4
    cfg = PretrainConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=300,
                         max_steps=5, warmup_steps=2, batch_size=4)
    stats = pretrain_lm(texts, tmp_path / "m", cfg, progress=False)
    assert stats["steps"] == 5 and stats["accuracy"] is None and stats["stopped"] == "max_steps"
    assert (tmp_path / "m" / "config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).config.n_layer == 1


def test_encode_pair_matches_in_context_tokenization():
    texts = [f"{p} {a}" for p, a in generate_world(0, 20).pretraining_pairs()]
    tok = train_tokenizer(texts, vocab_size=400)
    p, a = encode_pair(tok, "The price of Zorvex 300 is", "49 dollars")
    assert p + a == tok("The price of Zorvex 300 is 49 dollars")["input_ids"]
    assert tok.decode(a) == " 49 dollars"


def test_the_small_demo_editor_is_trained_with_the_protected_solve():
    from demo_world.build import DEMO_SIZES, smedit_config

    small = smedit_config(DEMO_SIZES["small"], max_steps=200, seed=0, modules=None)
    assert (small.key_source, small.live_weight, small.live_history, small.n_steps) == ("corpus", 1.0, 128, 3)
    assert small.key_shrinkage == 0.005 and small.max_steps == 400 and small.batch_sizes == (1, 4, 16)
    tiny = smedit_config(DEMO_SIZES["tiny"], max_steps=60, seed=0, modules=None)
    assert (tiny.key_source, tiny.live_weight, tiny.n_steps, tiny.max_steps) == ("edits", 0.0, 2, 60)
