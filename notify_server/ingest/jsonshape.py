"""How deep a JSON text nests and how many values it holds, read off its bytes before anything is built.

orjson builds whatever it is handed, up to 1,024 levels deep, but writes at most 254 back: a job nested
deeper than that could be read and then never settled (its result cannot be written). A JSON text is
therefore measured first, and refused above `max_depth` levels or `max_nodes` values (object keys
count as values). All of it runs at C speed (byte counts, `translate`, `replace`, one regex at most):

- values: the text's length bounds them (each takes a byte at least), or its brackets and separators do;
  only a long text full of separators is counted exactly (strings blanked out first);
- depth: its brackets bound it; past `max_depth` of them, the structure's brackets alone (strings
  dropped) are peeled one level per round, innermost pairs removed, for `max_depth` rounds at most.
"""

from __future__ import annotations

import re

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
_NOT_STRUCTURE = re.compile(rb"[^\[\]{},:]++")
_SQUARE = bytes.maketrans(b"{}", b"[]")  # one kind of bracket: an object nests as a list does
_NOT_QUOTE_OR_BRACKET = bytes(set(range(256)) - set(b'"[]{}\\'))
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))


def problem(text: bytes, *, max_depth: int, max_nodes: int) -> str | None:
    """Why `text` (JSON) is too deep or too large, or None. Exact for compact JSON (what orjson writes);
    for other text an empty container with whitespace inside (`[ ]`) may count as holding a value."""
    opens = text.count(b"[") + text.count(b"{")  # whatever strings hold too: an upper bound
    if opens > max_depth and _depth(_brackets(text), max_depth) > max_depth:
        return f"nests deeper than {max_depth} levels"
    if len(text) > max_nodes and opens + text.count(b",") + text.count(b":") >= max_nodes:
        skeleton = _NOT_STRUCTURE.sub(b"0", _STRING.sub(b"0", text))  # every scalar and string is one "0"
        empty = skeleton.count(b"[]") + skeleton.count(b"{}")
        values = 1 + skeleton.count(b",") + skeleton.count(b":") + skeleton.count(b"[") + skeleton.count(b"{") - empty
        if values > max_nodes:
            return f"holds more than {max_nodes} values"
    return None


def _brackets(text: bytes) -> bytes:
    """The text's structural brackets, as `[` and `]`. Usually without a regex: kept quotes and brackets,
    `""` pairs dropped — when no string holds a bracket, a quote or an escape, only brackets are left."""
    kept = text.translate(_SQUARE, _NOT_QUOTE_OR_BRACKET)
    if b"\\" not in kept:
        brackets = kept.replace(b'""', b"")  # each string's quotes, side by side when nothing is inside
        if b'"' not in brackets:
            return brackets
    return _STRING.sub(b"", text).translate(_SQUARE, _NOT_BRACKET)


def _depth(brackets: bytes, limit: int) -> int:
    """How deeply `brackets` nest, counted up to limit + 1: each round removes the innermost pairs."""
    rounds = 0
    while brackets and rounds <= limit:
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):  # unbalanced: not JSON, which orjson says next
            break
        brackets = peeled
        rounds += 1
    return rounds
