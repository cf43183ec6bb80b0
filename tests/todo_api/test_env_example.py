"""`.env.example` documents every setting, with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from todo_api.settings import AppSettings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def _documented() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def test_every_settings_field_is_documented() -> None:
    documented = _documented()
    fields = {name.upper() for name in AppSettings.model_fields}
    assert sorted(fields - documented.keys()) == []
    assert sorted(documented.keys() - fields) == []


def test_documented_defaults_are_the_real_ones() -> None:
    documented = _documented()
    for name, field in AppSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:
            continue  # shown as an example value or left empty
        shown = documented[name.upper()]
        if isinstance(default, bool):
            assert shown == str(default).lower(), name
        elif isinstance(default, float):
            assert float(shown) == default, name
        else:
            assert shown == str(default), name
