"""The one training loop, shared by teacher and student, and evaluation.

A teacher's step is ``model(x) -> cross-entropy``; a student's step only adds the frozen
teacher's logits and the distillation loss (``distill/losses.py``). Everything a run needs to
continue lives in one :class:`TrainState`, so checkpoints and resume have one place to look.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.augment import BatchAugment
from distill.data import (DataBundle, DataInfo, Split, eval_batches, indexed_train_batches,
                          num_batches)
from distill.distributed import World, reduce_sums
from distill.errors import DistillError, divergence_advice
from distill.losses import distillation_loss
from distill.models import input_format
from distill.teacher import FrozenTeacher

LOG_EVERY = 25  # steps between progress updates (each one synchronises with the device)


@dataclass
class LoopConfig:
    """What the loop does each step; the same for teacher (``teacher=None``) and student."""

    epochs: int
    batch_size: int
    data_seed: int
    T: float = 1.0
    alpha: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    max_norm: float | None = None  # after each step, cap every unit's incoming weight norm
    world: World | None = None  # set under torchrun (distill/distributed.py)
    augment: BatchAugment | None = None  # training batches only (distill/augment.py)
    amp: bool = False  # bf16 autocast for the forward passes (the loss stays float32)
    channels_last: bool = False  # feed conv nets channels-last batches


@dataclass
class TrainState:
    """All mutable training state in one place (model, optimizer, schedule, counters)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    sums: dict[str, Tensor] | None = None  # running loss sums of the current epoch
    seen: int = 0  # images of the current epoch already trained on
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    best_weights: dict[str, Tensor] | None = field(default=None, repr=False)
    ddp: nn.Module | None = field(default=None, repr=False)  # the DDP wrapper under torchrun

    def state_dict(self) -> dict[str, Any]:
        """Everything above, on the CPU (the random generators are saved beside it)."""
        cpu = lambda d: None if d is None else {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "sums": cpu(self.sums), "seen": self.seen,
                "best_val_accuracy": self.best_val_accuracy, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.epoch, self.step = saved["epoch"], saved["step"]
        self.batch_in_epoch, self.seen = saved["batch_in_epoch"], saved["seen"]
        self.sums = (None if saved["sums"] is None
                     else {k: v.to(device) for k, v in saved["sums"].items()})
        self.best_val_accuracy, self.best_epoch = saved["best_val_accuracy"], saved["best_epoch"]
        self.best_weights = saved["best_weights"]


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else is checked and used as given."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DistillError(f"device '{requested}': not a device name; use auto, cpu, cuda, "
                           f"cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device '{requested}': CUDA is not available here; use --device cpu "
                           f"or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DistillError(f"device '{requested}': MPS is not available here; use --device cpu")
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively: compute capability 8.0 or more
    (Ampere on), or any ROCm GPU. Older GPUs (T4, V100) only emulate bf16, slower than
    float32, which ``torch.cuda.is_bf16_supported()`` counts as support by default."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(amp: bool | None, channels_last: bool | None, device: torch.device,
                      model: nn.Module) -> tuple[bool, bool]:
    """The recipe's ``amp`` / ``channels_last``; None picks the default for ``device``.

    amp: on for CUDA where the GPU computes bf16 natively (:func:`native_bf16`), off elsewhere. channels-last: on for models with
    2-d convolutions on CUDA and on the CPU (where oneDNN's channels-last kernels run the
    CIFAR ResNets 1.1-1.3x faster than NCHW; see benchmarks/README.md), off on other devices.
    """
    cuda = device.type == "cuda"
    if amp is None:
        amp = cuda and native_bf16(device)
    if channels_last is None:
        channels_last = (device.type in ("cuda", "cpu")
                         and any(isinstance(m, nn.Conv2d) for m in model.modules()))
    return bool(amp), bool(channels_last)


@torch.no_grad()
def predict(model: nn.Module, split: Split, info: DataInfo, batch_size: int = 1000) -> Tensor:
    """Logits [N, K] (float32, on the CPU) of ``model`` over ``split``, in eval mode,
    batches laid out as the model's weights are (:func:`input_format`).

    The model's previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    layout = input_format(model)
    outs = [model(x.contiguous(memory_format=layout)).float()
            for x, _ in eval_batches(split, info, batch_size)]
    model.train(was_training)
    return torch.cat(outs).cpu()


def _val_metrics(model: nn.Module, data: DataBundle) -> dict[str, float]:
    if data.val is None:
        return {}
    logits = predict(model, data.val, data.info)
    labels = data.val.labels.cpu()
    return {"val_loss": F.cross_entropy(logits, labels).item(),
            "val_accuracy": (logits.argmax(1) == labels).float().mean().item()}


def _non_finite(parts: dict[str, Tensor], epoch: int, step: int, cfg: LoopConfig
                ) -> DistillError:
    """The error for a loss that is not finite, advising only what this run can change."""
    broken = [k for k in ("soft", "hard", "loss") if not math.isfinite(parts[k].item())]
    return DistillError(f"non-finite loss at epoch {epoch + 1}, step {step}: the "
                        f"{broken[0] if broken else 'gradient'} term is not finite; "
                        f"{divergence_advice(cfg.grad_clip, cfg.amp)}")


def train_step(state: TrainState, x: Tensor, y: Tensor, cfg: LoopConfig,
               teacher: FrozenTeacher | None, idx: Tensor | None = None,
               scale: float = 1.0) -> dict[str, Tensor]:
    """One optimizer step on a batch; returns the detached loss parts (float32 scalars).

    ``idx`` [B]: the batch's training-set indices (for cached teacher logits). ``scale``
    multiplies the loss that is back-propagated (a rank's share under DDP).
    """
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, cfg.amp):
        logits = (state.ddp or state.model)(x)
    if y.numel() == 0:  # an empty shard of a short last batch: no loss, but DDP must sync
        zero = logits.sum() * 0.0
        parts = {"loss": zero, "soft": zero.detach(), "hard": zero.detach()}
    else:
        teacher_logits = None
        if teacher is not None and cfg.alpha > 0:
            with autocast(x.device, cfg.amp):
                teacher_logits = teacher.batch_logits(x, idx)
        parts = distillation_loss(logits, teacher_logits, y, cfg.T, cfg.alpha,
                                  cfg.label_smoothing)
    state.optimizer.zero_grad(set_to_none=True)
    (parts["loss"] * scale if scale != 1.0 else parts["loss"]).backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    if cfg.max_norm is not None:
        apply_max_norm(state.model, cfg.max_norm)
    state.scheduler.step()
    state.step += 1
    return {k: v.detach() for k, v in parts.items()}


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Rescale each row of every Linear weight ``[out, in]`` (one unit's incoming weights) to
    an L2 norm of at most ``max_norm`` (the max-norm constraint of Srivastava et al. 2014,
    used with dropout by Hinton et al.)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.renorm(module.weight, p=2, dim=0, maxnorm=max_norm))


class EpochBar:
    """One epoch's batches on a rich ``Progress`` bar (loss, images/s); does nothing when
    ``progress`` is None (quiet runs, no terminal). Shared by :func:`fit` and batched
    sweeps."""

    def __init__(self, progress, batches: int) -> None:
        self.progress, self.batches = progress, batches
        self.task = (progress.add_task("train", total=batches, loss=float("nan"), speed=0.0)
                     if progress is not None else None)
        self.started, self.images = 0.0, 0

    def start(self, epoch: int, epochs: int, first: int) -> None:
        """Epoch ``epoch`` (0-based) begins at batch ``first`` (> 0 when resumed)."""
        self.started, self.images = time.perf_counter(), 0
        if self.progress is not None:
            self.progress.reset(self.task, total=self.batches, completed=first,
                                description=f"epoch {epoch + 1}/{epochs}")

    def logs(self, i: int) -> bool:
        """Whether batch ``i`` (0-based) is one whose loss is read (every ``LOG_EVERY``)."""
        return (i + 1) % LOG_EVERY == 0 or i + 1 == self.batches

    def advance(self, i: int, images: int, loss: float | None = None) -> None:
        """Batch ``i`` of ``images`` images done; ``loss`` (read on :meth:`logs` batches)
        updates the loss and speed shown."""
        self.images += images
        if self.progress is None:
            return
        if loss is not None:
            speed = self.images / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, loss=loss, speed=speed)
        self.progress.update(self.task, completed=i + 1)


def fit(state: TrainState, data: DataBundle, cfg: LoopConfig, teacher: FrozenTeacher | None,
        on_epoch: Callable[[dict[str, Any]], None], progress=None,
        on_checkpoint: Callable[[str], None] | None = None, every_steps: int | None = None
        ) -> list[dict[str, Any]]:
    """Train from where ``state`` is to ``cfg.epochs``; one record per epoch goes to ``on_epoch``.

    ``on_checkpoint("step")`` is called every ``every_steps`` optimizer steps inside an epoch,
    and ``on_checkpoint("epoch")`` after each epoch's record; a run resumed from such a point
    (``state.batch_in_epoch`` batches into ``state.epoch``) continues exactly as if never
    stopped: the batch order is a function of data_seed and the epoch.

    Record keys: epoch (1-based), step, train_loss (the loss optimised), train_hard (its
    cross-entropy part), train_soft (a student's soft term), lr, val_loss (cross-entropy),
    val_accuracy (when there is a validation split), epoch_seconds, images_per_second.
    """
    history = []
    steps_per_epoch = num_batches(len(data.train), cfg.batch_size)
    bar = EpochBar(progress, steps_per_epoch)
    while state.epoch < cfg.epochs:
        epoch, first = state.epoch, state.batch_in_epoch
        state.model.train()
        start = time.perf_counter()
        if first == 0 or state.sums is None:
            state.sums = {k: torch.zeros((), device=data.train.device)
                          for k in ("loss", "soft", "hard")}
            state.seen = 0
        seen_at_start = state.seen
        bar.start(epoch, cfg.epochs, first)
        world = cfg.world
        batches = indexed_train_batches(data.train, data.info, cfg.batch_size, cfg.data_seed,
                                        epoch, start=first, augment=cfg.augment,
                                        shard=world.shard if world else None)
        for i, (x, y, idx) in enumerate(batches, start=first):
            scale = 1.0
            if world is not None:  # this rank's share of the global batch's mean loss
                global_size = min(cfg.batch_size, len(data.train) - i * cfg.batch_size)
                scale = y.shape[0] * world.size / global_size
            parts = train_step(state, x, y, cfg, teacher, idx, scale)
            for k in state.sums:  # (a DDP checkpoint may replace the dict mid-epoch)
                state.sums[k] += parts[k] * y.shape[0]
            state.seen += y.shape[0]
            state.batch_in_epoch = i + 1
            loss = None
            if bar.logs(i):
                loss = parts["loss"].item()
                if not math.isfinite(loss):
                    raise _non_finite(parts, epoch, state.step, cfg)
            bar.advance(i, y.shape[0], loss)
            if (on_checkpoint is not None and every_steps and state.step % every_steps == 0
                    and i + 1 < steps_per_epoch):
                _reduce(state, world)
                on_checkpoint("step")
        seconds = time.perf_counter() - start
        _reduce(state, world)
        sums = state.sums
        seen = state.seen
        state.epoch += 1
        state.batch_in_epoch = 0
        means = {k: (v / max(seen, 1)).item() for k, v in sums.items()}
        parts = {"train_loss": means["loss"], "train_hard": means["hard"]}
        if teacher is not None:
            parts["train_soft"] = means["soft"]
        record = {"epoch": state.epoch, "step": state.step, **parts,
                  "lr": state.optimizer.param_groups[0]["lr"],
                  **(_val_metrics(state.model, data) if world is None or world.is_main else {}),
                  "epoch_seconds": round(seconds, 4),
                  "images_per_second": round((seen - seen_at_start) / max(seconds, 1e-9), 1)}
        _track_best(state, record)
        state.sums, state.seen = None, 0
        history.append(record)
        on_epoch(record)
        if on_checkpoint is not None:
            on_checkpoint("epoch")
    return history


def _reduce(state: TrainState, world: World | None) -> None:
    """Under DDP: the epoch's loss sums and image count over all ranks, on rank 0."""
    if world is not None and state.sums is not None:
        state.sums, state.seen = reduce_sums(state.sums, state.seen, world)


def _track_best(state: TrainState, record: dict[str, Any]) -> None:
    """Remember the best-on-validation epoch and its weights (test never chooses)."""
    acc = record.get("val_accuracy")
    if acc is None:
        return
    if state.best_val_accuracy is None or acc > state.best_val_accuracy:
        state.best_val_accuracy = acc
        state.best_epoch = record["epoch"]
        state.best_weights = {k: v.detach().to("cpu", copy=True)
                              for k, v in state.model.state_dict().items()}
