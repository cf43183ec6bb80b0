"""Logging you can run on: one setup for the whole process, readable lines in development
or JSON lines in production, and a request id on every line logged while serving a request.

    logging.config.dictConfig(logging_config("json"))     # or pass it to uvicorn: log_config=
    app.add_middleware(RequestContextMiddleware)          # NeonDB.install does this

`RequestContextMiddleware` (pure ASGI, so it costs one function call per request) echoes
`X-Request-ID` when the client sends a usable one and makes one otherwise, puts it on every
log record of the request (`%(request_id)s`, the `request_id` JSON field), and writes the
access log line when asked: method, path, status and milliseconds, with the query string's
names but never its values (a search text is personal data).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "ACCESS_LOGGER",
    "JsonFormatter",
    "LogFormat",
    "RequestContextMiddleware",
    "RequestIdFilter",
    "current_request_id",
    "logging_config",
]

LogFormat = Literal["text", "json"]
ACCESS_LOGGER = "neondb.access"
MAX_REQUEST_ID = 128

_request_id: ContextVar[str | None] = ContextVar("neondb_request_id", default=None)
# Attributes every record has (and uvicorn's colour variant of its message): not `extra`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def current_request_id() -> str | None:
    """The id of the request being served by this task, if any."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Puts `request_id` ("-" outside a request) on every record passing a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, pid, the record's
    `extra` fields, and the traceback as one string. Written here: a dozen lines, where
    python-json-logger would be one more dependency for the same."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
            # With several worker processes, which one wrote the line.
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(fmt: LogFormat = "text", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: one stderr handler on the root logger, every
    record with its request id, uvicorn's own loggers sent through it. Give it to
    `uvicorn.run(log_config=...)` so each worker process sets up the same."""
    text = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": text}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn's handlers replaced by the root's: one format for every line.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # ours replaces it
        },
    }


def _usable(value: bytes) -> str | None:
    """A client's request id, if it is short printable ASCII (it goes into every log line)."""
    if not 0 < len(value) <= MAX_REQUEST_ID:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _query_names(query: bytes) -> str:
    """`q=milk&limit=5` -> `q&limit`: which parameters, never their values."""
    names = (part.split(b"=", 1)[0] for part in query.split(b"&") if part)
    return "&".join(dict.fromkeys(n.decode("latin-1") for n in names))


class RequestContextMiddleware:
    """Request id in and out, on every log line of the request; access log if `access_log`."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        self._log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = (given is not None and _usable(given)) or uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode("ascii"))
        token = _request_id.set(request_id)
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                query = _query_names(scope.get("query_string", b""))
                self._log.info(
                    "%s %s%s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    f"?{query}" if query else "",
                    status,
                    (time.perf_counter() - started) * 1000,
                )
            _request_id.reset(token)
