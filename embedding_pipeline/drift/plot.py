"""A PNG of one source table's model-version distribution over time, from drift_history.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global
state), so it is safe in Dagster's run workers and in threads.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_version_history(rows: list[dict], path: Path, source: str) -> Path:
    """One panel per space: vectors per model_version (solid) and coverage % (dashed, right axis)."""
    by_space: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_space[r["space"]].append(r)
    spaces = sorted(by_space) or ["(no spaces bound)"]
    fig = Figure(figsize=(8, 2.4 * len(spaces)), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(spaces), 1, squeeze=False)[:, 0]
    for ax, space in zip(axes, spaces, strict=True):
        points = by_space.get(space, [])
        ax.set_title(f"{source} / {space}", fontsize=10, loc="left")
        ax.set_ylabel("vectors")
        versions = sorted({v for p in points for v in (p["versions"] or {})})
        at = [p["at"] for p in points]
        for v in versions:
            ax.plot(at, [(p["versions"] or {}).get(v, 0) for p in points], marker="o", markersize=3, label=v)
        if points:
            cov = ax.twinx()
            cov.plot(at, [100 * p["coverage"] for p in points], linestyle="--", color="grey", label="coverage %")
            cov.set_ylim(0, 105)
            cov.set_ylabel("coverage %")
        if versions:
            ax.legend(fontsize=7, loc="lower left", title="model_version", title_fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
