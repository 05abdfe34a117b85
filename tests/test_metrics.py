"""Tests for distill.metrics, checked against sklearn and hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from distill.metrics import (
    agreement,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    gap_closed,
    macro_f1,
    profile_model,
)


def _random_case(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [n, k] (float32) and targets [n] from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2.0
    # bias towards the true class so accuracy is neither ~0 nor ~1
    targets = torch.randint(0, k, (n,), generator=g)
    logits[torch.arange(n), targets] += 1.5
    return logits, targets


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits [N, K] whose softmax is ``probs`` [N, K] (log-probabilities)."""
    return torch.tensor(probs, dtype=torch.float64).log()


# --------------------------------------------------------------------------------------
# classification_metrics vs sklearn


@pytest.mark.parametrize("k,seed", [(10, 0), (3, 1)])
def test_classification_metrics_match_sklearn(k: int, seed: int) -> None:
    logits, targets = _random_case(500, k, seed)
    m = classification_metrics(logits, targets)
    y = targets.numpy()
    probs = logits.double().softmax(dim=1).numpy()
    preds = probs.argmax(axis=1)
    labels = list(range(k))

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, preds), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y, preds, average="macro", zero_division=0), abs=1e-9
    )
    assert m["nll"] == pytest.approx(skm.log_loss(y, probs, labels=labels), abs=1e-6)
    assert m["errors"] == int((preds != y).sum())
    assert m["n"] == 500
    assert 0.0 <= m["ece"] <= 1.0
    if k > 5:
        assert m["top5"] == pytest.approx(
            skm.top_k_accuracy_score(y, probs, k=5, labels=labels), abs=1e-12
        )
        assert m["top5"] > m["accuracy"]
    else:
        assert "top5" not in m
    assert set(m) == {"accuracy", "macro_f1", "nll", "ece", "errors", "n"} | (
        {"top5"} if k > 5 else set()
    )


def test_macro_f1_averages_over_labels_present_only() -> None:
    # K = 6: label 5 never occurs; 3 is only predicted; 4 is true once, never predicted right
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 4])
    preds = torch.tensor([0, 1, 1, 1, 2, 4, 3])
    expected = skm.f1_score(targets.numpy(), preds.numpy(), average="macro", zero_division=0)
    assert macro_f1(preds, targets) == pytest.approx(expected, abs=1e-12)
    # labels 3 and 4 score F1 0 but still count in the mean; label 5 does not count
    labels = [0, 1, 2, 3, 4]
    per_class = skm.f1_score(targets.numpy(), preds.numpy(), average=None, labels=labels)
    assert per_class[3] == 0.0 and per_class[4] == 0.0
    assert macro_f1(preds, targets) == pytest.approx(per_class.mean(), abs=1e-12)


def test_classification_metrics_dtype_independent() -> None:
    logits, targets = _random_case(200, 10, 2)
    ref = classification_metrics(logits.double(), targets)
    half = classification_metrics(logits.bfloat16(), targets)
    assert half["accuracy"] == pytest.approx(ref["accuracy"], abs=0.03)
    assert half["nll"] == pytest.approx(ref["nll"], rel=0.02)
    assert isinstance(half["nll"], float)
    # computed in float64 whatever the input: bf16 logits score exactly as the same values
    # given in float64 (the only difference left is the logits' own rounding)
    same = classification_metrics(logits.bfloat16().double(), targets)
    for key, value in same.items():
        assert half[key] == pytest.approx(value, abs=1e-12), key


def test_classification_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"^targets must be \[N\] with N=4, got shape \(5,\)$"):
        classification_metrics(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^cannot compute metrics on an empty set \(N = 0\)$"):
        classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    from distill.metrics import expected_calibration_error

    with pytest.raises(ValueError, match=r"^probs must be \[N, K\], got shape \(4,\)$"):
        expected_calibration_error(torch.zeros(4), torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------------------
# ECE


def test_ece_hand_computed() -> None:
    # confidences 0.92 (right), 0.98 (wrong), 0.65 (right), 0.55 (wrong); 10 bins
    probs = [[0.92, 0.08], [0.98, 0.02], [0.65, 0.35], [0.55, 0.45]]
    targets = torch.tensor([0, 1, 0, 1])
    # bin (0.9, 1]: acc 0.5, conf 0.95, 2 samples -> 0.45 * 2/4 = 0.225
    # bin (0.6, 0.7]: |1 - 0.65| * 1/4 = 0.0875; bin (0.5, 0.6]: |0 - 0.55| * 1/4 = 0.1375
    m = classification_metrics(_logits_for(probs), targets, n_bins=10)
    assert m["ece"] == pytest.approx(0.45, abs=1e-9)
    # with a single bin: |acc 0.5 - mean conf 0.775| = 0.275
    assert classification_metrics(_logits_for(probs), targets, n_bins=1)["ece"] == pytest.approx(
        0.275, abs=1e-9
    )


def test_ece_bins_hold_their_upper_edge() -> None:
    """Confidence 0.75 (right) sits on an edge of 4 bins: in (0.5, 0.75] it is alone,
    |1 - 0.75| = 0.25; 0.875 (wrong) is alone in (0.75, 1], 0.875: ECE (0.25 + 0.875) / 2.
    Bins of [lo, hi) would pool the two: |0.5 - 0.8125| = 0.3125."""
    probs = torch.tensor([[0.75, 0.25], [0.875, 0.125]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    assert expected_calibration_error(probs, targets, 4) == pytest.approx(0.5625, abs=1e-12)
    assert _ece_loop(probs.numpy(), targets.numpy(), 4) == pytest.approx(0.5625, abs=1e-12)


def test_ece_zero_when_perfectly_calibrated() -> None:
    # four samples at confidence 0.75, three right; two at 0.5 (tie -> class 0), one right
    probs = [[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2
    targets = torch.tensor([0, 0, 0, 1, 0, 1])
    m = classification_metrics(_logits_for(probs), targets)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["ece"] == pytest.approx(0.0, abs=1e-9)


def _ece_loop(probs: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Reference ECE with an explicit loop over (lo, hi] bins."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc = (pred[mask] == y[mask]).mean()
            total += abs(acc - conf[mask].mean()) * mask.sum() / len(y)
    return total


def test_ece_matches_loop_reference() -> None:
    logits, targets = _random_case(400, 10, 3)
    probs = logits.double().softmax(dim=1)
    for n_bins in (5, 15):
        expected = _ece_loop(probs.numpy(), targets.numpy(), n_bins)
        assert expected > 0.01
        got = expected_calibration_error(probs, targets, n_bins)
        assert got == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------
# confusion matrix, agreement, gap closed


def test_confusion_matrix_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(0, 7, (300,), generator=g)
    preds = torch.randint(0, 7, (300,), generator=g)
    cm = confusion_matrix(preds, targets, num_classes=7)
    assert cm.dtype == torch.int64
    assert cm.shape == (7, 7)
    expected = skm.confusion_matrix(targets.numpy(), preds.numpy(), labels=list(range(7)))
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_confusion_matrix_orientation_and_unused_classes() -> None:
    # one sample of true class 0 predicted as 2; class 3 never appears
    cm = confusion_matrix(torch.tensor([2, 1]), torch.tensor([0, 1]), num_classes=4)
    assert cm[0, 2] == 1 and cm[2, 0] == 0
    assert cm[1, 1] == 1
    assert int(cm.sum()) == 2 and cm.shape == (4, 4)
    with pytest.raises(ValueError, match=r"^preds has labels outside \[0, 4\)$"):
        confusion_matrix(torch.tensor([4]), torch.tensor([0]), num_classes=4)


def test_agreement_hand_example() -> None:
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    teacher = torch.tensor([[9.0, 1.0, 0.0], [0.0, 3.0, 7.0], [1.0, 0.0, 5.0], [0.0, 2.0, 0.0]])
    # argmax student 0,1,2,0; teacher 0,2,2,1 -> 2 of 4 agree
    assert agreement(student, teacher) == pytest.approx(0.5)
    assert agreement(student, student) == 1.0


def test_gap_closed() -> None:
    assert gap_closed(0.95, 0.97, 0.93) == pytest.approx(0.5)
    assert gap_closed(0.97, 0.97, 0.93) == pytest.approx(1.0)
    assert gap_closed(0.93, 0.97, 0.93) == pytest.approx(0.0)
    assert gap_closed(0.92, 0.97, 0.93) == pytest.approx(-0.25)
    assert gap_closed(0.99, 0.97, 0.93) == pytest.approx(1.5)
    assert gap_closed(0.95, 0.93, 0.93) is None


# --------------------------------------------------------------------------------------
# profile_model


def test_profile_linear_macs_and_params() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    prof = profile_model(model, (1, 28, 28), batch_size=8, repeats=3)
    assert prof["macs_per_image"] == 7840
    assert prof["params"] == 7850
    assert prof["latency_batch_size"] == 8
    assert prof["latency_ms_per_batch"] > 0 and math.isfinite(prof["latency_ms_per_batch"])


def test_profile_times_forwards_at_the_reported_batch_size() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    seen: list[int] = []
    model.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[0]))
    prof = profile_model(model, (1, 28, 28), batch_size=8, repeats=3)
    # one [1, ...] forward counts the MACs, then a warm-up and 3 timed forwards at batch 8
    assert seen == [1, 8, 8, 8, 8]
    assert prof["latency_batch_size"] == 8


def test_profile_counts_frozen_params_too() -> None:
    # a frozen teacher has no trainable parameters, but its size is what a report compares
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Linear(10, 5))
    model[1].requires_grad_(False)
    assert profile_model(model, (1, 28, 28), batch_size=2, repeats=1)["params"] == 7850 + 55


def _bn_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
        nn.BatchNorm1d(5),
    )


def test_profile_leaves_state_and_mode_untouched() -> None:
    torch.manual_seed(0)
    model = _bn_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, (3, 8, 8), batch_size=16, repeats=2)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_profile_restores_mixed_modes() -> None:
    model = _bn_model().train()
    model[1].eval()  # a frozen BatchNorm inside a model in train mode
    profile_model(model, (3, 8, 8), batch_size=4, repeats=1)
    assert model.training and not model[1].training and model[5].training

    model.eval()
    profile_model(model, (3, 8, 8), batch_size=4, repeats=1)
    assert not any(m.training for m in model.modules())
