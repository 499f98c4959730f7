"""Text the service accepts: checks shared by every request model (native API and OpenAI layer).

A JSON string may carry a lone UTF-16 surrogate (``"\\ud800"``): Python decodes it into a ``str``
that cannot be encoded again, so it would fail deep inside tokenization or the database. Request
models reject it up front, naming the field, before anything is stored.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator


def has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _check(value: Any) -> Any:
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise ValueError("must be valid Unicode: it contains a lone UTF-16 surrogate")
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
