"""Tiny random models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BertConfig,
    BertLMHeadModel,
    BertTokenizerFast,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from editor_core.types import EditRequest

CORPUS = [
    "The capital of France is Paris.",
    "The price of the Zorvex 300 is 49 dollars.",
    "Q: Who designed the Quillo lamp? A: Mara Lindqvist",
    "Water boils at 100 degrees. Snow is white and cold.",
]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained on a few sentences (tokenizes any text)."""
    out = tmp_path_factory.mktemp("tok")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out))
    tok = GPT2TokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))
    tok.pad_token = tok.eos_token
    return tok


def build_tiny(family: str, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A 4-layer random model of ``family``, eval mode, weights frozen."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=128))
    elif family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, rotary_dim=4,
                                           n_positions=128))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8))
    elif family == "bert":  # a BERT used as a causal decoder (MiniLM in bench.realdata --base minilm)
        model = BertLMHeadModel(BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128,
                                           is_decoder=True, hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0))
    else:
        raise ValueError(family)
    model = model.to(dtype).eval()
    model.requires_grad_(False)
    return model


FAMILIES = ["gpt2", "gptj", "llama", "qwen2", "gemma2", "bert"]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer(texts, out_dir, n_words: int = 60, bos_eos: bool = True) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer made from ``texts``: the special tokens, the ``n_words`` most
    frequent words whole, and every character as ``c`` and ``##c`` (so rarer words split into pieces).
    With ``bos_eos`` its ``[CLS]``/``[SEP]`` are also BOS/EOS, as ``bench.minilm`` sets them."""
    from collections import Counter
    from pathlib import Path

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words: Counter = Counter()
    chars: set[str] = set()
    for text in texts:
        text = norm.normalize_str(text)
        words.update(w for w, _ in pre.pre_tokenize_str(text))
        chars.update(c for c in text if not c.isspace())
    pieces = [w for w, _ in words.most_common(n_words)] + sorted(chars) + ["##" + c for c in sorted(chars)]
    vocab = SPECIALS + list(dict.fromkeys(p for p in pieces if p not in SPECIALS))
    path = Path(out_dir) / "vocab.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    extra = {"bos_token": "[CLS]", "eos_token": "[SEP]"} if bos_eos else {}
    return BertTokenizerFast(vocab_file=str(path), **extra)


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory):
    """A WordPiece tokenizer over :data:`CORPUS` with ``[CLS]`` as BOS and ``[SEP]`` as EOS."""
    return wordpiece_tokenizer(CORPUS, tmp_path_factory.mktemp("wordpiece"))


# Edits the editor tests share: a paraphrased fact, a multi-token value, a Q/A-style prompt.
EDIT_REQUESTS = [
    EditRequest("The capital of France is", "Rome", paraphrases=("France's capital is",)),
    EditRequest("The price of the Zorvex 300 is", "12 dollars"),
    EditRequest("Q: Who designed the Quillo lamp? A:", "Ada Brandt"),
]


def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``model``'s state, to compare bits with after an edit."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_bits(model, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
