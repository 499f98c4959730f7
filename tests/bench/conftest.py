"""A tiny generated world and an untrained 2-layer GPT-2 that tokenizes it: suites run in seconds."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_setup():
    """(model, tokenizer, world): a 12-product world, a random model, no pretraining."""
    import torch

    from demo_world.pretrain import PretrainConfig, build_model, train_tokenizer
    from demo_world.world import generate_world

    world = generate_world(seed=0, n_products=12)
    texts = [f"{p} {a}" for p, a in world.pretraining_pairs()]
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(PretrainConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64), tok).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok, world


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results (JSON, PNG, editor cache) go to a temporary directory."""
    monkeypatch.setenv("SMEDIT_BENCH_RESULTS", str(tmp_path))
    return tmp_path
