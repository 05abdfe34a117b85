"""Batched sweeps: many students trained together, one teacher forward per batch.

The students of a chunk share the architecture and differ in T, alpha and seed. Their
parameters and buffers are stacked (``torch.func.stack_module_state``: every tensor gets a
leading student dimension S) and run with ``vmap(functional_call)``, so each step is one
forward and one backward for all of them. On a CPU, students over ``CPU_BATCHED_MAX_PARAMS``
run looped instead: one after another on their slices of the same stacked tensors (conv
weights laid out channels-last, as a student alone on a CPU), sharing the teacher forward
and the optimizer step; vmap's gain is launch overhead, which a CPU does not have. Students
with bf16 autocast on run looped wherever autocast does not reach vmapped layers (a CPU).

- inputs ``x [B, C, H, W]`` are shared; student logits are ``[S, B, K]``; the teacher's
  logits ``[B, K]`` are computed once per batch (they do not depend on T or alpha);
- the loss is the sum over students of each student's own loss, so each slice of a stacked
  gradient is exactly that student's gradient;
- the optimizer runs over the stacked tensors. Adam, SGD, weight decay and Lookahead are
  elementwise, so each slice is updated as that student alone would be; the weight-decay
  groups are the single model's (taken by parameter name), the schedule is the same;
- BatchNorm running statistics are stacked with the other buffers and update per student.

A cell's student starts from the same initialisation as ``distill student --seed s`` (each is
built after seeding with its own seed) and sees the same batches, so it ends with the same
weights up to float tolerance (batched matrix products round differently).

Not batched (the sweep falls back to sequential mode and says why): dropout (vmap would draw
other masks than the student alone), gradient clipping (a per-student global norm), max-norm,
and optimizers other than our elementwise ones (LAMB, LARS, ... take whole-tensor norms).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from distill.augment import build_augment
from distill.checkpoint import (FORMAT_VERSION, LAST, carried_wall, load_checkpoint,
                               save_atomic)
from distill.data import DataBundle, eval_batches, indexed_train_batches, load_data, num_batches
from distill.engine import EpochBar, autocast, resolve_device, resolve_precision
from distill.models import build_model, count_parameters
from distill.optim import OUR_NAMES, build_optimizer, build_scheduler, weight_decay_groups
from distill.recipe import Recipe
from distill.sweep import Cell, claimed, finished, saved_chunks
from distill.teacher import FrozenTeacher, load_teacher, warn_if_other_split


def batching_problem(recipe: Recipe) -> str | None:
    """Why this recipe's students cannot be trained batched (None when they can)."""
    cfg = recipe.student
    if cfg.optim.grad_clip is not None:
        return "gradient clipping needs a per-student norm, which batched mode does not do"
    if cfg.optim.max_norm is not None:
        return "the max-norm weight constraint is not applied in batched mode"
    if (cfg.model.dropout or 0) > 0 or (cfg.model.input_dropout or 0) > 0:
        return "the student uses dropout, whose masks would differ from a student trained alone"
    if cfg.optim.name.lower().removeprefix("lookahead_") not in OUR_NAMES:
        # e.g. LAMB's trust ratio or LARS take norms of whole tensors: over stacked students
        return (f"the optimizer '{cfg.optim.name}' is not one known to update each weight on "
                f"its own ({', '.join(OUR_NAMES)}, with or without lookahead_); over stacked "
                f"students it could mix them")
    return None


def model_problem(model: nn.Module) -> str | None:
    """Module-level reasons (e.g. a timm model with dropout or drop-path inside)."""
    for name, module in model.named_modules():
        p = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else None
        if p:
            return f"the student has dropout ({name or 'model'}, p={p})"
        if type(module).__name__ == "DropPath" and getattr(module, "drop_prob", 0):
            return f"the student has drop-path ({name})"
    return None


class StackedStudents:
    """S students of one architecture as stacked tensors (leading dimension S).

    ``looped``: each step runs the students one after another on their slices of the
    stacked tensors (on a CPU, where convolutions are bound by arithmetic and vmap's
    batched convolution costs more than S plain ones; the teacher forward is still shared),
    else all at once with ``vmap`` (on a GPU, whose kernels small students leave idle).
    ``channels_last`` (looped only): each student's conv weights are laid out channels-last
    inside the stacked tensors, as a student trained alone on a CPU has them.
    """

    def __init__(self, models: list[nn.Module], looped: bool = False,
                 channels_last: bool = False) -> None:
        self.template = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.size = len(models)
        self.looped = looped
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            for k, v in self.params.items():
                if v.dim() == 5:  # [S, O, I, kh, kw] stored in the order S, O, kh, kw, I
                    S, O, I, kh, kw = v.shape
                    cl = torch.empty_strided(v.shape, (O * kh * kw * I, kh * kw * I, 1, kw * I, I),
                                             dtype=v.dtype, device=v.device)
                    self.params[k] = cl.copy_(v.detach()).requires_grad_(v.requires_grad)

    def one(self, i: int, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Student ``i`` alone: ``x [B, C, H, W]`` -> logits ``[B, K]`` (``params``: its
        slices of the stacked parameters, when the caller holds them)."""
        params = params if params is not None else {k: v[i] for k, v in self.params.items()}
        return functional_call(self.template, (params,
                                               {k: v[i] for k, v in self.buffers.items()}),
                               (x.contiguous(memory_format=self.layout),))

    def __call__(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> logits ``[S, B, K]``."""
        if self.looped:
            return torch.stack([self.one(i, x) for i in range(self.size)])

        def one(params, buffers, inputs):
            return functional_call(self.template, (params, buffers), (inputs,))

        return vmap(one, in_dims=(0, 0, None), randomness="error")(self.params, self.buffers, x)

    def backward(self, x: Tensor, loss_parts, amp: bool) -> dict[str, Tensor]:
        """Forward ``x [B, C, H, W]`` through every student (under bf16 autocast if ``amp``)
        and back-propagate the sum of their losses. ``loss_parts(logits [s, B, K], students)``
        gives the loss parts ``[s]`` of the students ``students`` (a slice of the S); returns
        the parts of all S, detached. Looped, each student's graph is freed before the next
        is built."""
        device = x.device
        if not self.looped:
            with autocast(device, amp):
                logits = self(x)
            parts = loss_parts(logits, slice(None))
            parts["loss"].sum().backward()
            return {k: v.detach() for k, v in parts.items()}
        names = list(self.params)
        for v in self.params.values():  # every slice is written below
            if v.grad is None:
                v.grad = torch.empty_like(v)
        per_student = []
        for i in range(self.size):
            mine = {k: self.params[k][i] for k in names}  # views into the stacked tensors
            with autocast(device, amp):
                logits = self.one(i, x, mine)
            parts = loss_parts(logits.unsqueeze(0), slice(i, i + 1))
            # the gradient of each view alone: a backward into the stacked tensors would
            # build a zero-filled gradient of all S students for every student
            grads = torch.autograd.grad(parts["loss"].sum(), [mine[k] for k in names],
                                        allow_unused=True)
            for k, g in zip(names, grads):
                target = self.params[k].grad[i]
                target.copy_(g) if g is not None else target.zero_()
            per_student.append({k: v.detach() for k, v in parts.items()})
        return {k: torch.cat([p[k] for p in per_student]) for k in per_student[0]}

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Student ``i``'s own state dict (CPU copies, contiguous)."""
        merged = {**self.params, **self.buffers}
        return {k: v[i].detach().to("cpu", copy=True).contiguous() for k, v in merged.items()}


def per_student_loss(logits: Tensor, teacher_logits: Tensor | None, y: Tensor, T: Tensor,
                     alpha: Tensor, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """``losses.distillation_loss`` for S students at once: each part is ``[S]``.

    ``logits [S, B, K]``, ``teacher_logits [B, K]``, ``y [B]``, ``T`` and ``alpha`` ``[S]``.
    """
    S, B, K = logits.shape
    logits = logits.float()
    hard = F.cross_entropy(logits.reshape(S * B, K), y.repeat(S), reduction="none",
                           label_smoothing=label_smoothing).view(S, B).mean(1)
    if teacher_logits is None:
        return {"loss": hard, "soft": torch.zeros_like(hard), "hard": hard}
    t = T.view(S, 1, 1)
    log_s = F.log_softmax(logits / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float().unsqueeze(0) / t, dim=-1)
    soft = (log_t.exp() * (log_t - log_s)).sum(-1).mean(-1) * T * T
    return {"loss": alpha * soft + (1 - alpha) * hard, "soft": soft, "hard": hard}


def stacked_optimizer(students: StackedStudents, model: nn.Module, recipe: Recipe):
    """The student optimizer and schedule over the stacked parameters, grouped as for one."""
    cfg = recipe.student.optim
    groups = [{"params": [students.params[n] for n in g["names"]],
               "weight_decay": g["weight_decay"]}
              for g in weight_decay_groups(model, cfg.weight_decay)]
    return build_optimizer(groups, cfg)


@torch.no_grad()
def predict_stacked(students: StackedStudents, data: DataBundle, split) -> Tensor:
    """Logits ``[S, N, K]`` (CPU, float32) of every student over a split, in eval mode."""
    students.train(False)
    out = torch.cat([students(x).float() for x, _ in eval_batches(split, data.info)], dim=1)
    students.train(True)
    return out.cpu()


@dataclass
class ChunkPosition:
    """Where a chunk's training stands: ``epoch`` epochs done and ``batch`` batches into the
    next one, whose running sums so far (``sums``: loss, soft, hard, each [S], summed over
    images) cover ``seen`` images. ``batch`` 0 is an epoch boundary."""

    epoch: int = 0
    batch: int = 0
    sums: dict[str, Tensor] | None = None
    seen: int = 0

    @classmethod
    def saved(cls, checkpoint: dict[str, Any]) -> ChunkPosition:
        """Where a chunk checkpoint stopped (older ones hold epoch ends only)."""
        return cls(checkpoint["epoch"], checkpoint.get("batch_in_epoch", 0),
                   checkpoint.get("sums") or None, checkpoint.get("seen", 0))

    def __str__(self) -> str:
        """``after epoch 3`` or ``in epoch 4 after batch 120``."""
        return (f"in epoch {self.epoch + 1} after batch {self.batch}" if self.batch
                else f"after epoch {self.epoch}")


def fit_stacked(students: StackedStudents, optimizer, scheduler, data: DataBundle,
                teacher, recipes: list[Recipe], on_epoch, start: ChunkPosition | None = None,
                on_epoch_end=None, on_checkpoint=None, every_steps: int | None = None,
                progress=None) -> None:
    """Train all students from ``start`` (default: the beginning) to the recipe's epochs.

    Per epoch: ``on_epoch(i, record)`` for each student, ``on_epoch_end(epochs_done)``, then
    ``on_checkpoint(position)``; ``on_checkpoint`` is also called every ``every_steps``
    optimizer steps inside an epoch. A chunk resumed from any such position continues
    exactly as if never stopped: the batches and their augmentation are a function of
    data_seed, the epoch and the batch number. ``progress`` (a rich Progress) shows the
    epoch's batches, the students' mean loss and student-images per second.
    """
    cfg = recipes[0].student
    device = data.train.device
    T = torch.tensor([r.student.T for r in recipes], device=device)
    alpha = torch.tensor([r.student.alpha for r in recipes], device=device)
    use_teacher = teacher is not None and bool((alpha > 0).any())
    augment = build_augment(cfg.augment)
    amp = resolve_precision(recipes[0].amp, False, device, students.template)[0]
    pos = start or ChunkPosition()
    per_epoch = num_batches(len(data.train), cfg.batch_size)
    step = pos.epoch * per_epoch + pos.batch
    bar = EpochBar(progress, per_epoch)
    for epoch in range(pos.epoch, cfg.epochs):
        students.train(True)
        start_time = time.perf_counter()
        first = pos.batch if epoch == pos.epoch else 0
        sums = ({k: v.to(device) for k, v in pos.sums.items()} if first and pos.sums else
                {k: torch.zeros(students.size, device=device) for k in ("loss", "soft", "hard")})
        seen = pos.seen if first else 0
        seen_before = seen
        bar.start(epoch, cfg.epochs, first)
        for i, (x, y, idx) in enumerate(
                indexed_train_batches(data.train, data.info, cfg.batch_size,
                                      recipes[0].data.data_seed, epoch, start=first,
                                      augment=augment), start=first):
            x = x.contiguous(memory_format=students.layout)  # as teacher and students are
            with autocast(device, amp):
                t_logits = teacher.batch_logits(x, idx) if use_teacher else None
            optimizer.zero_grad(set_to_none=True)
            parts = students.backward(x, lambda logits, s: per_student_loss(
                logits, t_logits, y, T[s], alpha[s], cfg.label_smoothing), amp)
            optimizer.step()
            scheduler.step()
            step += 1
            for k in sums:
                sums[k] += parts[k].detach() * y.shape[0]
            seen += y.shape[0]
            shown = progress is not None and bar.logs(i)  # (reading the loss syncs)
            bar.advance(i, y.shape[0] * students.size,
                        parts["loss"].mean().item() if shown else None)
            if (on_checkpoint is not None and every_steps and step % every_steps == 0
                    and i + 1 < per_epoch):
                check_finite(sums, epoch, recipes, amp)  # a checkpoint never holds a diverged chunk
                on_checkpoint(ChunkPosition(epoch, i + 1, sums, seen))
        seconds = time.perf_counter() - start_time
        check_finite(sums, epoch, recipes, amp)
        val = _val(students, data)
        for i in range(students.size):
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": (sums["loss"][i] / seen).item(),
                      "train_hard": (sums["hard"][i] / seen).item()}
            if teacher is not None:
                record["train_soft"] = (sums["soft"][i] / seen).item()
            record["lr"] = optimizer.param_groups[0]["lr"]
            if val is not None:
                record["val_loss"], record["val_accuracy"] = val[0][i], val[1][i]
            record["epoch_seconds"] = round(seconds, 4)  # this process's part of the epoch
            record["images_per_second"] = round(
                (seen - seen_before) * students.size / max(seconds, 1e-9), 1)
            on_epoch(i, record)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
        if on_checkpoint is not None:
            on_checkpoint(ChunkPosition(epoch + 1))


def check_finite(sums: dict[str, Tensor], epoch: int, recipes: list[Recipe],
                 amp: bool = False) -> None:
    """Stop a chunk whose students' running loss (``sums["loss"]`` [S]) is not finite: the
    students with a non-finite loss are named by seed, T and alpha, with the advice a single
    run gets (clipping, which sends a sweep to sequential mode, included)."""
    finite = torch.isfinite(sums["loss"])
    if bool(finite.all()):
        return
    from distill.errors import DistillError, divergence_advice

    bad = [f"seed {r.seed}, T {r.student.T:g}, alpha {r.student.alpha:g}"
           for r, ok in zip(recipes, finite.tolist()) if not ok]
    advice = divergence_advice(recipes[0].student.optim.grad_clip, amp)
    raise DistillError(f"non-finite loss in epoch {epoch + 1} for the student(s) with "
                       f"{'; '.join(bad)}; {advice}")


def _val(students: StackedStudents, data: DataBundle) -> tuple[list[float], list[float]] | None:
    if data.val is None:
        return None
    logits = predict_stacked(students, data, data.val)
    labels = data.val.labels.cpu()
    S, N, K = logits.shape
    loss = F.cross_entropy(logits.reshape(S * N, K), labels.repeat(S), reduction="none")
    acc = (logits.argmax(-1) == labels).float().mean(1)
    return loss.view(S, N).mean(1).tolist(), acc.tolist()


def chunk_size_for(model: nn.Module, requested: int | None, cells: int) -> int:
    """Students per chunk: as requested, else as many as fit a memory budget."""
    if requested:
        return requested
    params = count_parameters(model)
    budget = 2 * 1024**3 // 4  # floats: ~2 GiB for weights, grads and optimizer state
    return max(1, min(cells, budget // max(1, params * 6)))


# On a CPU, students this large are arithmetic-bound: stacked with vmap they trained no
# faster than one by one (an MLP 784-800-800-10, 1.28M parameters, batch 128: 12-15 ms per
# student-step alone, 12-18 ms stacked for S = 1..25, on the 2-core CPU), and vmap's batched
# convolution was slower than plain ones (ResNet-20: 0.66x vs 0.73x of the reference loop).
# They are looped instead, and then the one gain is the teacher forward, run once per batch
# for all (ResNet-20 students of a ResNet-56, augmented: 1.59x sequential). Where the
# teacher's logits come from the cache there is nothing to share, and the stacked optimizer
# state streams from memory where one student's stays in the caches: ``auto`` trains them
# one by one (Hinton MNIST students: sequential was faster). Smaller students, whose steps
# are dominated by per-call overhead, gain from vmap (digits, 2.4K parameters: 1.39x).
# See benchmarks/README.md.
CPU_BATCHED_MAX_PARAMS = 100_000


def loops_students(model: nn.Module, device: torch.device, amp: bool = False) -> bool:
    """Whether a chunk of such students runs looped (one after another) rather than
    vmapped on ``device``: on a CPU, for students over ``CPU_BATCHED_MAX_PARAMS``; and
    wherever bf16 autocast (``amp``) would not reach the vmapped students
    (:func:`vmap_autocasts`), so that they compute as students trained alone do."""
    if amp and not vmap_autocasts(device.type):
        return True
    params = count_parameters(model)
    return device.type == "cpu" and params > CPU_BATCHED_MAX_PARAMS


@functools.cache
def vmap_autocasts(device_type: str) -> bool:
    """Whether bf16 autocast reaches the linear and conv layers that vmap runs on this kind
    of device. On torch's CPU it does not (the vmapped layers compute in float32 under
    autocast, https://github.com/pytorch/functorch/issues/305); looped students call each
    layer directly, where autocast acts as it does for a student trained alone."""
    probes = ((nn.Linear(2, 2), (1, 2)), (nn.Conv2d(1, 1, 1), (1, 1, 2, 2)))
    for layer, shape in probes:
        layer = layer.to(device_type)
        params = {k: v.detach().unsqueeze(0) for k, v in layer.named_parameters()}
        x = torch.zeros(shape, device=device_type)
        with autocast(torch.device(device_type), True):
            out = vmap(lambda p, layer=layer, x=x: functional_call(layer, p, (x,)))(params)
        if out.dtype != torch.bfloat16:
            return False
    return True


def nothing_shared(model: nn.Module, looped: bool, teacher: FrozenTeacher | None,
                   cells: list) -> str | None:
    """Why ``auto`` trains these students one by one (None: batched): ``looped`` (see
    :func:`loops_students`), they would share no teacher forward (no teacher, only alpha = 0,
    or cached logits)."""
    if not looped:
        return None
    if teacher is not None and teacher.train_logits is None and any(c.alpha > 0 for c in cells):
        return None
    params = count_parameters(model)
    why = ("its logits come from the cache" if teacher is not None and teacher.train_logits
           is not None else "no cell runs a teacher")
    return (f"on a CPU students of {params:,} parameters gain from batching only by sharing "
            f"the teacher's forward, and {why} (--mode batched forces it)")


def _sequential(cells: list, why: str, console) -> list:
    console.print(f"sweep: sequential mode, because {why}", markup=False, soft_wrap=True)
    return cells


def train_batched(base: Recipe, common: dict[str, Any], cells: list, sweep_dir: Path,
                  chunk_size: int | None, console, auto: bool = False) -> list:
    """Train ``cells`` in batched chunks, each claimed first (see :func:`distill.sweep.claimed`);
    returns the cells that must run sequentially (all of them when the students cannot be
    batched, see :func:`model_problem`, or when ``auto`` finds batching would not pay, see
    :func:`nothing_shared`)."""
    if not cells:
        return []
    device = resolve_device(base.device)
    data = load_data(base.data)
    probe = build_model(base.student.model.name, data.info.in_shape, data.info.num_classes,
                        **base.student.model.build_options())
    problem = model_problem(probe)
    if problem:
        return _sequential(cells, problem, console)
    data = data.to(device)
    looped = loops_students(probe, device,
                            amp=resolve_precision(base.amp, False, device, probe)[0])
    teacher, source = None, None
    if common.get("student.teacher"):
        teacher, source = load_teacher(common["student.teacher"], base.student.teacher_model,
                                  data.info, Path(base.output_dir))
        warn_if_other_split(source.location, data.description)
        looped_cl = looped and resolve_precision(
            base.amp, base.channels_last, device, teacher)[1]
        teacher.to(device, memory_format=torch.channels_last if looped_cl
                   else torch.preserve_format)
    teacher_eval = None
    if teacher is not None:
        from distill.api import prepare_teacher

        teacher_eval = prepare_teacher(teacher, source, data, base, console)
    interrupted_chunks = saved_chunks(sweep_dir)  # they continue batched, first
    problem = (nothing_shared(probe, looped, teacher, cells)
               if auto and not interrupted_chunks else None)
    if problem:
        return _sequential(cells, problem, console)
    size = chunk_size_for(probe, chunk_size, len(cells))
    by_name = {c.name: c for c in cells}
    chunks = []  # (cells, whether the chunk was interrupted and continues)
    for path, names in interrupted_chunks.items():
        # whole: the cells it finished before it was stopped stay as they are
        left = [n for n in names if not finished(sweep_dir, n)]
        if not left:  # stopped after its last cell, before removing its checkpoint
            path.unlink(missing_ok=True)
        elif all(n in by_name for n in left):
            chunks.append(([by_name.pop(n) if n in by_name else Cell.from_name(n)
                            for n in names], True))
    rest = list(by_name.values())
    chunks += [(rest[i:i + size], False) for i in range(0, len(rest), size)]
    alone = []  # cells that another process started alone meanwhile: they resume alone
    for number, (chunk, interrupted) in enumerate(chunks, 1):
        with claimed(sweep_dir, chunk, console, chunk=interrupted) as mine:
            if interrupted and not chunk_path(sweep_dir, [c.name for c in chunk]).is_file():
                # another process finished it between the listing and the claim
                interrupted = False
                mine.give_back([c for c in mine if finished(sweep_dir, c.name)])
            if not interrupted:
                started = [c for c in mine if (sweep_dir / c.name / LAST).is_file()]
                mine.give_back(started)  # free for another process while this chunk trains
                alone += started
            if mine:
                _train_chunk(base, common, mine, number, sweep_dir, data, teacher, source,
                             console, looped, teacher_eval)
    return alone


def epoch_line(records: dict[int, dict[str, Any]], epoch: int, recipes: list[Recipe]) -> str:
    """One progress line for a chunk's finished ``epoch``: its time, the range of the
    students' training loss and validation accuracy and the student(s) that lead on
    validation (``records``: student index -> its record; ``recipes``: one per student)."""
    recs = list(records.values())
    loss = [r["train_loss"] for r in recs]
    line = (f"epoch {epoch}/{recipes[0].student.epochs} in {recs[0]['epoch_seconds']:.0f} s, "
            f"train loss {min(loss):.4f}-{max(loss):.4f}")
    acc = {i: r["val_accuracy"] for i, r in records.items() if r.get("val_accuracy") is not None}
    if acc:
        top = max(acc.values())
        leads = [Cell(r.student.T, r.student.alpha, r.seed).name
                 for i, r in enumerate(recipes) if acc.get(i) == top]  # all of a tie
        line += (f", val accuracy {100 * min(acc.values()):.2f}-{100 * top:.2f}% "
                 f"(highest: {', '.join(leads)})")
    return line


def chunk_path(sweep_dir: Path, names: list[str]) -> Path:
    """Where a chunk's checkpoint lives (named by its cells, so a re-run finds it)."""
    return sweep_dir / f"chunk-{hashlib.sha1(','.join(names).encode()).hexdigest()[:10]}.pt"


def _train_chunk(base: Recipe, common: dict[str, Any], chunk: list, number: int,
                 sweep_dir: Path, data: DataBundle, teacher, source, console, looped: bool,
                 teacher_eval=None) -> None:
    """Train one chunk batched, checkpointing it at each epoch end (and every
    ``checkpoint.every_steps`` steps); resume it where it was interrupted. The chunk
    checkpoint is removed once every cell is finished."""
    from distill.api import (CellRun, as_recipe, evaluate_teacher, finish_cell, progress_bar,
                             seed_everything, start_cell)
    from distill.tracking import MetricsLog

    device = data.train.device
    names = [c.name for c in chunk]
    path = chunk_path(sweep_dir, names)
    saved = load_checkpoint(path) if path.is_file() else None
    resumed_at = ChunkPosition.saved(saved) if saved else None
    recipes = [as_recipe(base, {**common, **c.overrides()}) for c in chunk]
    start = time.perf_counter()
    wall_before = carried_wall(saved)
    models = []
    for r in recipes:
        seed_everything(r.seed)
        models.append(build_model(r.student.model.name, data.info.in_shape,
                                  data.info.num_classes,
                                  **r.student.model.build_options()).to(device))
    console.print(f"  chunk {number}: {len(chunk)} students batched"
                  + (" (looped, one teacher forward per batch)" if looped else "")
                  + f" ({', '.join(names)})"
                  + (f", resuming {resumed_at}" if saved else ""),
                  markup=False, soft_wrap=True)
    if saved is None:
        runs = [start_cell(r, sweep_dir, n, str(device), teacher, source)
                for r, n in zip(recipes, names)]
    else:
        runs = [CellRun(sweep_dir / n, MetricsLog(sweep_dir / n / "metrics.jsonl"), teacher,
                        source) for n in names]
        for name, run in zip(names, runs):
            if not finished(sweep_dir, name):  # a finished cell's files stay as they are
                run.log.truncate_after(saved["epoch"])
    students = StackedStudents(models, looped=looped, channels_last=looped and resolve_precision(
        recipes[0].amp, recipes[0].channels_last, device, models[0])[1])
    optimizer = stacked_optimizer(students, models[0], recipes[0])
    scheduler = build_scheduler(optimizer, recipes[0].student.optim,
                                num_batches(len(data.train), recipes[0].student.batch_size),
                                recipes[0].student.epochs)
    best: list[dict[str, Any]] = [{} for _ in chunk]
    if saved is not None:
        with torch.no_grad():
            for k, v in saved["params"].items():
                students.params[k].copy_(v)
            for k, v in saved["buffers"].items():
                students.buffers[k].copy_(v)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best = saved["best"]

    latest: dict[int, dict[str, Any]] = {}  # this epoch's record of each student

    def on_epoch(i: int, record: dict[str, Any]) -> None:
        runs[i].log.append(record)
        latest[i] = record
        acc = record.get("val_accuracy")
        if acc is not None and (not best[i] or acc > best[i]["val_accuracy"]):
            best[i] = {"epoch": record["epoch"], "val_accuracy": acc,
                       "weights": students.state_dict(i)}

    def on_epoch_end(epochs_done: int) -> None:
        console.print(f"  chunk {number}: {epoch_line(latest, epochs_done, recipes)}",
                      markup=False, soft_wrap=True)

    def on_checkpoint(at: ChunkPosition) -> None:
        save_atomic({"format": FORMAT_VERSION, "cells": names, "epoch": at.epoch,
                     "batch_in_epoch": at.batch, "seen": at.seen,
                     "sums": {k: v.detach().cpu() for k, v in (at.sums or {}).items()},
                     "params": {k: v.detach().cpu() for k, v in students.params.items()},
                     "buffers": {k: v.detach().cpu() for k, v in students.buffers.items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "best": best, "wall_seconds": wall_before + time.perf_counter() - start},
                    path)

    with progress_bar(console, console.quiet) as progress:
        fit_stacked(students, optimizer, scheduler, data, teacher, recipes, on_epoch,
                    start=resumed_at, on_epoch_end=on_epoch_end,
                    on_checkpoint=on_checkpoint, every_steps=recipes[0].checkpoint.every_steps,
                    progress=progress if progress.live.is_started else None)
    wall = wall_before + time.perf_counter() - start  # a resumed chunk counts its earlier time
    if teacher is not None and teacher_eval is None:
        teacher_eval = evaluate_teacher(teacher, data)
    for i, (r, run) in enumerate(zip(recipes, runs)):
        if finished(sweep_dir, names[i]):  # finished before an interruption: kept as it is
            continue
        models[i].load_state_dict(students.state_dict(i))
        models[i].to(memory_format=students.layout)  # evaluated as the student alone would be
        finish_cell(r, run, models[i], data, best[i], wall / len(chunk), teacher_eval)
    path.unlink(missing_ok=True)
    console.print(f"  chunk done in {wall:.1f} s", markup=False, soft_wrap=True)
