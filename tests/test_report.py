"""Tests for distill.report: PNGs are written, tables and numbers formatted as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from rich.console import Console
from rich.table import Table

from distill.report import comparison_table, format_metric, plot_confusion_matrix, plot_learning_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def _open_figures() -> list[int]:
    import matplotlib.pyplot as plt

    return plt.get_fignums()


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plotting functions close after saving them, to read what they show."""
    import matplotlib.pyplot as plt

    figures, real = [], plt.close

    def close(fig=None):
        figures.append(fig)
        real(fig)

    monkeypatch.setattr(plt, "close", close)
    return figures


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines}


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_backend_is_agg() -> None:
    """Plots go to files, never to a window: Agg, even where the environment names another
    backend (a headless machine would pick Agg by itself, so that alone proves nothing)."""
    assert matplotlib.get_backend().lower() == "agg"
    code = "import distill.report, matplotlib; print(matplotlib.get_backend())"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "MPLBACKEND": "svg"}, timeout=120)
    assert shown.stdout.strip().lower() == "agg", shown.stderr[-2000:]


# --------------------------------------------------------------------------------------
# learning curves


def test_learning_curves_with_validation(tmp_path: Path, drawn) -> None:
    records = [  # the best validation epoch is not the last
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": acc}
        for e, acc in zip(range(1, 5), (0.6, 0.9, 0.7, 0.8))
    ]
    out = plot_learning_curves(records, tmp_path / "curves.png", title="student")
    assert out == tmp_path / "curves.png"
    _assert_png(out)
    assert _open_figures() == []
    (fig,) = drawn
    loss, acc = fig.axes
    epochs = [1.0, 2.0, 3.0, 4.0]
    assert _lines(loss) == {"train cross-entropy": (epochs, [2.0 / e for e in epochs]),
                            "val cross-entropy": (epochs, [2.2 / e for e in epochs])}
    (curve,) = acc.lines
    assert list(curve.get_ydata()) == [r["val_accuracy"] for r in records]
    assert _texts(acc) == ["best 90.00%"]  # the best epoch, marked where it is
    assert tuple(map(float, acc.texts[0].xy)) == (2.0, 0.9)
    assert fig._suptitle.get_text() == "student"


def test_a_students_curves_compare_cross_entropy_with_cross_entropy(tmp_path: Path,
                                                                     drawn) -> None:
    """A distilled student's train loss mixes in the soft term: the panel plots its hard
    (cross-entropy) part beside val cross-entropy, and the soft term apart."""
    records = [{"epoch": e, "train_loss": 5.0, "train_hard": 1.0 / e, "train_soft": 3.0 / e,
                "val_loss": 1.5 / e, "val_accuracy": 0.8} for e in (1, 2)]
    plot_learning_curves(records, tmp_path / "s.png")
    (fig,) = drawn
    assert _lines(fig.axes[0]) == {"train cross-entropy": ([1.0, 2.0], [1.0, 0.5]),
                                   "val cross-entropy": ([1.0, 2.0], [1.5, 0.75]),
                                   "train soft term (T² KL)": ([1.0, 2.0], [3.0, 1.5])}


@pytest.mark.parametrize("missing", ["absent", "none"])
def test_learning_curves_without_validation(tmp_path: Path, missing: str, drawn) -> None:
    if missing == "absent":
        records = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    else:
        records = [
            {"epoch": e, "train_loss": 1.0 / e, "val_loss": None, "val_accuracy": None}
            for e in range(1, 4)
        ]
    out = plot_learning_curves(records, tmp_path / "sub" / "curves.png")
    _assert_png(out)
    assert _open_figures() == []
    loss, acc = drawn[0].axes
    assert list(_lines(loss)) == ["train cross-entropy"]
    assert len(acc.lines) == 0 and _texts(acc) == ["no validation split"]


def test_learning_curves_partial_validation(tmp_path: Path, drawn) -> None:
    records = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": None, "val_accuracy": None},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "val_accuracy": 0.7},
        {"epoch": 3, "train_loss": 0.6},
    ]
    _assert_png(plot_learning_curves(records, tmp_path / "c.png"))
    loss, acc = drawn[0].axes
    assert _lines(loss) == {"train cross-entropy": ([1.0, 2.0, 3.0], [1.0, 0.8, 0.6]),
                            "val cross-entropy": ([2.0], [0.9])}  # only where recorded
    assert [list(line.get_ydata()) for line in acc.lines] == [[0.7]]


# --------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_small_tensor(tmp_path: Path, drawn) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # last class has no samples
    out = plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "cm.png", title="t")
    _assert_png(out)
    assert _open_figures() == []
    ax = drawn[0].axes[0]  # the matrix (the other axes is its colour bar)
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, [[5 / 6, 1 / 6, 0], [0.2, 0.7, 0.1], [0, 0, 0]])
    assert _texts(ax) == ["5", "1", "0", "2", "7", "1", "0", "0", "0"]  # counts, row by row
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "t")


def test_confusion_matrix_many_classes_numpy(tmp_path: Path, drawn) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(25, 25))
    names = [f"class_{i}" for i in range(25)]
    _assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm25.png"))
    assert _open_figures() == []
    ax = drawn[0].axes[0]
    assert _texts(ax) == []  # 625 counts would not be readable
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()).sum(axis=1), 1.0)


def test_the_sweep_heatmap_shows_mean_validation_accuracy_and_boxes_the_best(
        tmp_path: Path, drawn) -> None:
    from distill.sweep_plots import plot_heatmap

    rows = [{"T": T, "alpha": a, "seed": s, "val_accuracy": v, "test_accuracy": 0.99}
            for T, a, s, v in [(2.0, 0.5, 0, 0.80), (2.0, 0.5, 1, 0.84), (2.0, 0.9, 0, 0.90),
                               (4.0, 0.5, 0, 0.70), (4.0, 0.9, 0, 0.88)]]
    _assert_png(plot_heatmap(rows, tmp_path / "heatmap.png"))
    ax = drawn[0].axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()),
                               [[82.0, 90.0], [70.0, 88.0]])  # rows T, columns alpha
    assert _texts(ax) == ["82.00", "90.00", "70.00", "88.00"]
    (box,) = ax.patches
    assert box.get_xy() == (0.5, -0.5)  # around T 2, alpha 0.9: best on validation
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9"]


def test_a_long_heatmap_title_is_wrapped_inside_the_figure_and_labels_stay_readable(
        tmp_path: Path, drawn) -> None:
    """A sweep folder's name goes into the title: on a 2-column grid it once ran off both
    edges of the PNG; and white numbers on viridis's yellow end could not be read."""
    from distill.sweep_plots import plot_heatmap

    rows = [{"T": T, "alpha": a, "seed": 0, "val_accuracy": v, "test_accuracy": 0.9}
            for T, a, v in [(4.0, 0.5, 0.99), (4.0, 0.9, 0.95)]]
    title = "mnist-hinton-val-sweep: validation accuracy after 20 epochs (chosen cell boxed)"
    plot_heatmap(rows, tmp_path / "heatmap.png", title=title)
    fig = drawn[0]
    ax = fig.axes[0]
    assert " ".join(ax.get_title().split()) == title  # all of it, on several lines
    fig.canvas.draw()
    box = ax.title.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours == {"99.00": "black", "95.00": "white"}  # yellow top, purple bottom


def _sweep_cells(folder: Path, curves: dict[tuple, list[float]]) -> list[dict]:
    """Cell run folders with these per-epoch validation accuracies (each metrics.jsonl ends
    in a line cut short, as a kill leaves it), and their results rows."""
    import json

    rows = []
    for (run, T, alpha, seed), accs in curves.items():
        (folder / run).mkdir()
        records = [{"epoch": e, "train_loss": 1.0, "val_accuracy": a}
                   for e, a in enumerate(accs, 1)]
        (folder / run / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 9, "val_')
        rows.append({"T": T, "alpha": alpha, "seed": seed, "run": run, "test_accuracy": 0.5,
                     "val_accuracy": accs[-1]})
    return rows


def test_the_sweep_val_curves_show_each_cell_mean_over_seeds_and_its_last_half(
        tmp_path: Path, drawn) -> None:
    """One line per (T, alpha), the mean over seeds per epoch with a band from the lowest to
    the highest seed; the right panel zooms on the last half of the epochs; the best cell
    on validation (final mean) is the thick line; the legend, below, names every cell."""
    from distill.sweep_plots import plot_val_curves

    rows = _sweep_cells(tmp_path, {("T2-a0.5-s0", 2.0, 0.5, 0): [0.50, 0.60, 0.70, 0.80],
                                   ("T2-a0.5-s1", 2.0, 0.5, 1): [0.40, 0.60, 0.80, 0.90],
                                   ("T4-a0.5-s0", 4.0, 0.5, 0): [0.55, 0.65, 0.75, 0.80]})
    _assert_png(plot_val_curves(tmp_path, rows, tmp_path / "curves.png", title="t"))
    fig = drawn[0]
    whole, last_half = fig.axes
    lines = _lines(whole)
    assert list(lines) == ["T 2, alpha 0.5 (best on val)", "T 4, alpha 0.5"]
    np.testing.assert_allclose(lines["T 2, alpha 0.5 (best on val)"][1], [45, 60, 75, 85])
    np.testing.assert_allclose(lines["T 4, alpha 0.5"][1], [55, 65, 75, 80])
    assert [line.get_linewidth() for line in whole.lines] == [3, 1.3]
    (band,) = whole.collections  # only T 2 has two seeds
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].min(), 40)
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].max(), 90)
    assert {k: v[0] for k, v in _lines(last_half).items()} == {
        "T 2, alpha 0.5 (best on val)": [3, 4], "T 4, alpha 0.5": [3, 4]}
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(lines)
    assert "mean over 1/2 seeds, band: lowest to highest seed" in fig._suptitle.get_text()


def test_the_sweep_val_curves_keep_the_epochs_every_seed_has_and_every_cell(
        tmp_path: Path, drawn) -> None:
    """A seed that stopped short must not make its cell's mean jump (only the epochs all its
    seeds have are drawn), and a cell with fewer epochs than the rest is still in the legend;
    with fewer than 4 epochs there is no second panel to zoom into."""
    from distill.sweep_plots import plot_val_curves

    rows = _sweep_cells(tmp_path, {("T2-a0.5-s0", 2.0, 0.5, 0): [0.50, 0.60, 0.70],
                                   ("T2-a0.5-s1", 2.0, 0.5, 1): [0.40, 0.60],
                                   ("T4-a0.9-s0", 4.0, 0.9, 0): [0.55, 0.65, 0.75]})
    plot_val_curves(tmp_path, rows, tmp_path / "curves.png")
    fig = drawn[0]
    (ax,) = fig.axes
    lines = _lines(ax)
    assert lines["T 2, alpha 0.5"] == ([1, 2], [45.0, 60.0])
    assert lines["T 4, alpha 0.9 (best on val)"][0] == [1, 2, 3]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(lines)


def test_the_heatmap_boxes_the_cell_the_table_chooses_when_two_tie(tmp_path: Path,
                                                                    drawn) -> None:
    """Ties on 5000 validation images are common (steps of 0.02%): the box goes to the cell
    best_cell names (the first in the grid's order), not to the first in sorted order."""
    from distill.sweep import aggregate, best_cell
    from distill.sweep_plots import plot_heatmap

    rows = [{"T": T, "alpha": 0.5, "seed": 0, "val_accuracy": 0.9, "test_accuracy": 0.9}
            for T in (8.0, 4.0)]  # --T 8,4
    assert best_cell(aggregate(rows))["T"] == 8.0
    plot_heatmap(rows, tmp_path / "heatmap.png")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "8"]
    (box,) = ax.patches
    assert box.get_xy() == (-0.5, 0.5)  # row 1: T 8


def test_confusion_matrix_rejects_wrong_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^cm must be \[K, K\] with K = len\(class_names\) = 2"):
        plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "x.png")


# --------------------------------------------------------------------------------------
# formatting and tables


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("accuracy", 0.975, "97.50%"),
        ("top5", 1.0, "100.00%"),
        ("agreement", 0.98765, "98.77%"),
        ("macro_f1", 0.5, "50.00%"),
        ("ece", 0.0123, "1.23%"),
        ("gap_closed", -0.25, "-25.00%"),
        ("val_accuracy", 0.9, "90.00%"),
        ("nll", 0.123456, "0.1235"),
        ("params", 1_234_567, "1.2M"),
        ("params", 35_100, "35.1K"),
        ("params", 950, "950"),
        ("macs_per_image", 7840, "7.8K"),
        ("macs_per_image", 2.5e9, "2.5G"),
        ("params", 999_960, "1.0M"),
        ("latency_ms_per_batch", 1.23456, "1.235 ms"),
        ("latency_batch_size", 64, "64"),
        ("errors", 12, "12"),
        ("accuracy", None, "—"),
        ("gap_closed", None, "—"),
        ("nll", float("nan"), "—"),
    ],
)
def test_format_metric(key: str, value: float | None, expected: str) -> None:
    assert format_metric(key, value) == expected


def _render(table: Table) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    return console.export_text()


def test_comparison_table() -> None:
    models = [
        ("student", {"accuracy": 0.975, "nll": 0.08, "params": 35_100, "gap_closed": None}),
        ("teacher", {"accuracy": 0.99, "nll": 0.03, "params": 1_200_000}),
    ]
    table = comparison_table("MNIST", models, ["accuracy", "nll", "params", "gap_closed", "ece"])
    assert [c.header for c in table.columns] == ["metric", "student", "teacher"]
    assert table.row_count == 3  # gap_closed and ece are missing everywhere: no row
    text = _render(table)
    assert "MNIST" in text
    accuracy_line = next(line for line in text.splitlines() if "accuracy" in line)
    assert "97.50%" in accuracy_line and "99.00%" in accuracy_line
    params_line = next(line for line in text.splitlines() if "params" in line)
    assert "35.1K" in params_line and "1.2M" in params_line
    assert "0.0300" in text
