"""Summarise a py-spy raw profile (`py-spy record -f raw`): top functions by inclusive and self share.

Inclusive %: samples whose stack contains the function (once per stack) / all samples.
Self %: samples whose innermost frame is the function / all samples. py-spy records only non-idle
stacks by default, so the samples are the process's busy time.

    .venv/bin/python -m bench.pyspy_summary PROFILE.txt [--top 25] [--filter notify_server,workers]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `module.py:function` (line numbers folded)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = path.replace("\\", "/").split("/")
    for anchor in ("site-packages", "notify_server", "workers", "bench", "asyncio", "python3.11"):
        if anchor in parts:
            i = parts.index(anchor)
            parts = parts[i + 1:] if anchor in ("site-packages", "python3.11") else parts[i:]
            break
    return f"{'/'.join(parts[-3:])}:{m.group('func')}"


def summarise(path: Path) -> tuple[int, list[tuple[str, float, float]]]:
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if frames and frames[0].startswith("process ") or frames and frames[0].startswith("thread "):
            frames = frames[1:]
        total += n
        for name in set(frames):
            inclusive[name] += n
        if frames:
            self_[frames[-1]] += n
    rows = [(name, 100.0 * inclusive[name] / total, 100.0 * self_[name] / total) for name in inclusive] if total else []
    rows.sort(key=lambda r: (-r[1], -r[2]))
    return total, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="only functions whose name contains one of these (comma list)")
    parser.add_argument("--by-self", action="store_true", help="sort by self share")
    args = parser.parse_args()
    keep = [k for k in args.filter.split(",") if k]
    for path in args.profiles:
        total, rows = summarise(path)
        if args.by_self:
            rows.sort(key=lambda r: -r[2])
        print(f"## {path.name}: {total} busy samples")
        print("| function | inclusive % | self % |")
        print("|---|---|---|")
        shown = 0
        for name, inc, slf in rows:
            if keep and not any(k in name for k in keep):
                continue
            print(f"| `{name}` | {inc:.1f} | {slf:.1f} |")
            shown += 1
            if shown >= args.top:
                break
        print()


if __name__ == "__main__":
    main()
