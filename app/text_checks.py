"""Text the service accepts: checks shared by every request model (native API and OpenAI layer).

A JSON string may carry a lone UTF-16 surrogate (``"\\ud800"``): Python decodes it into a ``str``
that cannot be encoded again, so it would fail deep inside tokenization or the database. Request
models reject it up front, naming the field, before anything is stored.

Control characters: every string of a request may hold tab, line feed and carriage return, and no
other C0 or C1 control character (NUL, bell, backspace, ESC and so ANSI escape sequences, DEL,
U+0080-U+009F). Such characters are never part of a fact; in a target they would be generated into
answers and reach terminals and logs, and PostgreSQL cannot store NUL at all. A request with one is
a 422 (400 on the OpenAI endpoints) naming the field and the character's code point.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator


def has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


ALLOWED_CONTROLS = frozenset("\t\n\r")


def first_control_character(text: str) -> str | None:
    """The first control character of ``text`` that the policy above refuses, if any."""
    for c in text:
        if (c < " " or "\x7f" <= c <= "\x9f") and c not in ALLOWED_CONTROLS:
            return c
    return None


def _check(value: Any) -> Any:
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise ValueError("must be valid Unicode: it contains a lone UTF-16 surrogate")
        bad = first_control_character(value)
        if bad is not None:
            raise ValueError(f"must not contain control characters other than tab and newlines: it contains "
                             f"U+{ord(bad):04X}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key)
            _check(item)
    return value


class ValidUnicode:
    """Mixin for pydantic models: every string field (and strings inside lists/dicts) is checked."""

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        return _check(value)
