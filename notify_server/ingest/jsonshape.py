"""How deep a JSON text nests and how many values it holds, read off its bytes before anything is built.

orjson builds whatever it is handed, up to 1,024 levels deep, but writes at most 254 back: a job nested
deeper than that could be read and then never settled (its result cannot be written). A JSON text is
therefore measured first, and refused above `max_depth` levels or `max_nodes` values (object keys
count as values). Usually a byte count or two settles it: brackets bound the depth, and the length
bounds the values (every value takes a byte at least), or brackets and separators do. Only a text near a
limit is measured exactly — strings blanked out by one regular expression, then depth and values counted
on what is left — all at C speed, linear in the bytes.
"""

from __future__ import annotations

import itertools
import re
from array import array

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
_NOT_STRUCTURE = re.compile(rb"[^\[\]{},:]++")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def problem(text: bytes, *, max_depth: int, max_nodes: int) -> str | None:
    """Why `text` (JSON) is too deep or too large, or None. Counts are exact for compact JSON (what orjson
    writes) and at worst too high by one per empty container that has whitespace inside (`[ ]`)."""
    opens = text.count(b"[") + text.count(b"{")  # with whatever strings hold: an upper bound of the depth
    if opens <= max_depth and (len(text) <= max_nodes or opens + text.count(b",") + text.count(b":") < max_nodes):
        return None  # every value takes a byte at least; or brackets and separators bound the values
    skeleton = _NOT_STRUCTURE.sub(b"0", _STRING.sub(b"0", text))  # every scalar and string is one "0"
    opens = skeleton.count(b"[") + skeleton.count(b"{")
    empty = skeleton.count(b"[]") + skeleton.count(b"{}")
    values = 1 + skeleton.count(b",") + skeleton.count(b":") + opens - empty
    if values > max_nodes:
        return f"holds more than {max_nodes} values"
    depth = max(itertools.accumulate(array("b", skeleton.translate(_DEPTH_STEP, b"0,:"))), default=0)
    if depth > max_depth:
        return f"nests deeper than {max_depth} levels"
    return None
