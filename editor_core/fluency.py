"""Fluency of free generation after editing: the n-gram entropy ROME and EasyEdit report.

An edit that damages the model often shows first as degenerate text (the same words over and
over) rather than as wrong answers. The measure is the entropy, in bits, of the word bigram and
trigram distributions of a generated text, weighted 2/3 and 4/3 and averaged; repetitive text
scores low. Generations here are greedy and run past end-of-text, so the number is deterministic
and compares like with like: read it against the unedited model's on the same prompts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from editor_core.scores import greedy_token_ids
from editor_core.tokens import prompt_ids

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)
_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str) -> float:
    """Weighted mean of the bigram and trigram entropies (bits) of ``text``'s words; 0 for a
    text too short to have any n-gram."""
    words = _WORD.findall(text.lower())
    parts = []
    for n, weight in zip(NGRAM_ORDERS, NGRAM_WEIGHTS):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


def generation_fluency(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int = 32,
) -> list[float]:
    """Per prompt, the n-gram entropy of the prompt followed by its greedy ``max_new_tokens``
    continuation (the text a user would read), shortened to what the model's context holds
    after the longest prompt (a small model's positions run out)."""
    prompts = list(prompts)
    if not prompts:
        return []
    config = getattr(model, "config", None)
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context:
        longest = max(len(prompt_ids(tokenizer, p)) for p in prompts)
        max_new_tokens = max(1, min(max_new_tokens, context - longest))
    generated = greedy_token_ids(model, tokenizer, prompts, max_new_tokens, stop_at_eos=False)
    texts = [p + tokenizer.decode(ids, skip_special_tokens=True) for p, ids in zip(prompts, generated)]
    return [ngram_entropy(t) for t in texts]
