"""neondb.logs: request ids on every line of a request, JSON lines, and an access log that
never records a query's values."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import make_settings
from sqlalchemy import text

from neondb import NeonDB, ReadSession, current_request_id, logging_config
from neondb.logs import ACCESS_LOGGER, RequestIdFilter

app_log = logging.getLogger("test_logs.app")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger set up with `logging_config("json")`, writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logging.config.dictConfig(logging_config("json", "INFO"))
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    client_log = logging.getLogger("httpx")  # the test's client logs each URL it calls
    client_log.setLevel(logging.WARNING)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved
        client_log.setLevel(logging.NOTSET)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def make_app(url: str, *, access_log: bool) -> FastAPI:
    neon = NeonDB(make_settings(url, db_slow_query_ms=0))  # every statement is "slow"
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app, access_log=access_log)

    @app.get("/echo")
    async def echo(session: ReadSession, q: str = "") -> dict[str, str | None]:
        app_log.info("serving a search")
        await session.execute(text("SELECT CAST(:q AS text)"), {"q": q})
        return {"request_id": current_request_id()}

    return app


async def call(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        return await c.get(path, headers=headers)


async def test_a_request_id_is_echoed_and_on_every_line(
    neondb_schema_url: str, captured: io.StringIO
) -> None:
    app = make_app(neondb_schema_url, access_log=True)
    r = await call(app, "/echo?q=private-search-text", {"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert r.json() == {"request_id": "req-42"}
    records = [rec for rec in lines(captured) if rec["request_id"] == "req-42"]
    loggers = [rec["logger"] for rec in records]
    assert "test_logs.app" in loggers  # the app's own line
    assert "neondb" in loggers  # neondb's slow-statement line
    assert loggers[-1] == ACCESS_LOGGER
    assert records[-1]["message"].startswith("GET /echo?q 200 ")  # type: ignore[union-attr]
    assert "private-search-text" not in captured.getvalue()


async def test_a_request_id_is_made_when_none_or_an_unusable_one_is_sent(
    neondb_schema_url: str, captured: io.StringIO
) -> None:
    app = make_app(neondb_schema_url, access_log=False)
    for sent in (None, "x" * 129, "bad\x7fid"):
        r = await call(app, "/echo", {"X-Request-ID": sent} if sent else None)
        made = r.headers["x-request-id"]
        assert made != sent
        assert len(made) == 32
        assert r.json() == {"request_id": made}
    assert not [rec for rec in lines(captured) if rec["logger"] == ACCESS_LOGGER]


def test_text_lines_carry_the_request_id_field() -> None:
    config = logging_config("text")
    assert "%(request_id)s" in config["formatters"]["default"]["format"]
    record = logging.makeLogRecord({"msg": "outside a request"})
    assert RequestIdFilter().filter(record)
    assert record.request_id == "-"  # type: ignore[attr-defined]
