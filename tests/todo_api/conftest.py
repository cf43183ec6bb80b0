"""Fixtures for the todo_api tests (defined in `todo_api.testing`, reusable elsewhere).

Each test gets a fresh schema (neondb's `neondb_schema_url`), migrated by the app's
lifespan: tests never see each other's rows.
"""

from todo_api.testing import (  # noqa: F401  (fixtures)
    api_app,
    app_settings,
    auth_headers_fixture,
    client,
)
