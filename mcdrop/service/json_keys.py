"""Repeated keys in a request's JSON object, which JSON parsers (pydantic's too) silently resolve to the last."""

from __future__ import annotations

import json
import re

__all__ = ["duplicate_key"]

_KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:')


def duplicate_key(body: bytes) -> str | None:
    """The first key given twice in ``body``, JSON text that already parsed as a request, else None.

    A request's JSON has one object (its values are numbers, strings and arrays of numbers), so every
    ``"...":`` in the text is one of its keys: a string value never ends in a quote followed by a colon, and a
    scan that starts at an escaped quote inside a string ends at that string's closing quote, followed by ``,``
    or ``}``.  The scan jumps from quote to quote, so a 16 MB body of numbers costs a few milliseconds.
    """
    seen: set[str] = set()
    for match in _KEY.finditer(body):
        key = json.loads(b'"' + match[1] + b'"')  # escapes decoded: "\\u006dode" is "mode"
        if key in seen:
            return key
        seen.add(key)
    return None
