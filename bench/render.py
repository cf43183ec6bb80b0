"""Rewrite bench/results/latest.md and latest.png from latest.json, without measuring again
(`python -m bench.render`): for changes to the report's layout."""

from __future__ import annotations

from pathlib import Path

from bench.plot import plot
from bench.results import load_run, report

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    run = load_run(RESULTS / "latest.json")
    (RESULTS / "latest.md").write_text(report(run))
    plot(run, RESULTS / "latest.png")
    print(f"written: {RESULTS / 'latest.md'}, latest.png")


if __name__ == "__main__":
    main()
