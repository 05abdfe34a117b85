"""The distillation loss against a hand-written float64 formula and its known properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.batched import per_student_loss
from distill.losses import distillation_loss, soft_term


def reference_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float
                   ) -> tuple[float, float, float]:
    """alpha*T^2*KL(p_t||p_s) + (1-alpha)*CE, written out element by element in float64."""
    s, t = s.double().tolist(), t.double().tolist()
    soft = hard = 0.0
    for row_s, row_t, label in zip(s, t, y.tolist()):
        zs = [v / T for v in row_s]
        zt = [v / T for v in row_t]
        log_ps = [v - math.log(sum(math.exp(u) for u in zs)) for v in zs]
        log_pt = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
        soft += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
        log_p1 = [v - math.log(sum(math.exp(u) for u in row_s)) for v in row_s]
        hard += -log_p1[label]
    n = len(s)
    soft = T * T * soft / n
    hard = hard / n
    return alpha * soft + (1 - alpha) * hard, soft, hard


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(6, 5, generator=gen) * 3
    t = torch.randn(6, 5, generator=gen) * 3
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    return s, t, y


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_loss_matches_hand_written_formula(logits, T: float, alpha: float) -> None:
    s, t, y = logits
    parts = distillation_loss(s, t, y, T=T, alpha=alpha)
    total, soft, hard = reference_loss(s, t, y, T, alpha)
    assert parts["soft"].item() == pytest.approx(soft, rel=1e-5)
    assert parts["hard"].item() == pytest.approx(hard, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(total, rel=1e-5)


def test_soft_term_is_batch_mean_not_class_mean(logits) -> None:
    s, t, y = logits
    _, soft, _ = reference_loss(s, t, y, 4.0, 1.0)
    # averaging over classes too would divide by K = 5
    assert soft_term(s, t, 4.0).item() != pytest.approx(soft / 5, rel=1e-3)
    assert soft_term(s, t, 4.0).item() == pytest.approx(soft, rel=1e-5)


def test_soft_term_is_zero_when_student_equals_teacher(logits) -> None:
    s, _, y = logits
    parts = distillation_loss(s, s.clone(), y, T=4.0, alpha=0.5)
    assert parts["soft"].item() == pytest.approx(0.0, abs=1e-6)


def test_invariant_to_a_constant_added_to_logits(logits) -> None:
    s, t, y = logits
    base = distillation_loss(s, t, y, T=3.0, alpha=0.7)
    shifted = distillation_loss(s + 11.0, t - 5.0, y, T=3.0, alpha=0.7)
    for key in ("loss", "soft", "hard"):
        assert shifted[key].item() == pytest.approx(base[key].item(), rel=1e-4)


def _soft_grad_norm(s: torch.Tensor, t: torch.Tensor, T: float, t_squared: bool = True) -> float:
    s = s.clone().requires_grad_(True)
    value = soft_term(s, t, T)
    if not t_squared:
        value = value / (T * T)
    value.backward()
    return s.grad.norm().item()


@pytest.mark.parametrize("T", [10.0, 20.0])
def test_t_squared_keeps_gradient_size_when_t_doubles(logits, T: float) -> None:
    s, t, _ = logits
    ratio = _soft_grad_norm(s, t, 2 * T) / _soft_grad_norm(s, t, T)
    assert abs(ratio - 1.0) < 0.05
    # the control: without T^2 the gradient shrinks about 4x, far outside the tolerance
    ratio_without = _soft_grad_norm(s, t, 2 * T, False) / _soft_grad_norm(s, t, T, False)
    assert ratio_without < 0.3


def test_alpha_zero_is_plain_cross_entropy(logits) -> None:
    s, t, y = logits
    parts = distillation_loss(s, t, y, T=4.0, alpha=0.0)
    assert torch.equal(parts["loss"], F.cross_entropy(s, y))


def test_alpha_one_ignores_the_labels(logits) -> None:
    s, t, y = logits
    a = distillation_loss(s, t, y, T=4.0, alpha=1.0)["loss"]
    b = distillation_loss(s, t, (y + 1) % 5, T=4.0, alpha=1.0)["loss"]
    assert a.item() == b.item()


def test_teacher_free_loss_is_cross_entropy_with_label_smoothing(logits) -> None:
    s, _, y = logits
    parts = distillation_loss(s, None, y, label_smoothing=0.1)
    assert parts["loss"].item() == pytest.approx(
        F.cross_entropy(s, y, label_smoothing=0.1).item(), rel=1e-6)
    assert parts["soft"].item() == 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_label_smoothing_changes_the_hard_term_only(logits, alpha: float) -> None:
    """With a teacher: hard = (1 - e) * -log p_y + e * mean_k(-log p_k), batch mean, in
    float64 by hand; the soft term is the one without smoothing."""
    s, t, y = logits
    eps = 0.2
    log_p = s.double().log_softmax(1)
    hard = ((1 - eps) * -log_p.gather(1, y[:, None])[:, 0] + eps * -log_p.mean(1)).mean()
    _, soft, _ = reference_loss(s, t, y, 4.0, alpha)
    parts = distillation_loss(s, t, y, T=4.0, alpha=alpha, label_smoothing=eps)
    assert parts["hard"].item() == pytest.approx(hard.item(), rel=1e-6)
    assert parts["soft"].item() == pytest.approx(soft, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(alpha * soft + (1 - alpha) * hard.item(),
                                                 rel=1e-5)


def test_computed_in_float32_under_low_precision(logits) -> None:
    s, t, y = logits
    s16, t16 = s.bfloat16(), t.bfloat16()
    parts = distillation_loss(s16, t16, y, T=4.0, alpha=0.9)
    assert all(v.dtype == torch.float32 for v in parts.values())
    expected = distillation_loss(s16.float(), t16.float(), y, T=4.0, alpha=0.9)["loss"]
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_batched_loss_gives_each_student_its_own_T_and_alpha() -> None:
    """``batched.per_student_loss`` (sweeps) equals ``distillation_loss`` student by student."""
    gen = torch.Generator().manual_seed(0)
    S, B, K = 4, 6, 5
    s = torch.randn(S, B, K, generator=gen) * 3
    t = torch.randn(B, K, generator=gen) * 3
    y = torch.randint(0, K, (B,), generator=gen)
    T, alpha = torch.tensor([1.0, 2.0, 4.0, 20.0]), torch.tensor([0.0, 0.3, 1.0, 0.9])
    parts = per_student_loss(s, t, y, T, alpha, label_smoothing=0.1)
    no_teacher = per_student_loss(s, None, y, T, alpha, label_smoothing=0.1)
    for i in range(S):
        one = distillation_loss(s[i], t, y, float(T[i]), float(alpha[i]), label_smoothing=0.1)
        alone = distillation_loss(s[i], None, y, label_smoothing=0.1)
        for k in ("loss", "soft", "hard"):
            torch.testing.assert_close(parts[k][i], one[k], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(no_teacher[k][i], alone[k], rtol=1e-5, atol=1e-6)
