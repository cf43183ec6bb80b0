"""The README's "Adopt neondb in your own app" example, run as written: its first Python
block becomes a module (settings from the environment, as it says), against a test schema
holding the table it expects, and both of its routes are called."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from neondb.testing import admin_execute

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Adopt neondb in your own app"


def adopt_example() -> str:
    """The first ```python block under HEADING, before the next `## ` heading."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no heading {HEADING!r}"
    section = text.split(HEADING, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    found = re.search(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert found, f"no ```python block under {HEADING!r}"
    return found.group(1)


def test_the_example_is_found() -> None:
    code = adopt_example()
    assert "NeonDB(" in code
    assert "@app.get(" in code
    assert "@app.post(" in code
    compile(code, f"{README}:adopt", "exec")


async def test_readme_example_runs(
    neondb_schema_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The table the README says the example expects; the example creates none itself.
    admin_execute(
        neondb_schema_url, "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)"
    )
    monkeypatch.chdir(tmp_path)  # no project `.env` is read
    for name in list(os.environ):  # nor settings from the environment the tests run in
        if name.upper().startswith(("DB_", "DATABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", neondb_schema_url)
    monkeypatch.setenv("DB_POOL_MIN", "1")

    module = types.ModuleType("readme_adopt_example")
    module.__file__ = str(README)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(adopt_example(), f"{README}:adopt", "exec"), module.__dict__)
    app = module.__dict__["app"]
    assert isinstance(app, FastAPI)

    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        r = await client.post("/notes", json={"body": "hello from the README"})
        assert r.status_code == 201, r.text
        note_id = r.json()
        assert isinstance(note_id, int)
        assert admin_execute(neondb_schema_url, "SELECT id, body FROM notes") == [
            (note_id, "hello from the README")
        ]
        r = await client.get("/notes")
        assert r.status_code == 200, r.text
        assert r.json() == ["hello from the README"]
        assert (await client.get("/health/db")).status_code == 200
