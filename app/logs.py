"""Logs: one JSON object a line, on standard error (standard output is for command output).

The service's own events go through structlog straight to the stream, without the standard
library's logging machinery: a log line per request is on the hot path. Libraries that log
through the standard library (uvicorn, psycopg's pool, Alembic) are rendered to the same JSON
on the same stream. Driver and pool chatter (psycopg logs three INFO lines per pooled
connection checkout) and anything that could carry SQL or its parameters stays at WARNING.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import pydantic_core
import structlog

LEVELS = ("debug", "info", "warning", "error")

# Loggers of libraries kept at WARNING whatever LOG_LEVEL says: per-request noise, or text
# that may include SQL, its parameters or request details.
QUIET_LIBRARIES = (
    "psycopg",
    "sqlalchemy",
    "aiosqlite",
    "httpx",
    "httpx2",
    "httpcore",
    "alembic",
    "asyncio",
)


class _QuietLibraries(logging.Filter):
    """Below WARNING, nothing from the quiet libraries reaches the stream, even where one of
    them sets its own logger's level (SQLAlchemy does with ``echo``): at LOG_LEVEL=debug their
    lines would carry SQL text and parameters (webhook bodies, API key hashes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.partition(".")[0] not in QUIET_LIBRARIES


def _dumps(value: Any, **kwargs: Any) -> str:
    # pydantic-core's writer: several times faster than json.dumps for a log line; what JSON
    # cannot hold is written as its repr (structlog's ``default`` does the same).
    return pydantic_core.to_json(value, fallback=repr).decode()


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (tests and tools swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _NamedWriter:
    """Writes rendered lines to the stream, one whole line at a time, and knows its name."""

    def __init__(self, stream: TextIO | _CurrentStderr, name: str) -> None:
        self._stream = stream
        self.name = name

    def msg(self, message: str) -> None:
        self._stream.write(message + "\n")
        self._stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _add_name(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["logger"] = getattr(logger, "name", None)
    return event


# The request a line belongs to (set by app.middleware for each request; tasks a request starts
# inherit it). One context variable read per line: structlog's contextvars processor copies and
# walks the whole context, on every line and twice more per request to clear it.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _add_request_id(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


_SHARED: list[Any] = [
    _add_request_id,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    level = level.lower()
    numeric = logging.getLevelName(level.upper())
    target: TextIO | _CurrentStderr = stream or _CurrentStderr()

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    handler.addFilter(_QuietLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # One access line per request comes from app.middleware, with the request ID.
    logging.getLogger("uvicorn.access").disabled = True
    for quiet in QUIET_LIBRARIES:
        logging.getLogger(quiet).setLevel(max(numeric, logging.WARNING))

    def writer(*args: Any) -> _NamedWriter:
        return _NamedWriter(target, args[0] if args else "app")

    structlog.configure(
        processors=[
            *_SHARED,
            _add_name,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=writer,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry ``"logger": name``; usable before logging is configured."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
