"""The Python API: what the CLI calls, and what notebooks can call too.

    import distill
    t = distill.teach("digits", {"teacher.epochs": 5}, wandb="disabled")
    s = distill.student("digits", {"student.T": 4, "student.teacher": str(t.run_dir)})
    print(s.summary["test"]["accuracy"])
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_model, save_file

from distill.augment import build_augment
from distill.checkpoint import (RESUME_SKIP_ENV, Checkpointer, FileLock, carried_wall,
                                check_resumable, check_same_data, check_same_teacher,
                                clean_stale, lock_run, resume_folder, set_deterministic,
                                set_rng_state)
from distill.data import DataBundle, load_data, num_batches
from distill.distributed import (World, check_batch, gather_rank_rng, main_first, start_rank_rng,
                                 teardown, wrap)
from distill.distributed import setup as dist_setup
from distill.engine import (LoopConfig, TrainState, fit, predict, resolve_device,
                            resolve_precision)
from distill.errors import DistillError
from distill.metrics import agreement, classification_metrics, confusion_matrix, gap_closed, profile_model
from distill.models import build_model
from distill.optim import build_optimizer, build_scheduler
from distill.recipe import (Recipe, RoleConfig, apply_overrides, dump_recipe, load_recipe,
                            validate_recipe)
from distill.report import comparison_table, plot_confusion_matrix, plot_learning_curves
from distill.teacher import (SUMMARY, WEIGHTS, FrozenTeacher, file_sha256, load_teacher,
                             read_summary, teacher_location, warn_if_other_split)
from distill.teacher_cache import MAX_BYTES as CACHE_MAX_BYTES
from distill.teacher_cache import teacher_logits
from distill.tracking import (METRICS, MetricsLog, Tracker, create_run_dir, environment, now_iso,
                              require_wandb, resolve_mode, write_json)

RecipeLike = Recipe | str | Path | None


@dataclass
class RunResult:
    """A finished run: its folder and its summary (also in ``run_dir/summary.json``)."""

    run_dir: Path
    summary: dict[str, Any]


def as_recipe(recipe: RecipeLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """A Recipe from a Recipe, a path, a shipped recipe name, or None (the defaults)."""
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        return validate_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides),
                               "recipe", overrides)
    return load_recipe(recipe, overrides)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA): initialisation and dropout."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def teach(recipe: RecipeLike = None, overrides: dict[str, Any] | None = None, *,
          name: str | None = None, quiet: bool = False, wandb: str | None = None,
          resume: str | Path | None = None, allow_changes: bool = False) -> RunResult:
    """Train a teacher as the recipe's ``teacher`` section says.

    ``resume``: a run folder to continue from its newest checkpoint (the run's own recipe,
    plus ``overrides``; a change is refused unless ``allow_changes``).
    """
    return _run("teacher", recipe, overrides, name, quiet, wandb, resume, allow_changes)


def student(recipe: RecipeLike = None, overrides: dict[str, Any] | None = None, *,
            name: str | None = None, quiet: bool = False, wandb: str | None = None,
            resume: str | Path | None = None, allow_changes: bool = False) -> RunResult:
    """Distil a student from a teacher as the recipe's ``student`` section says
    (``resume`` and ``allow_changes`` as for :func:`teach`)."""
    return _run("student", recipe, overrides, name, quiet, wandb, resume, allow_changes)


def _run(role: str, recipe: RecipeLike, overrides: dict[str, Any] | None, name: str | None,
         quiet: bool, wandb: str | None, resume: str | Path | None, allow_changes: bool
         ) -> RunResult:
    resume_dir = resume_folder(resume) if resume is not None else None
    if recipe is None and resume_dir is not None:
        recipe = resume_dir / "recipe.yaml"
    resolved = as_recipe(recipe, _with_wandb(overrides, wandb))
    return _train(role, resolved, name, quiet, resume_dir, allow_changes)


def _with_wandb(overrides: dict[str, Any] | None, mode: str | None) -> dict[str, Any]:
    merged = dict(overrides or {})
    if mode is not None:
        merged["wandb.mode"] = mode
    return merged


def run_prefix(recipe: Recipe, role: str) -> str:
    if recipe.name:
        return f"{recipe.name}-{role}"
    dataset = recipe.data.name
    if dataset.startswith("imagefolder:"):
        dataset = Path(dataset.split(":", 1)[1]).name or "imagefolder"
    return f"{'teach' if role == 'teacher' else 'student'}-{dataset}"


def progress_bar(console: Console, quiet: bool) -> Progress:
    """The training progress bar (batches of the epoch, loss, speed); off unless a terminal."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("{task.fields[speed]:,.0f} img/s"), TimeElapsedColumn(),
                    console=console, transient=True,
                    disable=quiet or not console.is_terminal)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = f"epoch {record['epoch']:>3}/{epochs}  train_loss {record['train_loss']:.4f}"
    if "val_accuracy" in record:
        line += f"  val_loss {record['val_loss']:.4f}  val_acc {100 * record['val_accuracy']:.2f}%"
    return line + f"  {record['images_per_second']:,.0f} img/s"


def _train(role: str, recipe: Recipe, name: str | None, quiet: bool,
           resume: Path | None = None, allow_changes: bool = False) -> RunResult:
    """One training run; under torchrun one rank of it (see ``distill/distributed.py``)."""
    world, device_name = dist_setup(recipe.device)
    locks: list[FileLock] = []  # the run folder's, held until the run ends (rank 0 only)
    try:
        result = _train_rank(role, recipe, name, quiet, resume, allow_changes, world,
                             device_name, locks)
    finally:
        for lock in locks:
            lock.release()
    teardown(world)
    return result


def _train_rank(role: str, recipe: Recipe, name: str | None, quiet: bool, resume: Path | None,
                allow_changes: bool, world: World | None, device_name: str,
                locks: list[FileLock]) -> RunResult:
    main = world is None or world.is_main  # only the main process writes anything
    if resume is not None and main:
        locks.append(lock_run(resume))  # refused while another process trains in it
    console = Console(stderr=True, quiet=quiet or not main)
    cfg: RoleConfig = recipe.teacher if role == "teacher" else recipe.student
    require_wandb(resolve_mode(recipe.wandb.mode))  # before anything is written
    check_batch(cfg.batch_size, world)
    checkpoint = check_resumable(resume, role, recipe, allow_changes) if resume else None
    device = resolve_device(device_name)
    set_deterministic(recipe.deterministic)
    with main_first(world):  # rank 0 fills the data caches, the others read them
        data = load_data(recipe.data)
    # of the data as loaded (CPU): checkpoints keep it, a resume compares it with theirs
    # (on every rank, so that every rank refuses other data, not rank 0 alone)
    data_fingerprint = data.content_fingerprint() if main or checkpoint else None
    if checkpoint is not None:  # and the fingerprint its next checkpoints hold
        data_fingerprint = check_same_data(resume, checkpoint, data_fingerprint)
    teacher, source = _student_teacher(recipe, data) if role == "student" else (None, None)
    if checkpoint is not None and role == "student":
        changed = check_same_teacher(resume, checkpoint, source.sha256 if source else None,
                                     source.location if source else None, allow_changes)
        checkpoint["allowed"] = checkpoint["allowed"] + ([changed] if changed else [])
    seed_everything(recipe.seed)
    model = build_model(cfg.model.name, data.info.in_shape, data.info.num_classes,
                        **cfg.model.build_options())
    amp, channels_last = resolve_precision(recipe.amp, recipe.channels_last, device, model)
    precision = {"amp_bf16": amp, "channels_last": channels_last,
                 "world_size": world.size if world else 1}
    if teacher is not None:
        precision["teacher_channels_last"] = resolve_precision(
            recipe.amp, recipe.channels_last, device, teacher)[1]
    run_dir, env = (_run_folder(recipe, role, name, resume, device, precision, locks) if main
                    else (None, {}))
    console.print(f"{'resuming' if resume else 'run folder'}: {run_dir}"
                  + (f" ({world.size} processes, rank 0 writes)" if world else ""),
                  markup=False, highlight=False, soft_wrap=True)
    if source is not None:
        console.print(f"teacher: {source.location} ({source.model['name']}"
                      + (f", sha256 {source.sha256[:12]})" if source.sha256 else ")"),
                      markup=False, highlight=False, soft_wrap=True)
        if main:
            warn_if_other_split(source.location, data.description)

    data = data.to(device)
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.preserve_format)
    teacher_eval = None
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last
                   if precision["teacher_channels_last"] else torch.preserve_format)
        with main_first(world):  # and the teacher-logits cache
            teacher_eval = prepare_teacher(teacher, source, data, recipe, console, write=main)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, num_batches(len(data.train), cfg.batch_size),
                                cfg.epochs)
    state = TrainState(model, optimizer, scheduler, ddp=wrap(model, world, device))
    resumes = []
    if checkpoint is not None:
        resumes = _restore(state, checkpoint, device, console, world)
    # other ranks draw their own dropout masks, continuing their streams on a resume
    start_rank_rng(world, checkpoint.get("rank_rng") if checkpoint else None, recipe.seed,
                   state.step)
    log = MetricsLog(run_dir / METRICS) if main else None
    if log is not None and checkpoint is not None:
        log.truncate_after(state.epoch)  # epochs logged after the checkpoint run again
    loop = LoopConfig(cfg.epochs, cfg.batch_size, recipe.data.data_seed,
                      T=getattr(cfg, "T", 1.0), alpha=getattr(cfg, "alpha", 0.0),
                      label_smoothing=cfg.label_smoothing, grad_clip=cfg.optim.grad_clip,
                      max_norm=cfg.optim.max_norm, world=world, augment=build_augment(cfg.augment), amp=amp,
                      channels_last=channels_last)
    job_type = "teach" if role == "teacher" else "student"
    tracking = recipe.wandb if main else recipe.wandb.model_copy(update={"mode": "disabled"})
    tracker = Tracker(tracking, run_dir, job_type, recipe.model_dump(mode="json"), console,
                      run_id=env.get("wandb_id"))
    teacher_sha = source.sha256 if source is not None else None
    saver = (Checkpointer(run_dir, role, recipe, state, teacher_sha, resumes,
                          recipe.checkpoint.every_epoch, carried_wall(checkpoint),
                          data_fingerprint, amp) if main else None)

    def at_checkpoint(where: str) -> None:  # on every rank, at the same points
        if where == "epoch" and not recipe.checkpoint.every_epoch:
            return
        rank_rng = gather_rank_rng(world)  # a collective under torchrun: before rank 0 saves
        if saver is not None:
            saver(where, rank_rng)
    try:
        with progress_bar(console, quiet or not main) as progress:
            def on_epoch(record: dict[str, Any]) -> None:
                if log is None:
                    return
                log.append(record)
                tracker.log(record, step=record["epoch"])
                progress.console.print(_epoch_line(record, cfg.epochs))

            fit(state, data, loop, teacher, on_epoch,
                progress if progress.live.is_started else None,
                on_checkpoint=at_checkpoint, every_steps=recipe.checkpoint.every_steps)
        if not main:
            return RunResult(None, {})  # type: ignore[arg-type] - rank 0 holds the run
        summary = _finish(role, recipe, run_dir, state, data, teacher, source, log.read(),
                          saver.wall_seconds(), tracker, resumes, teacher_eval)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    Console(quiet=quiet).print(summary_table(summary))
    return RunResult(run_dir, summary)


def _run_folder(recipe: Recipe, role: str, name: str | None, resume: Path | None,
                device: torch.device, extra: dict[str, Any], locks: list[FileLock]
                ) -> tuple[Path, dict[str, Any]]:
    """A new run folder (``extra`` goes into its environment.json; its lock is added to
    ``locks``), or the resumed one (its recipe rewritten: changed only with
    --allow-changes)."""
    if resume is None:
        return new_run(recipe, Path(recipe.output_dir), run_prefix(recipe, role), name,
                       str(device), locks=locks, **extra)
    clean_stale(resume)
    env = json.loads((resume / "environment.json").read_text())
    dump_recipe(recipe, resume / "recipe.yaml")
    return resume, env


def _restore(state: TrainState, checkpoint: dict[str, Any], device: torch.device,
             console: Console, world: World | None) -> list[dict[str, Any]]:
    """Load a checkpoint into ``state`` (any world size wrote it); returns the resume log."""
    state.load_state_dict(checkpoint["state"], device)
    if world is not None and not world.is_main:
        state.sums, state.seen = (None if state.sums is None else
                                  {k: torch.zeros_like(v) for k, v in state.sums.items()}), 0
    resumes = checkpoint.get("resumes", []) + [
        {"epoch": state.epoch, "step": state.step, "at": now_iso(),
         "world_size": world.size if world else 1,
         # the wall time of the segments before (None: a checkpoint older than this record)
         "wall_seconds_before": checkpoint.get("wall_seconds")}
        # the same data or teacher, read from elsewhere (see check_resumable)
        | ({"moved": checkpoint["moved"]} if checkpoint.get("moved") else {})
        # what --allow-changes let through: another recipe, data or teacher
        | ({"changes": checkpoint["allowed"]} if checkpoint.get("allowed") else {})]
    skip = os.environ.get(RESUME_SKIP_ENV, "")  # negative controls of the resume tests
    if "data_order" in skip:
        state.batch_in_epoch, state.sums, state.seen = 0, None, 0
    if "rng" not in skip:
        set_rng_state(checkpoint["rng"])
    console.print(f"continuing at epoch {state.epoch + 1}, batch {state.batch_in_epoch}, "
                  f"step {state.step}", markup=False, highlight=False)
    moved = checkpoint.get("moved")
    if moved:
        same = (["data (fingerprint)"] if checkpoint["moved_data"] else []) + (
            ["teacher (sha256)"] if any(c.startswith("student.teacher:") for c in moved) else [])
        console.print(f"read from elsewhere: {'; '.join(moved)}; the same "
                      f"{' and '.join(same)} as the run's", markup=False, highlight=False,
                      soft_wrap=True)
    if checkpoint.get("allowed"):
        console.print(f"resumed with changes (--allow-changes): "
                      f"{'; '.join(checkpoint['allowed'])}", markup=False, highlight=False,
                      soft_wrap=True)
    return resumes


def new_run(recipe: Recipe, parent: Path, prefix: str, name: str | None, device: str,
            locks: list[FileLock] | None = None, **environment_extra: Any
            ) -> tuple[Path, dict[str, Any]]:
    """A new run folder with its environment.json (and wandb run id) and resolved recipe.
    ``locks``: the folder's run lock is taken as soon as the folder exists, before anything
    is written in it, and added there (a folder with no lock and no checkpoint is a run
    stopped before its first checkpoint, which the scripts and sweeps may clear)."""
    run_dir = create_run_dir(parent, prefix, name)
    if locks is not None:
        locks.append(lock_run(run_dir))
    env = {**environment(device), "wandb_id": uuid.uuid4().hex[:12], **environment_extra}
    write_json(run_dir / "environment.json", env)
    dump_recipe(recipe, run_dir / "recipe.yaml")
    return run_dir, env


def _student_teacher(recipe: Recipe, data: DataBundle):
    """The student's frozen teacher and where it came from.

    A baseline (``alpha = 0``) needs no teacher: with none given and no teacher run found it
    trains without one (and reports no teacher figures).
    """
    cfg = recipe.student
    location = teacher_location(cfg.teacher, data.info.name, Path(recipe.output_dir),
                                required=cfg.alpha > 0)
    if location is None:
        return None, None
    return load_teacher(location, cfg.teacher_model, data.info, Path(recipe.output_dir))


def prepare_teacher(teacher: FrozenTeacher, source, data: DataBundle, recipe: Recipe,
                    console: Console | None, write: bool = True) -> TeacherEvaluation | None:
    """Attach the teacher's cached training logits (computed once if missing) and return its
    test evaluation from the same cache; None when the recipe turns the cache off."""
    if not recipe.student.teacher_cache:
        return None
    cached = teacher_logits(teacher, source, data, Path(recipe.output_dir), console=console,
                            write=write)
    small = cached.train.numel() * 4 <= CACHE_MAX_BYTES  # else the teacher runs per batch
    if small and not recipe.student.augment.active():  # augmented batches need its forward
        teacher.use_cached(cached.train.to(data.train.device))
    return TeacherEvaluation(cached.test, cached.figures)


def _finish(role: str, recipe: Recipe, run_dir: Path, state: TrainState, data: DataBundle,
            teacher: FrozenTeacher | None, source, history: list[dict[str, Any]],
            wall: float, tracker: Tracker, resumes: list[dict[str, Any]],
            teacher_eval: TeacherEvaluation | None = None) -> dict[str, Any]:
    """Export weights, evaluate on test, plot, and write ``summary.json`` (written last)."""
    cfg: RoleConfig = recipe.teacher if role == "teacher" else recipe.student
    weights = run_dir / WEIGHTS
    save_file({k: v.detach().cpu().contiguous() for k, v in state.model.state_dict().items()},
              str(weights))
    best = None
    if state.best_weights is not None:
        save_file({k: v.contiguous() for k, v in state.best_weights.items()},
                  str(run_dir / "best.safetensors"))
        best = {"epoch": state.best_epoch, "val_accuracy": state.best_val_accuracy,
                "weights": "best.safetensors"}
    baseline = read_baseline(recipe.student.baseline) if role == "student" else None
    if teacher is not None and teacher_eval is None:
        teacher_eval = evaluate_teacher(teacher, data)
    evaluation = evaluate_model(state.model, data, teacher_eval, baseline, run_dir)
    plot_learning_curves(history, run_dir / "learning_curves.png", title=run_dir.name)
    summary = {
        "role": role, "run": run_dir.name, "dataset": data.info.name,
        "num_classes": data.info.num_classes, "in_shape": list(data.info.in_shape),
        "data": data.description, "data_fingerprint": data.fingerprint(),
        "model": {"name": cfg.model.name, "options": cfg.model.build_options()},
        "weights": WEIGHTS, "weights_sha256": file_sha256(weights),
        "seed": recipe.seed, "epochs": cfg.epochs, "recipe_fingerprint": recipe.fingerprint(),
        "final_epoch": history[-1] if history else None,
        "best_on_val": best,
        **evaluation,
        "wall_seconds": round(wall, 2), "finished_at": now_iso(),
        "resumes": resumes,
    }
    if role == "student":
        summary["kd"] = {"T": recipe.student.T, "alpha": recipe.student.alpha}
        if source is not None:
            summary["teacher"] = {**source.as_dict(), **summary.get("teacher", {})}
    tracker.summary(_flat(summary))
    tracker.log_image("learning_curves", run_dir / "learning_curves.png")
    tracker.log_image("confusion_matrix", run_dir / "confusion_matrix.png")
    tracker.log_weights(weights, f"{run_dir.name}-weights", {"sha256": summary["weights_sha256"]})
    write_json(run_dir / SUMMARY, summary)
    return summary


def read_baseline(spec: str | None) -> dict[str, Any] | None:
    """A baseline run's summary (for the share of the teacher-baseline gap closed)."""
    if spec is None:
        return None
    summary = read_summary(Path(spec))
    if summary is None:
        raise DistillError(f"--baseline {spec}: not a finished run (no {SUMMARY})")
    return summary


@dataclass
class TeacherEvaluation:
    """A teacher's test logits [N, K] and figures: computed once, shared by its students."""

    logits: torch.Tensor
    figures: dict[str, Any]  # {"test": metrics, "profile": cost}


def evaluate_teacher(teacher: FrozenTeacher, data: DataBundle) -> TeacherEvaluation:
    logits = predict(teacher, data.test, data.info)
    return TeacherEvaluation(logits, {
        "test": classification_metrics(logits, data.test.labels.cpu()),
        "profile": profile_model(teacher.model, data.info.in_shape, data.train.device)})


def evaluate_model(model: torch.nn.Module, data: DataBundle, teacher: TeacherEvaluation | None,
                   baseline: dict[str, Any] | None, out_dir: Path | None) -> dict[str, Any]:
    """Test metrics, confusion matrix, cost; for a student the teacher's figures too."""
    labels = data.test.labels.cpu()
    logits = predict(model, data.test, data.info)
    result: dict[str, Any] = {"test": classification_metrics(logits, labels)}
    result["profile"] = profile_model(model, data.info.in_shape, data.train.device)
    if out_dir is not None:
        cm = confusion_matrix(logits.argmax(1), labels, data.info.num_classes)
        plot_confusion_matrix(cm, data.info.class_names, out_dir / "confusion_matrix.png",
                              title=f"{out_dir.name}: test")
    if teacher is not None:
        result["teacher"] = dict(teacher.figures)
        result["agreement_with_teacher"] = agreement(logits, teacher.logits)
        if baseline is not None:
            base_acc = baseline["test"]["accuracy"]
            result["baseline"] = {"run": baseline.get("run"), "test_accuracy": base_acc}
            result["gap_closed"] = gap_closed(result["test"]["accuracy"],
                                              teacher.figures["test"]["accuracy"], base_acc)
    return result


def _flat(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary -> flat ``a/b`` keys of numbers and strings (for wandb)."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def summary_table(summary: dict[str, Any]):
    """Test metrics of the run (and of its teacher) as a metric x model table."""
    keys = ["accuracy", "errors", "top5", "macro_f1", "nll", "ece", "agreement", "gap_closed",
            "params", "macs_per_image", "latency_ms_per_batch"]
    mine = {**summary["test"], **summary["profile"],
            "agreement": summary.get("agreement_with_teacher"),
            "gap_closed": summary.get("gap_closed")}
    models = [(summary["role"], mine)]
    if "teacher" in summary and "test" in summary["teacher"]:
        models.append(("teacher", {**summary["teacher"]["test"],
                                   **summary["teacher"]["profile"]}))
    table = comparison_table(f"{summary['run']}: test set, last epoch", models, keys)
    best = summary.get("best_on_val")
    if best:
        table.caption = (f"best on validation: epoch {best['epoch']} "
                         f"({100 * best['val_accuracy']:.2f}%), not used for test")
    return table


def evaluate(run: str | Path, baseline: str | Path | None = None, data_dir: str | None = None,
             device: str = "auto", plots: bool = True) -> dict[str, Any]:
    """Re-evaluate a finished run on its test split (same data, same preprocessing).

    For a student, the teacher is loaded from where the run recorded it and must still
    have the recorded sha256.
    """
    run = Path(run)
    if not run.is_dir():
        raise DistillError(f"{run}: no such run folder")
    summary = read_summary(run)
    if summary is None:
        raise DistillError(f"{run}: not a finished run (no {SUMMARY})")
    overrides = {"data.data_dir": data_dir} if data_dir else {}
    recipe = load_recipe(run / "recipe.yaml", overrides)
    dev = resolve_device(device)
    data = load_data(recipe.data)
    spec = summary["model"]
    model = build_model(spec["name"], data.info.in_shape, data.info.num_classes, **spec["options"])
    load_model(model, str(run / WEIGHTS))
    teacher = None
    if summary["role"] == "student" and "teacher" in summary:
        info = summary["teacher"]
        teacher, source = load_teacher(info["location"], info["model"]["name"], data.info,
                                       run.parent)
        if info.get("sha256") and source.sha256 != info["sha256"]:
            raise DistillError(f"teacher {info['location']} changed since {run} was trained "
                               f"(sha256 differs)")
        teacher.to(dev)
    data = data.to(dev)
    model.to(dev)
    base = read_baseline(str(baseline)) if baseline else None
    teacher_eval = None
    if teacher is not None:
        cached = teacher_logits(teacher, source, data, run.parent)
        teacher_eval = TeacherEvaluation(cached.test, cached.figures)
    result = evaluate_model(model, data, teacher_eval, base, run if plots else None)
    result["run"] = summary["run"]
    result["role"] = summary["role"]
    result["dataset"] = summary["dataset"]
    result["best_on_val"] = summary.get("best_on_val")
    return result


def sweep(recipe: RecipeLike = None, overrides: dict[str, Any] | None = None, **kwargs: Any):
    """Train a T x alpha x seed grid of students: see :func:`distill.sweep.run_sweep`."""
    from distill.sweep import run_sweep

    return run_sweep(recipe, overrides, **kwargs)


@dataclass
class CellRun:
    """A student run folder being trained outside :func:`_train` (a batched sweep cell)."""

    run_dir: Path
    log: MetricsLog
    teacher: FrozenTeacher | None
    source: Any


def start_cell(recipe: Recipe, sweep_dir: Path, name: str, device: str,
               teacher: FrozenTeacher | None, source: Any) -> CellRun:
    """Create a cell's run folder exactly as a `distill student` run would."""
    run_dir, _ = new_run(recipe, sweep_dir, "student", name, device, batched=True)
    return CellRun(run_dir, MetricsLog(run_dir / METRICS), teacher, source)


def finish_cell(recipe: Recipe, run: CellRun, model: torch.nn.Module, data: DataBundle,
                best: dict[str, Any], wall: float,
                teacher_eval: TeacherEvaluation | None = None) -> dict[str, Any]:
    """Export, evaluate and summarise a batched cell exactly as a single student run."""
    from types import SimpleNamespace

    state = SimpleNamespace(model=model, best_weights=best.get("weights"),
                            best_epoch=best.get("epoch"),
                            best_val_accuracy=best.get("val_accuracy"))
    env = json.loads((run.run_dir / "environment.json").read_text())
    tracker = Tracker(recipe.wandb, run.run_dir, "student", recipe.model_dump(mode="json"),
                      None, run_id=env.get("wandb_id"))
    history = run.log.read()
    try:
        for record in history:
            tracker.log(record, step=record["epoch"])
        summary = _finish("student", recipe, run.run_dir, state, data, run.teacher, run.source,
                          history, wall, tracker, [], teacher_eval)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    return summary
