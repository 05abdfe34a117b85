"""The plots of a sweep folder, drawn from its results and its cells' metrics logs.

``heatmap.png``: the mean validation accuracy over the T x alpha grid, the best cell on
validation boxed. ``val_curves.png``: each cell's validation accuracy per epoch, to see
whether the best cell leads steadily or by one epoch's noise. Both are written whole by
:func:`distill.report.save_png` (processes sharing a sweep folder redraw them); test
accuracy is never drawn.
"""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from distill.report import plt, save_png
from distill.sweep import aggregate, best_cell
from distill.tracking import METRICS, MetricsLog

HEATMAP = "heatmap.png"
VAL_CURVES = "val_curves.png"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]  # per alpha, with DASHES
DASHES = ["-", "--", ":", "-."]


def plot_heatmap(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Mean validation accuracy over the T x alpha grid, as a PNG (None without val data)."""
    cells = [c for c in aggregate(rows) if c["val"] is not None]
    if not cells:
        return None
    Ts = sorted({c["T"] for c in cells})
    alphas = sorted({c["alpha"] for c in cells})
    grid_ = np.full((len(Ts), len(alphas)), np.nan)
    for c in cells:
        grid_[Ts.index(c["T"]), alphas.index(c["alpha"])] = 100 * c["val"][0]
    width = 1.2 * len(alphas) + 3  # inches
    fig, ax = plt.subplots(figsize=(width, 0.8 * len(Ts) + 2))
    image = ax.imshow(grid_, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="val accuracy (%), mean over seeds", format="%.2f",
                 ticks=MaxNLocator(5))  # a few round values, not 3-decimal steps
    for i in range(len(Ts)):
        for j in range(len(alphas)):
            if not np.isnan(grid_[i, j]):
                r, g, b, _ = image.cmap(image.norm(grid_[i, j]))
                bright_cell = 0.299 * r + 0.587 * g + 0.114 * b > 0.5  # luma
                ax.text(j, i, f"{grid_[i, j]:.2f}", ha="center", va="center",
                        color="black" if bright_cell else "white", fontsize=9)
    best = best_cell(cells)  # the cell the table and results.py name, ties included
    row, col = Ts.index(best["T"]), alphas.index(best["alpha"])
    ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False,
                               edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(alphas)), labels=[f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(Ts)), labels=[f"{t:g}" for t in Ts])
    ax.set_xlabel("alpha (weight of the soft term)")
    ax.set_ylabel("T (temperature)")
    # wrapped to the figure (about 8 characters an inch at 10 pt), never cut at its edges
    ax.set_title(textwrap.fill(title or "validation accuracy (best boxed)", int(8 * width)),
                 fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


@dataclass
class ValCurve:
    """One (T, alpha) cell's validation accuracy per epoch over its seeds (fractions)."""

    epochs: list[int]
    mean: list[float]
    low: list[float]  # the lowest seed's, at each epoch
    high: list[float]  # the highest seed's
    seeds: int


def val_curves(sweep_dir: Path, rows: list[dict[str, Any]]) -> dict[tuple[float, float], ValCurve]:
    """Per (T, alpha): validation accuracy per epoch over the seeds of the finished cells in
    ``rows``, read from each cell's metrics.jsonl; only the epochs every seed has, so the
    mean never jumps where a seed's run stops short."""
    per_seed: dict[tuple[float, float], list[dict[int, float]]] = {}
    for r in rows:
        curve = {rec["epoch"]: rec["val_accuracy"]
                 for rec in MetricsLog(sweep_dir / r["run"] / METRICS).read()
                 if rec.get("val_accuracy") is not None}
        if curve:
            per_seed.setdefault((r["T"], r["alpha"]), []).append(curve)
    out = {}
    for key, seeds in per_seed.items():
        epochs = sorted(set.intersection(*(set(c) for c in seeds)))
        if epochs:
            at = [[c[e] for c in seeds] for e in epochs]
            out[key] = ValCurve(epochs, [statistics.fmean(v) for v in at],
                                [min(v) for v in at], [max(v) for v in at], len(seeds))
    return out


def plot_val_curves(sweep_dir: Path, rows: list[dict[str, Any]], path: Path,
                    title: str = "") -> Path | None:
    """Validation accuracy against epoch, one line per (T, alpha): colour by T, dash and
    marker by alpha, the mean over seeds with a band from the lowest to the highest seed,
    the best cell on validation drawn thick; all epochs, and (from 4 epochs on) the last
    half again, to see whether the best cell leads steadily or by one epoch's noise.
    None without validation data."""
    curves = val_curves(sweep_dir, rows)
    if not curves:
        return None
    best = best_cell(aggregate(rows))
    top = (best["T"], best["alpha"]) if best else None
    Ts = sorted({T for T, _ in curves})
    alphas = sorted({a for _, a in curves})
    last = max(c.epochs[-1] for c in curves.values())
    starts = [1] if last < 4 else [1, last // 2 + 1]
    fig, axes = plt.subplots(1, len(starts), figsize=(6.2 * len(starts), 4.2), squeeze=False)
    for ax, since in zip(axes[0], starts):
        for (T, alpha), c in sorted(curves.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            keep = [i for i, e in enumerate(c.epochs) if e >= since]
            x = [c.epochs[i] for i in keep]
            colour, a = f"C{Ts.index(T) % 10}", alphas.index(alpha)
            ax.plot(x, [100 * c.mean[i] for i in keep], color=colour,
                    linestyle=DASHES[a % len(DASHES)], marker=MARKERS[a % len(MARKERS)],
                    markersize=4, linewidth=3 if (T, alpha) == top else 1.3,
                    label=f"T {T:g}, alpha {alpha:g}"
                          + (" (best on val)" if (T, alpha) == top else ""))
            if c.seeds > 1:
                ax.fill_between(x, [100 * c.low[i] for i in keep],
                                [100 * c.high[i] for i in keep], color=colour, alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title("all epochs" if since == 1 else f"epochs {since}-{last}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()  # every cell is in the first
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=len(alphas), fontsize=8)  # a column per alpha, below the panels
    seeds = sorted({c.seeds for c in curves.values()})
    spread = ", band: lowest to highest seed" if seeds[-1] > 1 else ""
    what = ("1 seed" if seeds == [1] else
            f"mean over {'/'.join(map(str, seeds))} seeds{spread}")
    fig.suptitle(textwrap.fill(f"{title + ': ' if title else ''}{what}", 110), fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


def plot_sweep(sweep_dir: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """The sweep folder's plots: ``heatmap.png`` and ``val_curves.png``."""
    plot_heatmap(rows, sweep_dir / HEATMAP, title=f"{name}: validation accuracy (best boxed)")
    plot_val_curves(sweep_dir, rows, sweep_dir / VAL_CURVES,
                    title=f"{name}: validation accuracy per epoch")
