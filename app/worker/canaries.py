"""Where the gate's canary prompts come from: settings and files, nothing else.

A canary is a prompt whose greedy answer an edit about another fact should not change. The
operator lists them (``SMEDIT_CANARY_PROMPTS``) or points at a file with one prompt per line
(``SMEDIT_CANARY_FILE``; the demo build writes one next to its model). Without either, a few
generic prompts stand in.
"""

from __future__ import annotations

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
    """Canaries from settings, then from the canary file; the defaults when both are empty."""
    prompts = list(settings.canary_prompts)
    if settings.canary_file is not None:
        path = Path(settings.canary_file)
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts or list(DEFAULT_CANARIES)
