"""The doctor's report for people: a table that fits the terminal (80 columns when piped),
long words folded rather than cut, then what to check next."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neondb.doctor.report import Report

__all__ = ["render"]

_STATUS = {
    "ok": ("ok", "green"),
    "warn": ("warn", "yellow"),
    "fail": ("FAIL", "bold red"),
    "skipped": ("skipped", "dim"),
}


def render(report: Report, console: Console) -> None:
    table = Table(box=box.SQUARE, show_lines=True, expand=False)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for step in report.steps:
        word, style = _STATUS[step.status]
        # Text, not markup: a detail may hold brackets (neondb[cli], [::1]).
        detail = Text(step.detail)
        if step.fix:
            detail.append("\nfix: ", style="bold").append(step.fix)
        table.add_row(step.name, Text(word, style=style), detail)
    console.print(table, soft_wrap=False)
    style = "red" if not report.ok else ("yellow" if report.warnings else "green")
    console.print(Text(f"next: {report.next}", style=style), soft_wrap=False)
