"""How arq jobs and results are written in Redis: JSON, or arq's default pickle read without executing it.

Producers write `process_event` jobs in one of two formats, and both are served:

- JSON (`enqueue_event`, the HTTP publish path, and the raw protocol for other languages);
- pickle, arq's default: what `arq.create_pool(...).enqueue_job(...)` writes when the producer leaves
  `job_serializer` alone — the background jobs our users already have.

A pickle is a program; `pickle.loads` on bytes from Redis would run whatever a writer of that key put
there (a crafted `os.system` reduce, say). So pickles are read by notify_server.ingest.plainpickle, which
builds plain data only (dict with string keys, list, tuple, str, int, finite float, bool, None) and runs
nothing; JSON is measured (notify_server.ingest.jsonshape) before orjson builds it. Either way a job is
bounded while it is decoded — MAX_JOB_BYTES, MAX_JOB_DEPTH levels, MAX_JOB_NODES values (a value that a
pickle's memo repeats counts each time) — so that whatever validates or writes it afterwards has bounded
work, and its result can always be written.

A job's result is written in the job's own format, so `Job.result()` works for the producer whichever
it used. Failures are written as arq writes its own (`JobExecutionFailed`) for pickle producers, and as
`{"status": "failed", "reason": …}` for JSON ones. A result that cannot be encoded all the same is
replaced by a small fixed failed one (`encode_result_or_fixed`): a job must always be settled.
"""

from __future__ import annotations

import enum
import pickle
from typing import Any

import orjson
from arq.worker import JobExecutionFailed

from notify_server.core.constants import JOB_PROCESS_EVENT
from notify_server.ingest import jsonshape, plainpickle

# A 10,000-recipient event with e-mail addresses is about 0.6 MB; anything far larger is not an event.
MAX_JOB_BYTES = 16 * 1024 * 1024
# A valid event is at most 36 levels deep (job, args, event, data + the 32 levels data may nest) and holds
# at most ~60,000 values (10,000 recipients of 5 values, 16 KiB of data, 4 KiB of metadata): both limits
# leave room above that and stay far below what orjson writes back (254 levels) or Python recurses.
MAX_JOB_DEPTH = 64
MAX_JOB_NODES = 100_000
_PICKLE_FIRST_BYTE = b"\x80"  # PROTO: first byte of every pickle of protocol 2 or newer (arq writes 4 or 5)


class JobFormat(enum.Enum):
    JSON = "json"
    PICKLE = "pickle"


class UndecodableJob(ValueError):
    """A job that is not a usable arq job in either format; the message says why (no job content)."""


def job_format(payload: bytes) -> JobFormat:
    return JobFormat.PICKLE if payload[:1] == _PICKLE_FIRST_BYTE else JobFormat.JSON


def decode(payload: bytes) -> tuple[JobFormat, dict[str, Any]]:
    """A job's (format, fields: f, a, k, t, et); raises UndecodableJob."""
    if len(payload) > MAX_JOB_BYTES:
        raise UndecodableJob(f"job is {len(payload)} bytes; at most {MAX_JOB_BYTES}")
    fmt = JobFormat.PICKLE if payload[:1] == _PICKLE_FIRST_BYTE else JobFormat.JSON  # job_format, inline: per job
    try:
        if fmt is JobFormat.PICKLE:
            data = plainpickle.loads(payload, max_depth=MAX_JOB_DEPTH, max_nodes=MAX_JOB_NODES)
        else:
            problem = jsonshape.problem(payload, max_depth=MAX_JOB_DEPTH, max_nodes=MAX_JOB_NODES)
            if problem is not None:
                raise UndecodableJob(f"job {problem}")
            data = orjson.loads(payload)
    except UndecodableJob:
        raise
    except plainpickle.PickleRefused as exc:
        raise UndecodableJob(str(exc)) from None
    except Exception as exc:  # every malformed input raises something different
        raise UndecodableJob(f"job is not arq {fmt.value}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise UndecodableJob(f"job is not an arq job ({type(data).__name__}, not a mapping)")
    return fmt, data


def encode_job(job: dict[str, Any]) -> bytes:
    """Jobs this service writes are JSON (readable from any language)."""
    return orjson.dumps(job)


def encode_result(fmt: JobFormat, data: dict[str, Any]) -> bytes:
    """arq's result record (see arq.jobs.serialize_result) in the job's own format."""
    if fmt is JobFormat.PICKLE:
        result = data.get("r")
        if not data.get("s") and not isinstance(result, BaseException):
            data = {**data, "r": JobExecutionFailed(_reason(result))}
        elif isinstance(result, BaseException) and not isinstance(result, JobExecutionFailed):
            data = {**data, "r": JobExecutionFailed(_reason(result))}
        return pickle.dumps({**data, "a": tuple(data.get("a") or ())})
    result = data.get("r")
    if isinstance(result, BaseException):
        data = {**data, "r": {"status": "failed", "reason": _reason(result)}}
    return orjson.dumps({**data, "a": list(data.get("a") or ())})


def encode_result_or_fixed(fmt: JobFormat, data: dict[str, Any]) -> tuple[bytes, str | None]:
    """A result record's bytes, and None; or, when it cannot be encoded (a value pickle or orjson refuses,
    nesting past their limits), a small failed result naming why, and that reason. Never raises."""
    try:
        return encode_result(fmt, data), None
    except Exception as exc:  # anything at all: the job must be settled
        reason = f"its result could not be written ({type(exc).__name__})"
    small = {
        "t": data.get("t") if type(data.get("t")) is int else 0, "f": JOB_PROCESS_EVENT, "a": (), "k": {},
        "et": 0, "s": False, "r": {"status": "failed", "reason": reason},
        "st": data.get("st") if type(data.get("st")) is int else 0,
        "ft": data.get("ft") if type(data.get("ft")) is int else 0,
        "q": text_or(data.get("q"), "<unknown>"), "id": text_or(data.get("id"), "<unknown>"),
    }
    try:
        return encode_result(fmt, small), reason
    except Exception:
        return _FIXED_RESULTS[fmt], reason


def text_or(value: Any, default: str) -> str:
    """`value` as text that any encoder takes (a job id read with surrogateescape, say), else `default`."""
    if type(value) is not str:
        return default
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _reason(result: Any) -> str:
    reason = result.get("reason") if isinstance(result, dict) else None
    return reason if isinstance(reason, str) else str(result)


_FIXED_RESULTS = {
    fmt: encode_result(fmt, {
        "t": 0, "f": JOB_PROCESS_EVENT, "a": (), "k": {}, "et": 0, "s": False, "st": 0, "ft": 0,
        "r": {"status": "failed", "reason": "its result could not be written"}, "q": "<unknown>", "id": "<unknown>",
    })
    for fmt in JobFormat
}


# ---------------------------------------------------------------- for arq's ArqRedis (the producers' side)


def arq_deserializer(payload: bytes) -> dict[str, Any]:
    """`job_deserializer` for ArqRedis: reads a job or a result in either format (`Job.result()`)."""
    return decode(payload)[1]


def arq_serializer(data: dict[str, Any]) -> bytes:
    """`job_serializer` for ArqRedis: the jobs a producer writes through it are JSON."""
    return encode_job(data)
