"""ROME's n-gram entropy: repetitive text scores lower than varied text; generation is scored."""

from __future__ import annotations

import math

import pytest

from editor_core.fluency import generation_fluency, ngram_entropy
from editor_core.scores import greedy_token_ids
from tests.editor_core.conftest import build_tiny


def test_ngram_entropy_by_hand() -> None:
    # 4 distinct bigrams of 5 words: 2 bits; 3 distinct trigrams: log2(3) bits
    assert ngram_entropy("a b c d e") == pytest.approx((2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2)
    assert ngram_entropy("the the the the the the") == 0.0  # one bigram, one trigram
    assert ngram_entropy("hello") == 0.0
    assert ngram_entropy("") == 0.0


def test_repetition_scores_lower_than_varied_text() -> None:
    varied = "the price of the new router is forty dollars and it ships from germany next week"
    loop = "the price is the price is the price is the price is the price is the price is"
    assert ngram_entropy(varied) > ngram_entropy(loop) + 1.0
    assert ngram_entropy("Price, PRICE price") == ngram_entropy("price , price price")  # case, punctuation


def test_generation_fluency_scores_the_prompt_and_its_full_continuation(tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    prompts = ["The capital of France is", "Water boils at"]
    scores = generation_fluency(model, tokenizer, prompts, max_new_tokens=12)
    continuations = greedy_token_ids(model, tokenizer, prompts, 12, stop_at_eos=False)
    assert [len(c) for c in continuations] == [12, 12]  # past end-of-text: every text is as long
    texts = [p + tokenizer.decode(c, skip_special_tokens=True) for p, c in zip(prompts, continuations)]
    assert scores == [ngram_entropy(t) for t in texts]


def test_generation_fluency_stays_inside_the_context(tokenizer) -> None:
    model = build_tiny("gpt2", len(tokenizer))
    context = model.config.n_positions
    long_prompt = " ".join(["Water boils at"] * 200)
    assert len(tokenizer(long_prompt)["input_ids"]) > context - 32
    prompt = tokenizer.decode(tokenizer(long_prompt)["input_ids"][: context - 4])
    scores = generation_fluency(model, tokenizer, [prompt, "The sky is"], max_new_tokens=32)
    assert len(scores) == 2
