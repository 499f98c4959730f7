"""Plain data types shared by every part of the editing library.

They hold text only (no tensors), so loaders, the service and the editor can pass them around
without caring about devices or tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LocalityProbe:
    """An unrelated prompt whose behaviour an edit must not change.

    ``answer`` is optional: with it, locality is measured on the answer tokens (teacher forced);
    without it, on the model's own greedy continuation before the edit.
    """

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into the model: after the edit, ``prompt`` should be completed by ``target``.

    ``paraphrases`` are other phrasings of the same question (used for meta-training loss and for
    measuring generalisation); ``locality`` probes are unrelated prompts that must keep their answers.
    ``ground_truth`` is the old answer when known (CounterFact reports new-vs-old probability).
    """

    prompt: str
    target: str
    paraphrases: tuple[str, ...] = ()
    locality: tuple[LocalityProbe, ...] = ()
    subject: str | None = None
    ground_truth: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("EditRequest.prompt must be a non-empty string")
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError("EditRequest.target must be a non-empty string")
        # Accept lists from callers but store tuples so requests stay hashable.
        object.__setattr__(self, "paraphrases", tuple(self.paraphrases))
        object.__setattr__(self, "locality", tuple(self.locality))
