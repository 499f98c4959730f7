"""Where the gate's canary prompts come from: settings and files, nothing else.

A canary is a prompt whose greedy answer an edit about another fact should not change. The
operator lists them (``SMEDIT_CANARY_PROMPTS``) or points at a file with one prompt per line
(``SMEDIT_CANARY_FILE``; the demo build writes 128 facts its model knows next to it). Without
either, a few generic prompts stand in. The gate compares each canary's greedy answer with the
base model's, so the more canaries, the finer the side-effect budget it can enforce: with n
canaries a budget of b is spent once more than b*n of them changed.
"""

from __future__ import annotations

import random
from pathlib import Path

from app.settings import Settings

DEFAULT_CANARIES = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "The author of Hamlet is",
    "One plus one equals",
    "The color of the sky on a clear day is",
    "The chemical symbol for gold is",
    "The first month of the year is",
]


def load_canaries(settings: Settings) -> list[str]:
    """Canaries from settings, then from the canary file; the defaults when both are empty.

    Duplicates are dropped; beyond ``canary_count`` a fixed sample (the same on every start, so
    the side-effect measurements of a deployment stay comparable) is kept, in file order."""
    prompts = list(settings.canary_prompts)
    if settings.canary_file is not None:
        path = Path(settings.canary_file)
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if len(prompts) > settings.canary_count:
        keep = set(random.Random(0).sample(range(len(prompts)), settings.canary_count))
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    return prompts or list(DEFAULT_CANARIES)
