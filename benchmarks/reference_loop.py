"""A plain distillation loop, written the way the papers' own code is written.

This is the reference the benchmarks compare `distill` against, on purpose without any of
its tricks: a torchvision-style ``Dataset`` whose items are converted and normalised one by
one on the CPU, a ``DataLoader`` with ``num_workers = min(8, CPU cores)``, pinned memory and
persistent workers, optional augmentation on the CPU (per sample), the teacher's forward on
every step, float32 throughout, one student after another.

It reads the same uint8 splits as `distill` (so both train on identical images, split and
normalisation) and builds the same architectures; only the data path and the loop differ.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.data import DataInfo, Split
from distill.engine import apply_max_norm


class Uint8Images(Dataset):
    """Items ``(float32 [C, H, W] normalised, label)`` made one at a time, like
    ``transforms.Compose([..augmentation.., ToTensor(), Normalize(mean, std)])``."""

    def __init__(self, split: Split, info: DataInfo,
                 augment: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images, self.labels = split.images.cpu(), split.labels.cpu()
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i]
        if self.augment is not None:
            image = self.augment(image)
        return (image.float() / 255.0 - self.mean) / self.std, int(self.labels[i])


def cpu_augment(cfg) -> Callable[[Tensor], Tensor] | None:
    """Per-sample augmentation on the CPU, as a torchvision pipeline does it: the recipe's
    operations (``distill.augment.BatchAugment``, the same maths) applied to one uint8
    image ``[C, H, W]`` at a time in the loader workers. Each worker draws its own stream
    (from its DataLoader seed, like torchvision's transforms), so no two workers repeat
    their shifts and flips."""
    from distill.augment import BatchAugment

    if not cfg.active():
        return None
    aug = BatchAugment(cfg)
    counter = iter(range(1 << 62))

    def one(image: Tensor) -> Tensor:
        worker = torch.utils.data.get_worker_info()
        base = worker.seed if worker is not None else torch.initial_seed()
        seed = (base * 1_000_003 + next(counter)) % (1 << 62)
        return aug(image.unsqueeze(0), seed=seed)[0]

    return one


def loader(split: Split, info: DataInfo, batch_size: int, train: bool, seed: int = 0,
           augment: Callable[[Tensor], Tensor] | None = None) -> DataLoader:
    workers = min(8, os.cpu_count() or 1)
    return DataLoader(Uint8Images(split, info, augment if train else None),
                      batch_size=batch_size, shuffle=train, drop_last=False,
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def kd_loss(student: Tensor, teacher: Tensor | None, y: Tensor, T: float, alpha: float) -> Tensor:
    """alpha * T^2 * KL(p_t || p_s) (batch mean) + (1 - alpha) * CE, as the papers write it."""
    hard = F.cross_entropy(student, y)
    if teacher is None or alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student / T, dim=1), F.softmax(teacher / T, dim=1),
                    reduction="batchmean") * T * T
    return alpha * soft + (1 - alpha) * hard


@dataclass
class ReferenceResult:
    seconds: float  # training wall time (loader start to last step)
    images: int  # training images processed
    test_accuracy: float


def train(model: nn.Module, teacher: nn.Module | None, train_loader: DataLoader,
          test_loader: DataLoader, epochs: int, lr: float, T: float, alpha: float,
          device: torch.device, optimizer: str = "adam", momentum: float = 0.9,
          weight_decay: float = 0.0,
          lr_lambda: Callable[[int], float] | None = None,
          max_norm: float | None = None) -> ReferenceResult:
    """Train ``model`` (a teacher when ``teacher`` is None). ``lr_lambda(step)`` multiplies
    the learning rate per step (default: cosine over the run); benchmarks pass the recipe's
    schedule so both sides train with the same hyperparameters. ``max_norm``: after each
    step, cap the norm of every Linear unit's incoming weights (Hinton et al.'s constraint)."""
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                              weight_decay=weight_decay)
    steps = epochs * len(train_loader)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda is not None
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    images = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t = teacher(x) if teacher is not None else None
            loss = kd_loss(model(x), t, y, T, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if max_norm is not None:  # a hyperparameter both sides share: distill's own
                apply_max_norm(model, max_norm)
            sched.step()
            images += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return ReferenceResult(seconds, images, accuracy(model, test_loader, device))


@torch.no_grad()
def accuracy(model: nn.Module, test_loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in test_loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += y.shape[0]
    model.train()
    return correct / total


def schedule(cfg, steps_per_epoch: int) -> Callable[[int], float]:
    """The recipe role's learning-rate multiplier per step (warmup, cosine/step/none): a
    hyperparameter both sides share, taken from ``distill.optim`` so they cannot drift."""
    from distill.optim import lr_factor

    total = steps_per_epoch * cfg.epochs
    return lambda step: lr_factor(step, total, steps_per_epoch, cfg.optim)
