"""Logging, configured once by the CLI: human-readable lines or one JSON object per line.

Every line logged while a job is being handled carries its job id: ``job_label(job_id)`` sets a
context variable where a job starts (asyncio tasks spawned inside inherit it), and a filter copies
it onto each record (``record.job_id``). JSON lines have it as the ``job_id`` field; human lines
get ``[job N]`` appended when the message does not already name the job.

Secrets stay out either way: the redaction filter of ``executor.redact`` runs first on the
handler, and the JSON formatter masks what it adds (the exception text).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

from executor import redact

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
QUIET_LOGGERS = ("web3", "websockets", "urllib3", "aiohttp.access")
"""web3 logs RPC URLs (which may embed an API key) at INFO and request bodies at DEBUG."""

current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "oyster_executor_job", default=None
)


@contextlib.contextmanager
def job_label(job_id: int | None) -> Iterator[None]:
    """Label every log line inside (and in tasks spawned inside) with ``job_id``."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Copies the current job id onto the record (an explicit ``extra={"job_id": ..}`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job_id = getattr(record, "job_id", None)
        if job_id is not None and f"job {job_id}" not in record.message:
            line += f" [job {job_id}]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id (if any), exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact.redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def make_handler(log_format: LogFormat = "text", stream: Any = None) -> logging.Handler:
    """A handler that labels job lines, masks secrets and formats as asked."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(JobIdFilter())
    redact.install(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Configure the root logger once (the CLI calls this)."""
    logging.basicConfig(level=level, handlers=[make_handler(log_format)])
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
