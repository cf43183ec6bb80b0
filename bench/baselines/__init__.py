"""The apps `make bench` compares todo_api with. Each serves the same three routes on the same
`tasks` table (made by todo_api's migrations), under one uvicorn worker:

* `GET /api/tasks/{id}`: one task of the caller's;
* `GET /api/tasks?limit=N`: the caller's newest N tasks and their total, `{"items", "total"}`;
* `POST /api/tasks`: create one from `{"title", ...}`, answer 201 with the stored row.

Apps without authentication take the caller from the `X-User` header (the load generator
sends it alongside the bearer token), so every app runs the same queries for the same user.
Their database comes from `BENCH_DSN` (a plain `postgresql://` URL); `BENCH_POOL_SIZE` sizes
their pools like todo_api's (`DB_POOL_MAX`, 20).
"""
