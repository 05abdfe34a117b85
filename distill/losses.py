"""The distillation loss, as pure functions that return their parts.

Convention (Hinton et al. 2015, and this project's everywhere)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(s, y)

- ``s`` and ``t`` are raw (pre-softmax) logits ``[B, K]``; ``y`` are class indices ``[B]``.
- The KL is summed over classes and averaged over the batch (``batchmean``), never averaged
  over classes as well: that would divide the soft term by K.
- ``T^2`` keeps the soft term's gradients the same size as T changes (its gradient scales as
  1/T^2 otherwise).
- ``alpha`` weighs the soft term: ``alpha = 0`` is plain cross-entropy, ``alpha = 1`` learns
  from the teacher alone.
- Everything is computed in float32, even when the logits come from bf16/fp16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_term(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, batch mean. Scalar."""
    s = student_logits.float() / T
    t = teacher_logits.float() / T
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean",
                  log_target=True)
    return kl * (T * T)


def hard_term(student_logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the student's logits (at T = 1) against the labels, batch mean."""
    return F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
                      T: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0
                      ) -> dict[str, Tensor]:
    """The total loss and both parts: ``{"loss", "soft", "hard"}`` (float32 scalars).

    ``teacher_logits=None`` (a teacher's own training) gives plain cross-entropy with
    ``soft = 0``. A term whose weight is 0 is still reported but adds nothing to the graph's
    gradient.
    """
    hard = hard_term(student_logits, targets, label_smoothing)
    if teacher_logits is None:
        return {"loss": hard, "soft": torch.zeros_like(hard), "hard": hard}
    soft = soft_term(student_logits, teacher_logits, T)
    if alpha == 0.0:
        loss = hard
    elif alpha == 1.0:
        loss = soft
    else:
        loss = alpha * soft + (1.0 - alpha) * hard
    return {"loss": loss, "soft": soft, "hard": hard}
