"""The doctor's report: one `Step` per check, in order, each with what was found, what failed
and how to fix it; the same content for people (a table) and for machines (JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Report", "Status", "Step"]

Status = Literal["ok", "warn", "fail", "skipped"]


@dataclass
class Step:
    name: str
    status: Status
    detail: str
    fix: str = ""
    # Measured values for machines (milliseconds, versions, counts): also in the detail.
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    def add(
        self,
        name: str,
        status: Status,
        detail: str,
        fix: str = "",
        data: dict[str, Any] | None = None,
        **more: Any,
    ) -> Step:
        step = Step(name, status, detail, fix, {**(data or {}), **more})
        self.steps.append(step)
        return step

    def skip(self, name: str, because: str) -> Step:
        return self.add(name, "skipped", f"skipped: {because}")

    def get(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status == "fail"]

    @property
    def warnings(self) -> list[Step]:
        return [s for s in self.steps if s.status == "warn"]

    @property
    def ok(self) -> bool:
        """No step failed (warnings are advice; `neondb doctor --strict` counts them)."""
        return not self.failed

    @property
    def next(self) -> str:
        """What to check next, in one paragraph."""
        if self.failed:
            first = self.failed[0]
            skipped = [s.name for s in self.steps if s.detail.startswith("skipped: needs")]
            out = f"{first.name} failed: {(first.fix or first.detail).rstrip('.')}."
            if skipped:
                out += (
                    f" Then run `neondb doctor` again: {', '.join(skipped)} could not be "
                    "checked until it passes."
                )
            return out
        if self.warnings:
            names = ", ".join(s.name for s in self.warnings)
            return f"All checks passed, with advice on {names} (see fix)."
        return "All checks passed."

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [asdict(s) for s in self.steps], "next": self.next}
