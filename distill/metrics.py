"""Evaluation metrics as pure functions of logits and targets.

Everything here takes tensors and returns plain Python numbers (or a tensor, for the
confusion matrix); nothing touches a data loader. Shapes: ``N`` samples, ``K`` classes.
Classification metrics are computed in float64 whatever the input dtype, so half-precision
logits give the same numbers as float32 ones up to the rounding of the logits themselves.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from distill.models import input_format

__all__ = [
    "agreement",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "gap_closed",
    "macro_f1",
    "profile_model",
]


# --------------------------------------------------------------------------------------
# input checks


def _check_logits_targets(logits: Tensor, targets: Tensor, what: str = "logits") -> None:
    """Raise ValueError unless logits (named ``what``) is [N, K] (N >= 1) and targets is [N]."""
    if logits.dim() != 2:
        raise ValueError(f"{what} must be [N, K], got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be [N] with N={logits.shape[0]}, got shape {tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("cannot compute metrics on an empty set (N = 0)")


def _check_same_length(preds: Tensor, targets: Tensor) -> None:
    """Raise ValueError unless preds and targets are both [N]."""
    if preds.dim() != 1 or targets.dim() != 1 or preds.shape[0] != targets.shape[0]:
        raise ValueError(
            f"preds and targets must both be [N], got {tuple(preds.shape)} and "
            f"{tuple(targets.shape)}"
        )


# --------------------------------------------------------------------------------------
# classification metrics


def macro_f1(preds: Tensor, targets: Tensor) -> float:
    """Macro-averaged F1 of predicted labels ``preds`` [N] against ``targets`` [N].

    Like sklearn's ``f1_score(average="macro", zero_division=0)``: the mean is over the
    labels that occur in ``targets`` or ``preds``; a label with no true positives scores 0.
    """
    _check_same_length(preds, targets)
    preds, targets = preds.long(), targets.long()
    labels = torch.unique(torch.cat([preds, targets]))
    if labels.numel() == 0:
        return 0.0
    # [L, N] one-hot masks for every label present
    is_pred = preds.unsqueeze(0) == labels.unsqueeze(1)
    is_true = targets.unsqueeze(0) == labels.unsqueeze(1)
    tp = (is_pred & is_true).sum(dim=1).double()
    fp = (is_pred & ~is_true).sum(dim=1).double()
    fn = (~is_pred & is_true).sum(dim=1).double()
    denom = 2 * tp + fp + fn  # > 0 for every label in the union
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
    return float(f1.mean())


def expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of probabilities ``probs`` [N, K] against ``targets`` [N].

    Confidence is the max probability; it is put in one of ``n_bins`` equal-width bins over
    [0, 1], bin ``b`` covering ``(b/n_bins, (b+1)/n_bins]`` (the first bin also holds 0).
    ECE = sum over bins of ``|accuracy(bin) - mean confidence(bin)| * count(bin) / N``.
    """
    _check_logits_targets(probs, targets, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = probs.double()
    conf, preds = probs.max(dim=1)  # [N], [N]
    correct = (preds == targets.to(preds.device)).double()  # [N]
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)  # [N]
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)  # [n_bins]
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)  # [n_bins]
    # sum_b |acc_b - conf_b| * n_b / N == sum_b |correct_sum_b - conf_sum_b| / N
    return float((correct_sum - conf_sum).abs().sum() / conf.shape[0])


def classification_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Standard metrics of raw ``logits`` [N, K] against integer ``targets`` [N].

    Returns ``accuracy`` (top-1 fraction), ``top5`` (only when K > 5), ``macro_f1``,
    ``nll`` (mean negative log-likelihood of the softmax), ``ece`` (see
    :func:`expected_calibration_error`), ``errors`` (count of wrong top-1) and ``n`` (N).
    """
    _check_logits_targets(logits, targets)
    logits = logits.detach().double()
    targets = targets.detach().long().to(logits.device)
    n, k = logits.shape
    preds = logits.argmax(dim=1)  # [N]
    correct = preds == targets  # [N]
    out: dict[str, float] = {"accuracy": float(correct.double().mean())}
    if k > 5:
        top5 = logits.topk(5, dim=1).indices  # [N, 5]
        out["top5"] = float((top5 == targets.unsqueeze(1)).any(dim=1).double().mean())
    out["macro_f1"] = macro_f1(preds, targets)
    out["nll"] = float(F.cross_entropy(logits, targets))
    out["ece"] = expected_calibration_error(logits.softmax(dim=1), targets, n_bins)
    out["errors"] = int(n - int(correct.sum()))
    out["n"] = int(n)
    return out


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix [K, K] int64 of ``preds`` [N] against ``targets`` [N].

    Entry ``[i, j]`` counts samples of true class ``i`` predicted as class ``j``.
    """
    _check_same_length(preds, targets)
    preds = preds.detach().long().cpu()
    targets = targets.detach().long().cpu()
    for name, t in (("preds", preds), ("targets", targets)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    flat = targets * num_classes + preds  # [N]
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64)


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples where student [N, K] and teacher [N, K] logits share the argmax."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be [N, K], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("cannot compute agreement on an empty set (N = 0)")
    s = student_logits.detach().argmax(dim=1)
    t = teacher_logits.detach().argmax(dim=1).to(s.device)
    return float((s == t).double().mean())


def gap_closed(student: float, teacher: float, baseline: float) -> float | None:
    """Share of the teacher-over-baseline gap the student recovers.

    ``(student - baseline) / (teacher - baseline)``: 1.0 matches the teacher, 0.0 is no better
    than the baseline (e.g. the same student trained without distillation). None when the
    teacher equals the baseline, where the ratio is undefined.
    """
    denom = teacher - baseline
    if denom == 0:
        return None
    return (student - baseline) / denom


# --------------------------------------------------------------------------------------
# model profiling


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device``; a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_macs(model: nn.Module, x: Tensor) -> float:
    """Multiply-accumulates of one forward of ``model`` on ``x`` (FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops() / 2


def _median_latency_ms(forward: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time in ms of ``repeats`` calls of ``forward`` after one warm-up call."""
    forward()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def profile_model(
    model: nn.Module,
    in_shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    repeats: int = 5,
) -> dict[str, float]:
    """Size, compute and speed of ``model`` on inputs of shape [B, *in_shape] (C, H, W).

    Returns ``params`` (all parameters, frozen ones too), ``macs_per_image`` (multiply-accumulates
    of one [1, C, H, W] forward, counted by ``FlopCounterMode`` as FLOPs / 2),
    ``latency_ms_per_batch`` (median of ``repeats`` timed forwards of a random
    [batch_size, C, H, W] batch, laid out as the weights are, after one warm-up) and
    ``latency_batch_size``.

    The model must already be on ``device``. Forwards run in eval mode under ``no_grad``, so
    weights and buffers (e.g. BatchNorm running stats) are untouched; every submodule's
    train/eval flag is restored afterwards.
    """
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be >= 1, got {repeats}, {batch_size}")
    device = torch.device(device)
    dtype = _input_dtype(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            layout = input_format(model)
            # inputs from a generator of their own: a profile taken between seeding and
            # training (the teacher's, when its logits are cached) must not move the run's RNG
            gen = torch.Generator().manual_seed(0)
            one = torch.randn(1, *in_shape, generator=gen).to(device, dtype)
            macs = _count_macs(model, one.contiguous(memory_format=layout))
            batch = torch.randn(batch_size, *in_shape, generator=gen).to(
                device, dtype).contiguous(memory_format=layout)
            latency = _median_latency_ms(lambda: model(batch), device, repeats)
    finally:
        for module, training in modes.items():
            module.training = training
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": int(params),
        "macs_per_image": float(macs),
        "latency_ms_per_batch": float(latency),
        "latency_batch_size": int(batch_size),
    }
