"""Token ids of the rows the gate reads on every edit, tokenized once per process.

The canaries and the re-checked live edits are the same strings edit after edit; tokenizing
them again each time costs a sizeable share of a gate pass on a small model. Bounded: a cache
past its size starts over.
"""

from __future__ import annotations

from collections.abc import Callable


class RowTokens:
    """``prompt_ids`` / ``split_pair`` of the editing library (given by the runtime), memoised."""

    def __init__(
        self, prompt_ids: Callable[[str], list[int]], split_pair: Callable[[str, str], tuple[list[int], list[int]]],
        max_entries: int = 65536,
    ) -> None:
        self._prompt_ids, self._split_pair = prompt_ids, split_pair
        self.max_entries = max_entries
        self._prompts: dict[str, list[int]] = {}
        self._pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def prompt(self, prompt: str) -> list[int]:
        """The token ids of a canary prompt."""
        ids = self._prompts.get(prompt)
        if ids is None:
            if len(self._prompts) >= self.max_entries:
                self._prompts.clear()
            ids = self._prompts[prompt] = self._prompt_ids(prompt)
        return ids

    def pair(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """Prompt and target ids of an edit's row (its prompt or a paraphrase, and its target)."""
        key = (prompt, target)
        ids = self._pairs.get(key)
        if ids is None:
            if len(self._pairs) >= self.max_entries:
                self._pairs.clear()
            ids = self._pairs[key] = self._split_pair(prompt, target)
        return ids
