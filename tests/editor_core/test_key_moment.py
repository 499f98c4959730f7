"""What the solve protects: per-module key moments, a preservation corpus, live edits' keys."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from editor_core.delta import Delta
from editor_core.editor import EditorConfig, SMEditor
from editor_core.evaluate import evaluate_editing
from editor_core.key_moment import KeyMoment, LivePrecision
from editor_core.train import meta_train
from editor_core.train_config import TrainConfig
from editor_core.types import EditRequest
from tests.editor_core.conftest import EDIT_REQUESTS as REQUESTS, build_tiny

KNOWN = [EditRequest(prompt="The capital of France is", target=" Paris."),
         EditRequest(prompt="Water boils at", target=" 100 degrees."),
         EditRequest(prompt="Snow is", target=" white and cold.")]


def test_a_fitted_moment_is_frozen_and_live_keys_join_it_before_inverting():
    torch.manual_seed(0)
    moment = KeyMoment(6, "full", shrinkage=0.2)
    corpus = torch.randn(40, 6, dtype=torch.float64)
    moment.fit([corpus[:25], corpus[25:]])
    fitted = moment.moment.clone()
    torch.testing.assert_close(fitted, corpus.T @ corpus / 40)
    moment.update(torch.randn(10, 6))  # meta-training keys: ignored once fitted
    torch.testing.assert_close(moment.moment, fitted)

    live = torch.randn(3, 6, dtype=torch.float64)
    extra = live.T @ live
    expected = torch.linalg.inv(moment.shrunk() + extra)
    torch.testing.assert_close(moment.precision(torch.float64, extra), expected)
    torch.testing.assert_close(moment.precision(torch.float64), torch.linalg.inv(moment.shrunk()))
    # none = the identity (MALMEN's ridge), plus the live term when there is one
    plain = KeyMoment(6, "none")
    assert plain.precision(torch.float64) is None
    torch.testing.assert_close(plain.precision(torch.float64, extra), torch.linalg.inv(torch.eye(6, dtype=torch.float64) + extra))


def test_the_cached_inverse_follows_the_moment_through_to():
    moment = KeyMoment(4, "full")
    moment.update(torch.randn(8, 4))
    assert moment.precision(torch.float32).dtype == torch.float32
    assert moment._precision
    moment.to(torch.float64)
    assert not moment._precision, ".to() must drop the inverse derived from the old buffers"


def test_inputs_wider_than_the_full_limit_keep_the_diagonal_and_the_inverse_is_kept_in_one_dtype():
    from editor_core.key_moment import FULL_MAX_WIDTH

    assert KeyMoment(FULL_MAX_WIDTH, "full").mode == "full"
    with pytest.warns(UserWarning, match="keeps only the diagonal"):  # said, not silent
        wide = KeyMoment(FULL_MAX_WIDTH + 1, "full")
    assert wide.mode == "diag" and wide.moment.shape == (FULL_MAX_WIDTH + 1,)
    moment = KeyMoment(4, "full")
    moment.update(torch.randn(8, 4, dtype=torch.float64))
    p32 = moment.precision(torch.float32)
    assert list(moment._precision) == [torch.float32]  # no fp64 copy kept beside it
    assert torch.equal(p32, moment.precision(torch.float64).float())


def test_the_live_precision_is_updated_incrementally_and_equals_the_direct_inverse():
    torch.manual_seed(0)
    moment = KeyMoment(5, "full", shrinkage=0.1)
    moment.update(torch.randn(30, 5))
    deltas = [Delta({}, keys={"m": torch.randn(k, 5)}) for k in (2, 3, 1)]

    def direct(ds, alpha):
        k = torch.cat([d.keys["m"] for d in ds]).double()
        return moment.precision(torch.float64, alpha * k.T @ k)

    live = LivePrecision()
    for n in (1, 2, 3):  # appended one by one: rank-k updates of the cached inverse
        torch.testing.assert_close(live.get(0, "m", moment, 0.7, deltas[:n]), direct(deltas[:n], 0.7))
    torch.testing.assert_close(live.get(0, "m", moment, 0.7, deltas[1:]), direct(deltas[1:], 0.7))  # not a prefix
    torch.testing.assert_close(live.get(0, "m", moment, 2.0, deltas[1:]), direct(deltas[1:], 2.0))  # other weight
    moment.update(torch.randn(10, 5))  # the moment changed: the cache must not be reused
    torch.testing.assert_close(live.get(0, "m", moment, 2.0, deltas[1:]), direct(deltas[1:], 2.0))
    many = [Delta({}, keys={"m": torch.randn(4, 5)}) for _ in range(3)]  # 12 rows > 5 inputs: direct
    torch.testing.assert_close(live.get(1, "m", moment, 0.5, many), direct(many, 0.5))


def test_every_edited_module_has_its_own_moment_fitted_on_the_corpus(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=4, modules=None))
    assert len(editor.key_moments) == len(editor.module_names) >= 2
    editor.fit_key_moments(KNOWN)
    assert editor.config.key_source == "corpus"
    moments = [m.moment.clone() for m in editor.key_moments]
    assert not torch.allclose(moments[0], moments[1]), "two modules see different keys"
    editor.save(tmp_path / "ed")
    loaded = SMEditor.load(tmp_path / "ed", model, tokenizer)
    assert loaded.config.key_source == "corpus"
    for m, expected in zip(loaded.key_moments, moments):
        torch.testing.assert_close(m.moment, expected)
        assert m.fitted == 1


def test_protecting_live_edits_keeps_their_outputs_where_they_were(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    first, second = REQUESTS[:1], REQUESTS[1:2]

    def moved(live_weight: float) -> float:
        editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, init_lr=1.0, live_weight=live_weight))
        old = editor.edit(first)
        assert old.keys and all(k.shape[0] > 0 for k in old.keys.values()), "a delta records its keys"
        with old.applied_to(model):
            new = editor.edit(second, live=[old])
        return sum(float((old.keys[n].double() @ new.dense(n).double()).norm()) for n in new.module_names)

    assert moved(100.0) < 0.5 * moved(0.0)


def test_a_delta_keeps_its_keys_through_bytes_and_merge():
    a = Delta({"m": torch.randn(4, 3)}, {"x": "1"}, keys={"m": torch.randn(2, 4)})
    b = Delta({"m": torch.randn(4, 3)}, keys={"m": torch.randn(1, 4)})
    again = Delta.from_bytes(a.to_bytes())
    torch.testing.assert_close(again.keys["m"], a.keys["m"])
    assert Delta.merge([a, b]).keys["m"].shape == (3, 4)
    assert Delta.from_bytes(Delta({"m": torch.randn(4, 3)}).to_bytes()).keys == {}


def test_checkpoints_with_one_moment_per_shape_and_step_still_load(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=2, rank=4))
    editor.update_stats(0, editor.capture(REQUESTS))
    editor.save(tmp_path / "ed")
    state = load_file(tmp_path / "ed" / "editor.safetensors")
    shape = editor.slots[editor.module_names[0]][0]
    old = {k: v for k, v in state.items() if not k.startswith("key_moments.")}
    for step in range(2):  # the layout before TRAINING_VERSION 4
        old[f"nets.{step}.{shape}.key_moment.count"] = state["key_moments.0.count"].clone()
        old[f"nets.{step}.{shape}.key_moment.moment"] = state["key_moments.0.moment"].clone()
    save_file(old, tmp_path / "ed" / "editor.safetensors")
    loaded = SMEditor.load(tmp_path / "ed", model, tokenizer)
    for m in loaded.key_moments:
        torch.testing.assert_close(m.moment, state["key_moments.0.moment"])


def test_meta_training_fits_the_corpus_first_and_trains_under_live_edits(tokenizer, tmp_path):
    model = build_tiny("gpt2", len(tokenizer))
    cfg = TrainConfig(n_steps=2, rank=4, batch_size=2, max_steps=3, val_every=3, val_size=2, seed=1,
                      key_source="corpus", live_weight=1.0, live_history=3, batch_sizes=(1, 2))
    with pytest.raises(ValueError, match="preserve"):
        meta_train(model, tokenizer, REQUESTS * 3, REQUESTS, cfg, tmp_path / "none", progress=False)
    reference = SMEditor(model, tokenizer, cfg.editor_config())
    reference.fit_key_moments(KNOWN)
    editor = meta_train(model, tokenizer, REQUESTS * 3, REQUESTS, cfg, tmp_path / "ed", progress=False, preserve=KNOWN)
    assert editor.config.key_source == "corpus" and editor.config.live_weight == 1.0
    for trained, fitted in zip(editor.key_moments, reference.key_moments):
        torch.testing.assert_close(trained.moment, fitted.moment)  # training left the corpus moment alone
    with pytest.raises(ValueError, match="key_source"):
        EditorConfig(key_source="wiki")
    with pytest.raises(ValueError, match="live_history"):
        TrainConfig(live_history=-1)


def test_request_keys_are_each_requests_own_and_gather_in_any_order(tokenizer):
    from editor_core.key_moment import keys_only_delta, request_keys

    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, modules=None))
    names = editor.module_names
    every = request_keys(model, tokenizer, names, REQUESTS, max_length=64, chunk=2)  # chunks mix lengths
    assert len(every) == len(REQUESTS)
    for i, r in enumerate(REQUESTS):  # the rows of request i are what the model gives for it alone
        alone = keys_only_delta(model, tokenizer, names, [r], max_length=64).keys
        for name in names:
            torch.testing.assert_close(every.delta([i]).keys[name], alone[name], rtol=1e-5, atol=1e-5)
    order = [2, 0, 1]
    picked = keys_only_delta(model, tokenizer, names, [REQUESTS[i] for i in order], max_length=64).keys
    for name in names:
        torch.testing.assert_close(every.delta(order).keys[name], picked[name], rtol=1e-5, atol=1e-5)


def test_meta_training_protects_other_training_edits_keys_never_the_batchs_own(tokenizer, tmp_path, monkeypatch):
    import editor_core.train as train_module
    from editor_core.key_moment import request_keys

    model = build_tiny("gpt2", len(tokenizer))
    pool = REQUESTS * 2
    seen: list[tuple[list, dict]] = []
    real_step = train_module.train_step

    def spy(editor, batch, cfg, optimizer, live=()):
        seen.append((list(batch), {n: k.clone() for n, k in live[0].keys.items()}))
        return real_step(editor, batch, cfg, optimizer, live)

    monkeypatch.setattr(train_module, "train_step", spy)
    cfg = TrainConfig(n_steps=1, rank=4, batch_size=2, max_steps=3, val_every=3, val_size=2, seed=0,
                      key_source="corpus", live_weight=1.0, live_history=2, batch_sizes=(1, 2))
    meta_train(model, tokenizer, pool, REQUESTS, cfg, tmp_path / "ed", progress=False, preserve=KNOWN)
    editor = SMEditor(model, tokenizer, cfg.editor_config())
    keys = request_keys(model, tokenizer, editor.module_names, pool, cfg.max_length)
    assert len(seen) == 3
    for batch, live in seen:  # the keys of live_history=2 other training edits, never the batch's own
        others = [i for i, r in enumerate(pool) if all(r is not b for b in batch)]
        picks = [(i, j) for i in others for j in others if i != j]
        assert any(all(live[name].shape == keys.delta(pick).keys[name].shape
                       and torch.allclose(live[name], keys.delta(pick).keys[name], rtol=1e-5, atol=1e-5)
                       for name in live)
                   for pick in picks)


def test_the_harness_passes_live_deltas_in_the_order_they_were_applied(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    editor = SMEditor(model, tokenizer, EditorConfig(n_steps=1, rank=4, live_weight=1.0))
    seen: list[int] = []

    def edit_fn(batch, live):
        seen.append(len(live))
        return editor.edit(batch, live=live)

    evaluate_editing(model, tokenizer, edit_fn, REQUESTS[:3], batch_size=1, sequential=3, generation=False, pass_live=True)
    assert seen == [0, 1, 2]
