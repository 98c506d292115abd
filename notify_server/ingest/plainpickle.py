"""Reads a pickle as plain data, bounded while it is read: arq's default job format, never executed.

A pickle is a program for a stack machine, and `pickle.loads` runs it: it resolves globals, builds sets,
bytearrays and memoryviews, reads copyreg's extension cache, sizes its memo by whatever index a
LONG_BINPUT names (9 bytes allocate gigabytes), and hashes whatever tuple a dict key is (a memo-shared
tuple of tuples 40 levels deep hashes for hours). So what is accepted is decided here, opcode by opcode:

- built: dict (string keys; a key set twice keeps its last value, as in JSON), list, tuple, str, int
  (-2**63 to 2**64 - 1, the range orjson writes), float (finite: JSON has no inf or nan), bool, None. A
  tuple stays a tuple (arq pickles a job's args as one); an event holding one stores it as a JSON array.
- refused, naming what: any global (class, function, module), extension codes, persistent ids, sets,
  frozensets, bytes, bytearrays, out-of-band buffers (memoryview), recursive structures, and opcodes
  CPython's pickler does not write for plain data. Bytes have no JSON form: no event can hold them, so
  they are refused here rather than stored.
- bounded while reading, before anything walks the result: `max_depth` levels of containers and
  `max_nodes` values (dict keys count; a memo reference counts the whole subtree it repeats, so a
  392-byte pickle of one list shared twice at each of 40 levels counts 2**40 and is refused at once).

Two readers share these rules. The exact one (`_exact`) is an interpreter of its own, in Python: it counts
every value as it builds it, so it decides and names anything, at about half a microsecond per opcode.
Most jobs never reach it. A pickle of at most FAST_MAX_BYTES that one regular expression reads, opcode by
opcode, as plain data (`plain_stream`: no global, set, bytes, buffer, extension, DUP or persistent id;
strings below 1 KiB, 64-bit ints, finite floats, memo indices below 65,536, and at most one non-empty
tuple, so that no tuple is hashed through another) is built by the C unpickler, whose work on such a
stream is linear in its bytes. When the stream holds a memo reference, the value is then written out in
full (pickle's fast mode: no memo) into a byte budget, which proves that no shared container multiplies
it; orjson writes it once (string keys, nothing but plain data), and that text is measured as a JSON
job's is (jsonshape: depth, values). Whatever this does not prove goes to the exact reader, which
decides and says why.
"""

from __future__ import annotations

import functools
import math
import pickle
import pickletools
import re
import struct
import threading
from typing import Any

import orjson

from notify_server.ingest import jsonshape

FAST_MAX_BYTES = 512 * 1024  # the C unpickler builds at most ~72 bytes per byte of such a stream: ~36 MB

# Each stack slot of the exact reader carries its subtree as one int, so that sum() and max() over a slice
# of items are C loops: height << 32 | values. A scalar is one value of height 0, an empty container one
# value of height 1.
_SHIFT = 32
_NODES = (1 << _SHIFT) - 1
_SCALAR = 1
_EMPTY = (1 << _SHIFT) | 1

_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1

_I4 = struct.Struct("<i").unpack_from
_U2 = struct.Struct("<H").unpack_from
_U4 = struct.Struct("<I").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_F8 = struct.Struct(">d").unpack_from

_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_GLOBALS = frozenset(("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"))
_WHAT = {
    "EXT1": "an extension code", "EXT2": "an extension code", "EXT4": "an extension code",
    "PERSID": "a persistent id", "BINPERSID": "a persistent id",
    "EMPTY_SET": "a set", "ADDITEMS": "a set", "FROZENSET": "a frozenset",
    "SHORT_BINBYTES": "bytes", "BINBYTES": "bytes", "BINBYTES8": "bytes", "BYTEARRAY8": "a bytearray",
    "NEXT_BUFFER": "an out-of-band buffer", "READONLY_BUFFER": "a memoryview",
    "LONG4": "an integer wider than 64 bits",
}


# ---------------------------------------------------------------- the fast path: a grammar, then C


def _sized(opcode: int, size_bytes: int, below: int) -> bytes:
    """A regex for `opcode`, a little-endian length of `size_bytes` bytes (less than `below`), then that
    many bytes: one branch per length, first on its low byte (sre skips a branch whose first literal
    differs, so a string costs comparisons in proportion to its length's low byte)."""
    branches = []
    for low in range(256):
        lengths = [high * 256 + low for high in range(256) if high * 256 + low < below]
        if not lengths:
            continue
        tails = [
            re.escape((n >> 8).to_bytes(size_bytes - 1, "little")) + (b"(?s:.){%d}" % n if n else b"")
            for n in lengths
        ]
        branches.append(re.escape(bytes((low,))) + b"(?:" + b"|".join(tails) + b")")
    return re.escape(bytes((opcode,))) + b"(?:" + b"|".join(branches) + b")"


# Ordered by how often CPython writes them: a string with its MEMOIZE, then one-byte opcodes (MEMOIZE,
# MARK, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, SETITEM(S), APPEND(S), NONE, NEWTRUE, NEWFALSE), then the rest.
_PLAIN_TOKENS = b"|".join((
    _sized(0x8C, 1, 256) + rb"\x94?",  # SHORT_BINUNICODE (+ MEMOIZE)
    rb"[\x94(}\])suaeN\x88\x89]",
    _sized(0x58, 4, 1024),  # BINUNICODE below 1 KiB (a longer string goes to the exact reader)
    rb"K(?s:.)|M(?s:..)|J(?s:....)",  # BININT1, BININT2, BININT
    b"\\x8a(?:" + b"|".join(re.escape(bytes((n,))) + (b"(?s:.){%d}" % n if n else b"") for n in range(9)) + b")",
    rb"G(?![\x7f\xff][\xf0-\xff])(?s:.){8}",  # BINFLOAT, unless inf or nan (its exponent bits all set)
    rb"q(?s:.)|r(?s:..)\x00\x00",  # BINPUT, LONG_BINPUT below 65,536 (the C unpickler sizes its memo by it)
    rb"\x95(?s:.){8}",  # FRAME
))
_GET_TOKENS = rb"h(?s:.)|j(?s:....)"  # BINGET, LONG_BINGET
_TUPLE_TOKENS = rb"[\x85\x86\x87t]"  # TUPLE1, TUPLE2, TUPLE3, TUPLE: once at most (arq's args)


@functools.cache
def plain_stream() -> re.Pattern[bytes]:
    """PROTO, plain tokens, at most one tuple, STOP. A memo reference (GET) is matched in a group of its
    own, outside any repetition (sre cannot capture inside a possessive one), so that `lastindex` tells
    whether the stream holds one: without one, nothing can be shared and the value is a tree. Compiled on
    first use (a few tenths of a second): a process that never reads a pickle never pays it."""
    body = b"(?:" + _PLAIN_TOKENS + b")*+(?:(" + _GET_TOKENS + b")(?:" + _PLAIN_TOKENS + b"|" + _GET_TOKENS + b")*+)?"
    return re.compile(rb"\x80[\x02-\x05]" + body + b"(?:" + _TUPLE_TOKENS + body + rb")?\.")
_UNPROVED: Any = object()


class _OverBudget(Exception):
    pass


class _Budget:
    """A file that takes `room` bytes at most and keeps none of them."""

    __slots__ = ("room",)

    def __init__(self) -> None:
        self.room = 0

    def write(self, chunk: bytes) -> int:
        self.room -= len(chunk)
        if self.room < 0:
            raise _OverBudget
        return len(chunk)


_writers = threading.local()  # a Pickler per thread: making one costs as much as the writing


def _written_in_full_within(value: Any, room: int) -> bool:
    """Whether `value`, written out with every shared part repeated (pickle's fast mode: no memo), takes
    at most `room` bytes. The pickler hands each 64 KiB frame to the budget, so a value that multiplies is
    stopped there. A cycle raises (fast mode detects one), as does nesting past the recursion limit."""
    writer: pickle.Pickler | None = getattr(_writers, "pickler", None)
    if writer is None:
        _writers.budget = _Budget()
        writer = _writers.pickler = pickle.Pickler(_writers.budget, 4)
        writer.fast = True
    _writers.budget.room = room
    try:
        writer.dump(value)
    except _OverBudget:
        return False
    except BaseException:
        del _writers.pickler  # whatever state an error left it in is not reused
        raise
    return True


def _proved(data: bytes, max_depth: int, max_nodes: int) -> Any:
    """The value, when the fast path proves the pickle plain data within the bounds; else _UNPROVED."""
    if len(data) > FAST_MAX_BYTES:
        return _UNPROVED
    stream = plain_stream().fullmatch(data)
    if stream is None:
        return _UNPROVED
    shared = stream.lastindex is not None  # a memo reference: something may be repeated
    try:
        # Safe to run: the stream holds no opcode that names anything or builds anything but plain data.
        value = pickle.loads(data)
        if shared and not _written_in_full_within(value, 4 * len(data) + 65536):
            return _UNPROVED
        text = orjson.dumps(value)
    except Exception:  # malformed for the C unpickler, a cycle, a key that is no string: the exact reader says
        return _UNPROVED
    if jsonshape.problem(text, max_depth=max_depth, max_nodes=max_nodes) is not None:
        return _UNPROVED
    return value


# ---------------------------------------------------------------- both


class PickleRefused(ValueError):
    """The pickle is not plain data within the bounds; the message says why (no content of the job)."""


def loads(data: bytes, *, max_depth: int, max_nodes: int) -> Any:
    """The plain data a pickle of protocol 2-5 holds; raises PickleRefused."""
    value = _proved(data, max_depth, max_nodes)
    if value is not _UNPROVED:
        return value
    try:
        return _exact(data, max_depth, max_nodes)
    except PickleRefused:
        raise
    except (IndexError, struct.error):
        raise PickleRefused("pickle is truncated or malformed") from None
    except UnicodeDecodeError:
        raise PickleRefused("pickle holds a string that is not UTF-8") from None


def _refuse_opcode(op: int, stack: list[Any], data: bytes, at: int) -> PickleRefused:
    """Why opcode `op` (its argument at data[at:]) is refused, naming the global when there is one."""
    name = _NAMES.get(op)
    if name is None:
        return PickleRefused(f"pickle has an unknown opcode 0x{op:02x}")
    if name == "STACK_GLOBAL" and len(stack) >= 2 and isinstance(stack[-2], str) and isinstance(stack[-1], str):
        return PickleRefused(f"pickle refers to {_short(stack[-2])}.{_short(stack[-1])}; only plain data is accepted")
    if name == "GLOBAL":  # text arguments: "module\nname\n"
        parts = data[at : at + 256].split(b"\n", 2)
        if len(parts) == 3:
            module, qualname = (part.decode("utf-8", "replace") for part in parts[:2])
            return PickleRefused(f"pickle refers to {_short(module)}.{_short(qualname)}; only plain data is accepted")
    if name in _GLOBALS:
        return PickleRefused(f"pickle refers to a class or function ({name}); only plain data is accepted")
    if name in _WHAT:
        return PickleRefused(f"pickle holds {_WHAT[name]} ({name}); only plain data is accepted")
    return PickleRefused(f"pickle opcode {name} is not accepted; only plain data is")


def _short(name: str) -> str:
    return name[:60].encode("unicode_escape").decode("ascii")


# ---------------------------------------------------------------- the exact reader


def _exact(data: bytes, max_depth: int, max_nodes: int) -> Any:  # noqa: C901 - one dispatch loop, kept flat for speed
    """Run the pickle's opcodes on a stack of our own, plain data only, counting as it builds. Each slot
    carries its value's height and size; a container can be filled only until a memo reference shares
    it (then its size is final, so every count stays exact and no cycle can form); a memo reference
    counts the whole subtree it repeats. Raises PickleRefused, or IndexError / struct.error when the
    stream ends early (loads words those)."""
    if len(data) < 2 or data[0] != 0x80 or not 2 <= data[1] <= 5:
        raise PickleRefused("not a pickle of protocol 2 to 5")
    stack: list[Any] = []
    metas: list[int] = []  # parallel to stack: height << 32 | nodes of each slot's value
    marks: list[int] = []
    memo: list[Any] = []
    container_meta: dict[int, int] = {id(()): _EMPTY}  # by id: every container built here is kept alive
    shared: set[int] = set()  # ids of containers a memo reference has repeated: they cannot grow any more
    replaced: list[Any] = []  # values a key set twice dropped, kept alive until the end
    push, mpush = stack.append, metas.append
    nodes = 0
    frames = 0
    max_frames = 2 + len(data) // 4096  # CPython frames 64 KiB at a time; anything denser is not a pickler's
    i = 2
    while True:
        op = data[i]
        i += 1
        if op == 0x94:  # MEMOIZE
            if len(memo) >= max_nodes:
                raise PickleRefused(f"pickle memoizes more than {max_nodes} values")
            memo.append(stack[-1])
            continue
        if op == 0x8C:  # SHORT_BINUNICODE
            end = i + 1 + data[i]
            push(data[i + 1 : end].decode("utf-8", "surrogatepass"))
            i = end
        elif op == 0x28:  # MARK
            if len(marks) >= max_depth:
                raise PickleRefused(f"pickle nests deeper than {max_depth} levels")
            marks.append(len(stack))
            continue
        elif op == 0x7D or op == 0x5D:  # EMPTY_DICT, EMPTY_LIST
            value: Any = {} if op == 0x7D else []
            container_meta[id(value)] = _EMPTY
            push(value)
            mpush(_EMPTY)
            nodes += 1
            if nodes > max_nodes:
                raise _too_many(max_nodes)
            continue
        elif op == 0x75 or op == 0x65 or op == 0x73 or op == 0x61:  # SETITEMS, APPENDS, SETITEM, APPEND
            if op == 0x75 or op == 0x65:
                if not marks:
                    raise PickleRefused("pickle is truncated or malformed")
                start = marks.pop()
            else:
                start = len(stack) - (2 if op == 0x73 else 1)
            target_at = start - 1
            # As the C unpickler: nothing below the innermost mark is touched; and CPython never fills nothing.
            if target_at < (marks[-1] if marks else 0) or start >= len(stack):
                raise PickleRefused("pickle is truncated or malformed")
            target = stack[target_at]
            if id(target) in shared:
                raise PickleRefused("pickle grows a container after sharing it (a recursive structure?)")
            items = stack[start:]
            item_metas = metas[start:]
            del stack[start:], metas[start:]
            if op == 0x75 or op == 0x73:
                if type(target) is not dict or len(items) % 2:
                    raise PickleRefused("pickle sets items on something that is not a dict")
                keys = items[::2]
                if not all(type(key) is str for key in keys):
                    raise PickleRefused("pickle has a dict key that is not a string")
                # A key set again: the last value wins, as in JSON and CPython. What it replaces stays
                # alive (ids are what the counts hang on) and counted (an overcount, never an under).
                if target and not target.keys().isdisjoint(keys):
                    replaced.extend(target[key] for key in keys if key in target)
                size = len(target)
                target.update(zip(keys, items[1::2], strict=True))
                if len(target) != size + len(keys):
                    replaced.extend(items)
            elif type(target) is list:
                target.extend(items)
            else:
                raise PickleRefused("pickle appends to something that is not a list")
            meta = metas[target_at]
            height = max((max(item_metas) >> _SHIFT) + 1, meta >> _SHIFT)
            if height > max_depth:
                raise PickleRefused(f"pickle nests deeper than {max_depth} levels")
            meta = (height << _SHIFT) | ((meta & _NODES) + (sum(item_metas) & _NODES))
            metas[target_at] = container_meta[id(target)] = meta
            continue
        elif op == 0x68 or op == 0x6A:  # BINGET, LONG_BINGET
            if op == 0x68:
                index = data[i]
                i += 1
            else:
                index = _U4(data, i)[0]
                i += 4
            if index >= len(memo):
                raise PickleRefused("pickle refers to a memo entry it never stored")
            value = memo[index]
            meta = container_meta.get(id(value), _SCALAR)
            if meta != _SCALAR:
                shared.add(id(value))
            push(value)
            mpush(meta)
            nodes += meta & _NODES
            if nodes > max_nodes:
                raise _too_many(max_nodes)
            continue
        elif op == 0x71 or op == 0x72:  # BINPUT, LONG_BINPUT: CPython numbers its memo 0, 1, 2, ...
            if op == 0x71:
                index = data[i]
                i += 1
            else:
                index = _U4(data, i)[0]
                i += 4
            if index != len(memo):
                raise PickleRefused("pickle stores memo entries out of order")
            if len(memo) >= max_nodes:
                raise PickleRefused(f"pickle memoizes more than {max_nodes} values")
            memo.append(stack[-1])
            continue
        elif op == 0x85 or op == 0x86 or op == 0x87 or op == 0x74 or op == 0x29:  # TUPLE1-3, TUPLE, EMPTY_TUPLE
            if op == 0x74:
                if not marks:
                    raise PickleRefused("pickle is truncated or malformed")
                start = marks.pop()
            else:
                start = len(stack) - (0 if op == 0x29 else op - 0x84)
                if start < (marks[-1] if marks else 0):
                    raise PickleRefused("pickle is truncated or malformed")
            if start < len(stack):
                value = tuple(stack[start:])
                item_metas = metas[start:]
                del stack[start:], metas[start:]
                height = (max(item_metas) >> _SHIFT) + 1
                if height > max_depth:
                    raise PickleRefused(f"pickle nests deeper than {max_depth} levels")
                meta = (height << _SHIFT) | (1 + (sum(item_metas) & _NODES))
                container_meta[id(value)] = meta
            else:
                value, meta = (), _EMPTY
            push(value)
            mpush(meta)
            nodes += 1
            if nodes > max_nodes:
                raise _too_many(max_nodes)
            continue
        elif op == 0x4E:  # NONE
            push(None)
        elif op == 0x88 or op == 0x89:  # NEWTRUE, NEWFALSE
            push(op == 0x88)
        elif op == 0x4B:  # BININT1
            push(data[i])
            i += 1
        elif op == 0x4D:  # BININT2
            push(_U2(data, i)[0])
            i += 2
        elif op == 0x4A:  # BININT
            push(_I4(data, i)[0])
            i += 4
        elif op == 0x8A:  # LONG1
            size = data[i]
            if size > 9:
                raise PickleRefused("pickle holds an integer wider than 64 bits")
            number = int.from_bytes(data[i + 1 : i + 1 + size], "little", signed=True)
            if not _MIN_INT <= number <= _MAX_INT:
                raise PickleRefused("pickle holds an integer wider than 64 bits")
            push(number)
            i += 1 + size
        elif op == 0x47:  # BINFLOAT
            real = _F8(data, i)[0]
            if not math.isfinite(real):
                raise PickleRefused(f"pickle holds a float that is not finite ({real}); JSON has none")
            push(real)
            i += 8
        elif op == 0x58 or op == 0x8D:  # BINUNICODE, BINUNICODE8
            size = _U4(data, i)[0] if op == 0x58 else _U8(data, i)[0]
            i += 4 if op == 0x58 else 8
            if i + size > len(data):
                raise PickleRefused("pickle is truncated or malformed")
            push(data[i : i + size].decode("utf-8", "surrogatepass"))
            i += size
        elif op == 0x95:  # FRAME: a length for readers that prefetch; nothing to do
            frames += 1
            if frames > max_frames:
                raise PickleRefused("pickle has more frames than its size explains")
            i += 8
            continue
        elif op == 0x2E:  # STOP: the top of the stack, as the C unpickler returns it (whatever is left below)
            if len(stack) <= (marks[-1] if marks else 0):
                raise PickleRefused("pickle is truncated or malformed")
            return stack[-1]
        else:
            raise _refuse_opcode(op, stack, data, i)
        # A scalar was pushed.
        mpush(_SCALAR)
        nodes += 1
        if nodes > max_nodes:
            raise _too_many(max_nodes)


def _too_many(max_nodes: int) -> PickleRefused:
    return PickleRefused(f"pickle holds more than {max_nodes} values (shared ones counted each time)")
