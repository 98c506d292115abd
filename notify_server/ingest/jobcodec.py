"""How arq jobs and results are written in Redis: JSON, or arq's default pickle read without executing it.

Producers write `process_event` jobs in one of two formats, and both are served:

- JSON (`enqueue_event`, the HTTP publish path, and the raw protocol for other languages);
- pickle, arq's default: what `arq.create_pool(...).enqueue_job(...)` writes when the producer leaves
  `job_serializer` alone — the background jobs our users already have.

A pickle is a program; `pickle.loads` on bytes from Redis would run whatever a writer of that key put
there (a crafted `os.system` reduce, say). So pickles are read by an unpickler that resolves no global
at all: only the containers and scalars an event is made of (dict, list, tuple, str, bytes, int, float,
bool, None) can be built; a job naming any class or function is refused before anything runs.

A job's result is written in the job's own format, so `Job.result()` works for the producer whichever
it used. Failures are written as arq writes its own (`JobExecutionFailed`) for pickle producers, and as
`{"status": "failed", "reason": …}` for JSON ones.
"""

from __future__ import annotations

import enum
import io
import pickle
from typing import Any

import orjson
from arq.worker import JobExecutionFailed

# A 10,000-recipient event with e-mail addresses is about 0.6 MB; anything far larger is not an event.
MAX_JOB_BYTES = 16 * 1024 * 1024
_PICKLE_PROTO = 0x80  # first byte of every pickle of protocol 2 or newer (arq writes protocol 4 or 5)


class JobFormat(enum.Enum):
    JSON = "json"
    PICKLE = "pickle"


class UndecodableJob(ValueError):
    """A job that is not a usable arq job in either format; the message says why (no job content)."""


class PickledArgs(tuple):  # type: ignore[type-arg]
    """The positional arguments of a job that came as a pickle, so its result is written as one too.

    arq's own Worker hands the args it decoded to the result serializer; this marks them (used by the
    plain `arq workers.settings.WorkerSettings`, which has one serializer for every job)."""

    __slots__ = ()


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds plain containers and scalars only: any global (class, function, module) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise UndecodableJob(f"pickle refers to {module}.{name}; only plain data is accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise UndecodableJob("pickle uses persistent ids; only plain data is accepted")


def job_format(payload: bytes) -> JobFormat:
    return JobFormat.PICKLE if payload[:1] == bytes((_PICKLE_PROTO,)) else JobFormat.JSON


def decode(payload: bytes) -> tuple[JobFormat, dict[str, Any]]:
    """A job's (format, fields: f, a, k, t, et); raises UndecodableJob."""
    if len(payload) > MAX_JOB_BYTES:
        raise UndecodableJob(f"job is {len(payload)} bytes; at most {MAX_JOB_BYTES}")
    fmt = job_format(payload)
    try:
        if fmt is JobFormat.PICKLE:
            data = _NoGlobalsUnpickler(io.BytesIO(payload)).load()
        else:
            data = orjson.loads(payload)
    except UndecodableJob:
        raise
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


def _reason(result: Any) -> str:
    reason = result.get("reason") if isinstance(result, dict) else None
    return reason if isinstance(reason, str) else str(result)


# ---------------------------------------------------------------- for arq's own Worker and ArqRedis


def arq_deserializer(payload: bytes) -> dict[str, Any]:
    """`job_deserializer` for arq: either format; pickled jobs' args are marked (PickledArgs)."""
    fmt, data = decode(payload)
    if fmt is JobFormat.PICKLE and "a" in data:
        data["a"] = PickledArgs(data["a"])
    return data


def arq_serializer(data: dict[str, Any]) -> bytes:
    """`job_serializer` for arq: a result in the format its job came in; anything else as JSON."""
    if "s" in data:  # a result record
        fmt = JobFormat.PICKLE if isinstance(data.get("a"), PickledArgs) else JobFormat.JSON
        return encode_result(fmt, data)
    return encode_job(data)
