"""Latency-versus-throughput plots (PNG) with matplotlib, an optional dependency: `pip install batchery[bench]`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchery.errors import ConfigError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window or need a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: `pip install 'batchery[bench]'` (or drop --plot)") from exc
    return plt


def latency_vs_throughput(
    series: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, *, title: str = ""
) -> Path:
    """Plot one line per series of (throughput, p50 ms, p99 ms) points, p99 dashed; write a PNG to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, points in series.items():
        ordered = sorted(points)
        xs = [p[0] for p in ordered]
        (line,) = ax.plot(xs, [p[1] for p in ordered], marker="o", label=f"{name} p50")
        ax.plot(xs, [p[2] for p in ordered], marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99")
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
