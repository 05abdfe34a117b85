"""Tests for distill.report: PNGs are written, tables and numbers formatted as documented."""

from __future__ import annotations

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


def test_backend_is_agg() -> None:
    assert matplotlib.get_backend().lower() == "agg"


# --------------------------------------------------------------------------------------
# learning curves


def test_learning_curves_with_validation(tmp_path: Path) -> None:
    records = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": 0.5 + 0.1 * e}
        for e in range(1, 5)
    ]
    out = plot_learning_curves(records, tmp_path / "curves.png", title="student")
    assert out == tmp_path / "curves.png"
    _assert_png(out)
    assert _open_figures() == []


@pytest.mark.parametrize("missing", ["absent", "none"])
def test_learning_curves_without_validation(tmp_path: Path, missing: str) -> None:
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


def test_learning_curves_partial_validation(tmp_path: Path) -> None:
    records = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": None, "val_accuracy": None},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "val_accuracy": 0.7},
        {"epoch": 3, "train_loss": 0.6},
    ]
    _assert_png(plot_learning_curves(records, tmp_path / "c.png"))


# --------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_small_tensor(tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # last class has no samples
    out = plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "cm.png", title="t")
    _assert_png(out)
    assert _open_figures() == []


def test_confusion_matrix_many_classes_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(25, 25))
    names = [f"class_{i}" for i in range(25)]
    _assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm25.png"))
    assert _open_figures() == []


def test_confusion_matrix_rejects_wrong_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
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
