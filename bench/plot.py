"""`bench/results/latest.png`: the run at a glance, one row per app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.results import Run, TargetResult

__all__ = ["plot"]

ROUTE_COLORS = {"get": "tab:blue", "list": "tab:orange", "create": "tab:green"}


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = 32 if 32 in run.levels else max(run.levels)
    top = max(run.levels)
    targets = list(reversed(run.targets))  # first app on top
    labels = [t.label for t in targets]
    panels: list[tuple[str, Callable[[TargetResult, str], float | None]]] = [
        (f"requests/s at {mid} clients (higher is better)", lambda t, r: _rps(t, r, mid)),
        (f"p99 latency at {top} clients, ms (lower is better)", lambda t, r: _p99(t, r, top)),
        (f"app CPU per request at {mid} clients, ms", lambda t, r: _cpu(t, r, mid)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(targets) + 2), sharey=True)
    height = 0.27
    for ax, (title, value) in zip(axes, panels, strict=True):
        for i, (route, color) in enumerate(ROUTE_COLORS.items()):
            ys = [y + (1 - i) * height for y in range(len(targets))]
            xs = [value(t, route) or 0.0 for t in targets]
            bars = ax.barh(ys, xs, height=height, color=color, label=route)
            values = [f"{x:.0f}" if x >= 10 else f"{x:.2f}" for x in xs]
            ax.bar_label(bars, labels=values, fontsize=7, padding=2)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.15)
    axes[0].set_yticks(range(len(targets)), labels)
    axes[0].legend(loc="lower right", fontsize=8)
    mode = "QUICK" if run.quick else "full"
    fig.suptitle(f"make bench ({mode}), commit {run.commit}, {run.date}: {run.machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rps(t: TargetResult, route: str, clients: int) -> float | None:
    lv = t.level(route, clients)
    return float(lv.wrk.rps) if lv else None


def _p99(t: TargetResult, route: str, clients: int) -> float | None:
    lv = t.level(route, clients)
    return float(lv.wrk.p99_ms) if lv else None


def _cpu(t: TargetResult, route: str, clients: int) -> float | None:
    lv = t.level(route, clients)
    return lv.cpu_ms if lv else None
