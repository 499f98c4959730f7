"""Metrics and the evaluation harness: consistency between teacher forcing and decoding, locality,
baselines, and the model being left exactly as it was."""

from __future__ import annotations

import pytest
import torch

from editor_core.baselines import FTLConfig, FTLEditor, NoEdit
from editor_core.delta import Delta
from editor_core.evaluate import evaluate_editing
from editor_core.fluency import generation_fluency
from editor_core.scores import (
    gate_scores,
    generation_success,
    greedy_answers,
    greedy_keeps,
    greedy_token_ids,
    locality_reference,
    locality_scores,
    score_requests,
    teacher_forced,
)
from editor_core.types import EditRequest, LocalityProbe
from tests.editor_core.conftest import build_tiny

PROMPTS = ["The capital of France is", "Water boils at", "The price of the Zorvex 300 is"]


def test_greedy_answers_match_transformers_generate(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    ours = greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=5)
    for prompt, answer in zip(PROMPTS, ours):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == answer


def test_greedy_keeps_answers_what_decoding_again_would(tokenizer):
    """The gate's one-pass canary check equals decoding again, before and after a weight change."""
    torch.manual_seed(0)
    model = build_tiny("gpt2", len(tokenizer))
    prompts = PROMPTS * 3
    reference = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=4)
    assert all(1 <= len(r) <= 4 for r in reference)
    assert greedy_keeps(model, tokenizer, prompts, reference) == [True] * len(prompts)
    verdicts = []
    for scale in (1e-3, 0.3, 3.0):
        with torch.no_grad():
            saved = [p.detach().clone() for p in model.parameters()]
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        again = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=4)
        kept = greedy_keeps(model, tokenizer, prompts, reference)
        assert kept == [a == r for a, r in zip(again, reference)]
        verdicts += kept
        with torch.no_grad():
            for p, v in zip(model.parameters(), saved):
                p.copy_(v)
    assert True in verdicts and False in verdicts  # both outcomes were exercised


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gate_scores_in_one_pass_equal_the_separate_measures(tokenizer, family):
    """The service's fused gate pass gives what score_requests and greedy_keeps give apart,
    on a model that keeps some canaries and loses others (a perturbed copy)."""
    torch.manual_seed(1)
    model = build_tiny(family, len(tokenizer))
    canaries = PROMPTS * 2
    reference = greedy_token_ids(model, tokenizer, canaries, max_new_tokens=3)
    own = greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=3)  # targets the model gets (partly) right
    requests = [
        EditRequest(PROMPTS[2], own[2], paraphrases=("Zorvex 300 costs", PROMPTS[2])),
        EditRequest(PROMPTS[0], own[0] + " Lyon"),
        EditRequest(PROMPTS[1], "90 degrees Celsius", paraphrases=(PROMPTS[1],)),
    ]
    from editor_core.scores import _plain_head

    assert _plain_head(model)  # the head runs at the answer positions only: compared with full logits below
    verdicts, hit_rates = [], []
    for scale in (0.0, 1e-3, 0.3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        scores, kept = gate_scores(model, tokenizer, requests, canaries, reference, batch_size=4)  # several chunks
        apart = score_requests(model, tokenizer, requests, generation=False)
        assert kept == greedy_keeps(model, tokenizer, canaries, reference)
        for ours, theirs in zip(scores, apart):
            for name in ("es", "es_exact", "es_first", "gs", "gs_exact", "gs_first"):
                assert getattr(ours, name) == pytest.approx(getattr(theirs, name)), name
        verdicts += kept
        hit_rates += [s.es for s in scores]
    assert True in verdicts and False in verdicts  # canaries kept and lost were both compared
    assert max(hit_rates) > 0 and min(hit_rates) == 0  # target tokens hit and missed
    assert scores[1].gs is None
    with pytest.raises(ValueError, match="reference answer"):
        gate_scores(model, tokenizer, requests, canaries, reference[:1])


def test_generation_and_teacher_forcing_agree_on_the_models_own_answer(tokenizer):
    model = build_tiny("llama", len(tokenizer))
    answers = [a.strip() or "x" for a in greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=3)]
    scores = teacher_forced(model, tokenizer, PROMPTS, answers)
    gen = generation_success(model, tokenizer, PROMPTS, answers)
    for s, g, a in zip(scores, gen, answers):
        assert 0.0 <= s.token_acc <= 1.0
        assert s.exact == (s.token_acc == 1.0)
        if s.exact:
            assert g, f"teacher forcing says exact for {a!r}, decoding disagrees"


def test_locality_is_one_without_edit_and_drops_under_a_large_shift(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    probes = [LocalityProbe("Water boils at", "100 degrees"), LocalityProbe("Snow is")]
    ref = locality_reference(model, tokenizer, probes)
    assert locality_scores(model, tokenizer, probes, ref) == [1.0, 1.0]
    torch.manual_seed(0)
    name = "transformer.h.3.mlp.c_proj"
    big = Delta({name: 50 * torch.randn(128, 32)})
    with big.applied_to(model):
        assert min(locality_scores(model, tokenizer, probes, ref)) < 1.0
    assert locality_scores(model, tokenizer, probes, ref) == [1.0, 1.0]


def test_score_requests_reports_paraphrases_only_when_given(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    requests = [EditRequest(PROMPTS[0], "Rome", paraphrases=("France's capital is", "Capital of France:")),
                EditRequest(PROMPTS[1], "90 degrees")]
    scores = score_requests(model, tokenizer, requests)
    assert scores[0].gs is not None and scores[1].gs is None
    assert all(0.0 <= s.es <= 1.0 for s in scores)


def test_evaluate_harness_restores_the_model_and_no_edit_keeps_locality(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    requests = [EditRequest(p, "Rome", paraphrases=(p + ":",), locality=(LocalityProbe("Snow is", "white"),))
                for p in PROMPTS]
    report = evaluate_editing(model, tokenizer, NoEdit().edit, requests, batch_size=2, sequential=2)
    assert report["summary"]["ls"] == 1.0
    assert report["summary"]["n_requests"] == 3
    # no edit: each row's fluency is the unedited model's own on its prompt
    assert [r["fluency"] for r in report["per_request"]] == generation_fluency(model, tokenizer, PROMPTS)
    assert evaluate_editing(model, tokenizer, NoEdit().edit, requests, generation=False)["summary"]["fluency"] is None
    ftl = evaluate_editing(model, tokenizer, FTLEditor(model, tokenizer).edit, requests, batch_size=3)
    assert ftl["summary"]["n_requests"] == 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ftl_respects_its_norm_bound_and_fits_the_edits(tokenizer):
    model = build_tiny("gpt2", len(tokenizer))
    requests = [EditRequest(PROMPTS[0], "Rome")]
    base = teacher_forced(model, tokenizer, [PROMPTS[0]], ["Rome"])[0].mean_logprob
    editor = FTLEditor(model, tokenizer, FTLConfig(steps=20, lr=0.05, norm_bound=0.05))
    delta = editor.edit(requests)
    for name in delta.module_names:
        assert delta.dense(name).abs().max() <= 0.05 + 1e-7
    with delta.applied_to(model):
        after = teacher_forced(model, tokenizer, [PROMPTS[0]], ["Rome"])[0].mean_logprob
    assert after > base


def test_portability_scores_the_questions_that_follow_from_the_edit(tokenizer):
    """KnowEdit's portability: token accuracy of each kind's answers on the model as edited, and
    nothing for requests without such questions."""
    model = build_tiny("gpt2", len(tokenizer))
    follows = {"Reasoning": [{"prompt": "The capital of France is", "answer": "Rome"},  # the edit itself
                             {"prompt": "Water boils at", "answer": "90 degrees"}],
               "Subject_Aliasing": [{"prompt": "Water boils at", "answer": "90 degrees"}]}
    requests = [EditRequest(PROMPTS[0], "Rome", meta={"portability": follows}), EditRequest(PROMPTS[2], "5 dollars")]
    report = evaluate_editing(model, tokenizer, NoEdit().edit, requests, batch_size=2, generation=False)
    with_q, without = report["per_request"]
    assert "portability" not in without
    acc = [s.token_acc for s in teacher_forced(model, tokenizer, [PROMPTS[0], PROMPTS[1]], ["Rome", "90 degrees"])]
    assert with_q["portability_reasoning"] == pytest.approx(sum(acc) / 2)
    assert with_q["portability_subject_aliasing"] == pytest.approx(acc[1])
    assert with_q["portability"] == pytest.approx((acc[0] + 2 * acc[1]) / 3)
    assert report["summary"]["portability"] == pytest.approx(with_q["portability"])  # the one request with questions
    # an edit that writes the target raises the question that is the edit itself to its ES
    edited = evaluate_editing(model, tokenizer, FTLEditor(model, tokenizer, FTLConfig(norm_bound=1.0, lr=0.1, steps=40)).edit,
                              requests[:1], batch_size=1, generation=False)["per_request"][0]
    assert edited["es"] > acc[0]
    assert edited["portability_reasoning"] == pytest.approx((edited["es"] + edited["portability_subject_aliasing"]) / 2)
