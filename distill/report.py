"""Plots (PNG, via matplotlib's Agg backend) and rich tables of results.

Plot functions write a file, close their figure and return the path; they never open a
window, so they work on headless machines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # must come before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
from rich.table import Table  # noqa: E402

from distill.atomic import write_whole  # noqa: E402

__all__ = ["comparison_table", "format_metric", "plot_confusion_matrix", "plot_learning_curves"]

DPI = 110
MISSING = "—"
PERCENT_KEYS = ("accuracy", "top5", "agreement", "macro_f1", "ece", "gap_closed")
COUNT_KEYS = ("params", "macs")


# --------------------------------------------------------------------------------------
# formatting


def _matches(key: str, names: tuple[str, ...]) -> bool:
    """True if ``key`` is one of ``names`` or ends with ``_<name>`` (e.g. ``val_accuracy``)."""
    return any(key == n or key.endswith("_" + n) for n in names)


def human_count(value: float) -> str:
    """A count in short form: 950 -> "950", 35_100 -> "35.1K", 1_234_567 -> "1.2M"."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 1000:
        return f"{sign}{value:.0f}" if float(value).is_integer() else f"{sign}{value:.1f}"
    for unit in ("K", "M", "G", "T"):
        value /= 1000
        if round(value, 1) < 1000 or unit == "T":
            return f"{sign}{value:.1f}{unit}"
    raise AssertionError("unreachable")


def format_metric(key: str, value: float | None) -> str:
    """One metric value as table text; the rule depends on the metric name ``key``.

    Fractions (accuracy, top5, agreement, macro_f1, ece, gap_closed) become percentages with
    2 decimals ("97.50%"); nll gets 4 decimals; params and macs* are short counts ("1.2M");
    latency* gets 3 decimals and " ms" (``latency_batch_size`` is a plain integer). None or
    NaN gives "—". Anything else: integers as is, other floats with 4 significant digits.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if _matches(key, PERCENT_KEYS):
        return f"{100 * value:.2f}%"
    if _matches(key, ("nll",)):
        return f"{value:.4f}"
    if key.startswith(COUNT_KEYS):
        return human_count(value)
    if key.startswith("latency") and not key.endswith("batch_size"):
        return f"{value:.3f} ms"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def comparison_table(title: str, models: list[tuple[str, dict[str, float | None]]],
                     keys: list[str]) -> Table:
    """A rich table with one row per metric key and one column per model (narrow terminals
    fit any number of metrics this way). Values are formatted by :func:`format_metric`.
    """
    table = Table(title=title or None)
    table.add_column("metric", style="bold")
    for name, _ in models:
        table.add_column(name, justify="right")
    for key in keys:
        if any(values.get(key) is not None for _, values in models):
            table.add_row(key, *(format_metric(key, values.get(key)) for _, values in models))
    return table


# --------------------------------------------------------------------------------------
# plots


def save_png(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (creating parent folders), close it, return path.
    The file appears whole (written beside it, then renamed): a reader, or another process
    drawing the same plot into a shared sweep folder, never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_whole(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png",
                                                  bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the records where ``key`` is present and not None."""
    pairs = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [float(e) for e, _ in pairs], [float(v) for _, v in pairs]


def _no_data(ax: Axes, message: str) -> None:
    """Blank out ``ax`` with a centred ``message``."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _loss_panel(ax: Axes, records: list[dict[str, Any]]) -> None:
    """Train loss and (if any) val loss against epoch."""
    # a student's training loss is the distillation loss: compare cross-entropy with
    # cross-entropy (its hard part), and show the optimised loss only when it differs
    distilled = any(r.get("train_soft") is not None for r in records)
    curves = [("train_hard" if distilled else "train_loss", "train cross-entropy", "-o"),
              ("val_loss", "val cross-entropy", "-s")]
    if distilled:
        curves.append(("train_soft", "train soft term (T² KL)", ":"))
    for key, label, style in curves:
        epochs, values = _series(records, key)
        if values:
            ax.plot(epochs, values, style, label=label, markersize=3)
    if not ax.lines:
        _no_data(ax, "no loss recorded")
        return
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()


def _accuracy_panel(ax: Axes, records: list[dict[str, Any]]) -> None:
    """Validation accuracy (a fraction, shown as %) against epoch, or a notice if absent."""
    epochs, values = _series(records, "val_accuracy")
    ax.set_title("validation accuracy")
    if not values:
        _no_data(ax, "no validation split")
        return
    ax.plot(epochs, values, "-o", color="tab:green", markersize=3)
    best = int(np.argmax(values))
    ax.annotate(f"best {100 * values[best]:.2f}%", (epochs[best], values[best]),
                textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy")
    ax.grid(alpha=0.3)


def plot_learning_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Two-panel PNG of per-epoch ``records`` (dicts with ``epoch``, ``train_loss`` and
    optionally ``val_loss``, ``val_accuracy``, which may be missing or None).

    Left: train and val loss vs epoch. Right: val accuracy vs epoch, or "no validation
    split". Returns ``path``.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    _loss_panel(ax_loss, records)
    _accuracy_panel(ax_acc, records)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def _row_normalise(cm: np.ndarray) -> np.ndarray:
    """[K, K] counts -> [K, K] fractions of each row's total (all-zero rows stay 0)."""
    totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


def _write_counts(ax: Axes, cm: np.ndarray, norm: np.ndarray) -> None:
    """Write each count of ``cm`` [K, K] in its cell, in a colour readable on the cell."""
    k = cm.shape[0]
    fontsize = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color=color, fontsize=fontsize)


def plot_confusion_matrix(
    cm: torch.Tensor | np.ndarray, class_names: list[str], path: Path, title: str = ""
) -> Path:
    """PNG heat map of confusion matrix ``cm`` [K, K] (rows true, columns predicted).

    Colours are row-normalised (per-class recall on the diagonal); counts are written in
    the cells when K <= 20. Returns ``path``.
    """
    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(
            f"cm must be [K, K] with K = len(class_names) = {len(class_names)}, "
            f"got shape {cm.shape}"
        )
    norm = _row_normalise(cm)
    side = min(max(4.0, 0.45 * k + 2.5), 20.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if k <= 20:
        _write_counts(ax, cm, norm)
    ticks = np.arange(k)
    rotate = k > 10 or max((len(n) for n in class_names), default=0) > 6
    ax.set_xticks(ticks, labels=class_names, rotation=90 if rotate else 0,
                  fontsize=8 if k > 20 else None)
    ax.set_yticks(ticks, labels=class_names, fontsize=8 if k > 20 else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)
