"""Query parameters are as strict as bodies (`extra="forbid"`): an unknown name, or a
repeated single-valued one, is a 422. A typo such as `?stauts=pending` must not silently
return every task, nor `?tag=a&tag=b` silently filter by one of the two."""

from __future__ import annotations

import types
import typing
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

__all__ = ["reject_unknown_query"]

_SEQUENCES = (list, set, frozenset, tuple)
# Cached on the route object itself (routes are unhashable, and an id() could be reused by
# another app's route once a test's app is gone).
_ATTR = "_todo_api_query_params"


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return origin in _SEQUENCES or annotation in _SEQUENCES


def _query_params(dependant: Any) -> dict[str, bool]:
    """Declared query parameter names -> whether they take several values."""
    params = {
        field.alias: _is_sequence(field.field_info.annotation) for field in dependant.query_params
    }
    for sub in dependant.dependencies:
        params.update(_query_params(sub))
    return params


def _declared(route: Any) -> dict[str, bool] | None:
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    params: dict[str, bool] | None = getattr(route, _ATTR, None)
    if params is None:
        # Routes live as long as the app: computed once per route.
        params = _query_params(dependant)
        setattr(route, _ATTR, params)
    return params


async def reject_unknown_query(request: Request) -> None:
    """Router dependency: 422 for a query parameter the route does not declare, or a
    single-valued one given more than once."""
    if not request.query_params:
        return
    declared = _declared(request.scope.get("route"))
    if declared is None:
        return
    errors = []
    for key in dict.fromkeys(request.query_params):
        values = request.query_params.getlist(key)
        if key not in declared:
            kind, msg = "extra_forbidden", "Extra inputs are not permitted"
        elif len(values) > 1 and not declared[key]:
            kind, msg = "value_error", "Value error, expected a single value"
        else:
            continue
        errors.append({"type": kind, "loc": ("query", key), "msg": msg, "input": values})
    if errors:
        raise RequestValidationError(errors)
