"""Reading a PEM key file named in the config: bounded, with one line saying what is wrong."""

from __future__ import annotations

from pathlib import Path


def read_key_file(path: str, max_bytes: int, what: str, error: type[Exception]) -> bytes:
    """The file's bytes; `error` naming the path when it cannot be read or is over `max_bytes` (not
    `what`, a PEM key of some kind)."""
    try:
        with Path(path).open("rb") as file:
            pem = file.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(pem) > max_bytes:
        raise error(f"{path} is larger than {max_bytes} bytes: not {what}")
    return pem
