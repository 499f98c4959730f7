"""Turning (prompt, target) text pairs into padded teacher-forcing batches.

Every consumer (capture, training loss, metrics) needs the same thing: the prompt followed by the
target, and the positions whose next-token prediction is a target token. Keeping it in one place
keeps "which token counts" identical between editing and measuring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class PairBatch:
    """A right-padded batch of ``prompt + target`` sequences.

    ``predict_mask[b, t]`` is true where the logits at position ``t`` predict a target token, and
    ``labels[b, t]`` is that token (``-100`` elsewhere), so ``logits[predict_mask]`` lines up with
    ``labels[predict_mask]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    predict_mask: torch.Tensor
    labels: torch.Tensor
    target_lengths: list[int]

    def to(self, device: torch.device) -> "PairBatch":
        return PairBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.predict_mask.to(device),
            self.labels.to(device),
            self.target_lengths,
        )

    @property
    def row_of_position(self) -> torch.Tensor:
        """For each predicting position (row-major order), the index of its sequence."""
        return torch.nonzero(self.predict_mask, as_tuple=True)[0]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def leading_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """A BOS token for models that were trained with one (Llama, Gemma), else nothing."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(probe) > 0 and probe[0] == bos:
        return [bos]
    return []


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of a prompt as the model reads it on its own: the leading BOS (if any) and the text.

    ``tokenizer(text)`` would add whatever the tokenizer's template adds, which is right for GPT-2
    (nothing) and Llama (BOS) but not for a BERT-style WordPiece tokenizer used as a decoder: its
    ``[CLS] text [SEP]`` would end every prompt with an end-of-text token.
    """
    return leading_ids(tokenizer) + _encode(tokenizer, text)


def split_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target as it continues the prompt.

    The target is tokenized in context (``prompt + " " + target``) so byte-level BPE and
    SentencePiece both get the leading-space token they would see in running text.
    """
    target = target.strip()
    prompt_ids = _encode(tokenizer, prompt)
    joiner = "" if prompt.endswith((" ", "\n")) else " "
    full_ids = _encode(tokenizer, prompt + joiner + target)
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        target_ids = full_ids[len(prompt_ids) :]
    else:
        target_ids = _encode(tokenizer, joiner + target)
    if not target_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return prompt_ids, target_ids


def pair_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    max_length: int | None = None,
) -> PairBatch:
    """Build a right-padded batch; prompts are cut from the left if ``max_length`` is exceeded."""
    if len(prompts) != len(targets):
        raise ValueError("prompts and targets must have the same length")
    lead = leading_ids(tokenizer)
    rows: list[tuple[list[int], int]] = []
    for prompt, target in zip(prompts, targets):
        prompt_ids, target_ids = split_pair(tokenizer, prompt, target)
        ids = lead + prompt_ids + target_ids
        if max_length is not None and len(ids) > max_length:
            ids = ids[len(ids) - max_length :]
            if len(ids) <= len(target_ids):
                raise ValueError("max_length leaves no room for the prompt")
        rows.append((ids, len(target_ids)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(rows)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    predict_mask = torch.zeros((n, width), dtype=torch.bool)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for b, (ids, n_target) in enumerate(rows):
        length = len(ids)
        input_ids[b, :length] = torch.tensor(ids)
        attention_mask[b, :length] = 1
        first = length - n_target - 1  # position predicting the first target token
        predict_mask[b, first : length - 1] = True
        labels[b, first : length - 1] = torch.tensor(ids[length - n_target :])
    return PairBatch(input_ids, attention_mask, predict_mask, labels, [t for _, t in rows])


def per_sequence_mean(values: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Average per-position values ``[n_positions]`` over each sequence's target tokens."""
    rows = batch.row_of_position.to(values.device)
    n = batch.input_ids.shape[0]
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.tensor(batch.target_lengths, dtype=values.dtype, device=values.device)
    return sums / counts


def target_nll(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per-sequence mean negative log-likelihood of the target tokens, shape ``[batch]``."""
    picked = logits[batch.predict_mask].float()
    labels = batch.labels[batch.predict_mask]
    nll = torch.nn.functional.cross_entropy(picked, labels, reduction="none")
    return per_sequence_mean(nll, batch)
