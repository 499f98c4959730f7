"""Stop sequences: where a text ends, whole or arriving piece by piece.

The model generates past a stop sequence (``generate`` knows nothing of them here), so the text
is cut afterwards; a stream must also hold back a tail that could still become a stop sequence,
so that streamed and whole answers are the same text.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence, and whether one was found."""
    end = len(text)
    for stop in stops:
        idx = text.find(stop)
        if idx != -1:
            end = min(end, idx)
    return text[:end], end < len(text)


def _undecided_tail(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop sequence (not yet safe to send)."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = max(keep, k)
                break
    return keep


class StopFilter:
    """Text arriving in pieces, released as soon as no stop sequence can start in it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.stopped = False
        self._text = ""
        self._sent = 0

    def feed(self, piece: str) -> str:
        """The newly safe text after ``piece``; ``stopped`` once a stop sequence was reached."""
        self._text += piece
        visible, self.stopped = cut(self._text, self.stops)
        safe = len(visible) if self.stopped else len(self._text) - _undecided_tail(self._text, self.stops)
        return self._release(safe)

    def flush(self) -> str:
        """What is left once generation ended (the held-back tail, if no stop sequence)."""
        visible, stopped = cut(self._text, self.stops)
        self.stopped = self.stopped or stopped
        return self._release(len(visible))

    def _release(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        piece, self._sent = self._text[self._sent:upto], upto
        return piece
