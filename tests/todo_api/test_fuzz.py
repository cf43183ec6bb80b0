"""Property-based fuzzing from the app's own OpenAPI schema (schemathesis): no 5xx, no
response outside the schema (status codes included), whatever the input, and whoever
calls: an admin, an ordinary user (403 on the admin route), or nobody (401 everywhere
but the health routes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from neondb.testing import admin_execute, with_search_path
from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers


@pytest.fixture(scope="module")
def fuzz_app(neondb_database_url: str) -> Iterator[FastAPI]:
    # One schema for the whole run: schemathesis starts the app's lifespan once, on its own
    # event loop thread, and keeps it for every generated request.
    schema = f"fuzz_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_database_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield create_app(app_settings(with_search_path(neondb_database_url, schema)))
    finally:
        shutdown_lifespans()
        admin_execute(neondb_database_url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def api_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
# Admin, so /admin/db/pool-stats answers too; for /api/* an admin is an ordinary user.
HEADERS = auth_headers("fuzzer", admin=True)

OPERATIONS = [
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{task_id}"),
    ("PATCH", "/api/tasks/{task_id}"),
    ("DELETE", "/api/tasks/{task_id}"),
    ("POST", "/api/tasks/{task_id}/complete"),
    ("POST", "/api/conversations"),
    ("GET", "/api/conversations"),
    ("GET", "/api/conversations/{conversation_id}"),
    ("DELETE", "/api/conversations/{conversation_id}"),
    ("POST", "/api/conversations/{conversation_id}/messages"),
    ("GET", "/api/conversations/{conversation_id}/messages"),
    ("GET", "/health"),
    ("GET", "/health/db"),
    ("GET", "/admin/db/pool-stats"),
    ("GET", "/metrics"),
]
NO_INPUT = {"/health", "/health/db", "/admin/db/pool-stats", "/metrics"}


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    listed = {(op.method.upper(), op.path) for op in _operations(api_schema)}
    assert listed == set(OPERATIONS)


def _operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


# Negative mode needs some input to make invalid: routes without any are fuzzed positively.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if p not in NO_INPUT
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_conforms_to_its_schema(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=HEADERS, checks=CHECKS)

    run()


CALLERS = {"anonymous": {}, "user": auth_headers("fuzzer")}


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_status_is_documented_for_other_callers(
    api_schema: Any, method: str, path: str, caller: str
) -> None:
    """The 401 of a missing token and the 403 of a non-admin are in each route's schema."""
    operation = api_schema[path][method]
    seen: set[int] = set()

    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(
        max_examples=5,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=CALLERS[caller], checks=CHECKS)
        seen.add(response.status_code)

    run()
    if path.startswith("/api/") and caller == "anonymous":
        assert seen == {401}
    if path == "/admin/db/pool-stats":
        assert seen == {401 if caller == "anonymous" else 403}
