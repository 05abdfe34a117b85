"""T x alpha (x seed) grids of students: run, collect, tabulate, plot, export for wandb agents.

A sweep folder ``outputs/<sweep>/`` holds one normal student run folder per cell
(``T4-a0.9-s0/``), ``sweep.json`` (the grid and the teacher), ``results.csv`` (one row per
cell and seed), ``heatmap.png`` and ``val_curves.png`` (see :mod:`distill.sweep_plots`) and
the table printed at the end. All cells share the recipe's ``data_seed`` and the same
teacher, so they see the same batches and differ only in T, alpha and seed; each cell is
exactly the student that ``distill student --T t --alpha a --seed s`` would train with the
same recipe.

Running the same sweep again (same ``--name``) skips finished cells, resumes interrupted
ones from their checkpoints, and trains the rest; nothing finished is overwritten. Several
processes may run the same sweep at once (one per GPU, or one per core): a process claims a
cell (or a batched chunk) before training it, with a lock file ``.claim-<cell>`` that the
operating system drops when the process ends however it ends, and leaves the cells claimed
by another process to it. Each prints the table of the cells finished when it ends; the
last one to end prints the whole grid.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from distill.atomic import write_whole
from distill.checkpoint import (LAST, LOCK, FileLock, changes_since, load_checkpoint,
                               take_lock)
from distill.errors import DistillError, RecipeError
from distill.recipe import Recipe, dump_recipe
from distill.teacher import read_summary, teacher_location
from distill.tracking import require_wandb, resolve_mode, write_json

RESULTS = "results.csv"
SWEEP_FILE = "sweep.json"
COLUMNS = ["T", "alpha", "seed", "val_accuracy", "best_val_accuracy", "test_accuracy",
           "wall_seconds", "run"]


@dataclass(frozen=True)
class Cell:
    """One student of the grid."""

    T: float
    alpha: float
    seed: int

    @property
    def name(self) -> str:
        return f"T{self.T:g}-a{self.alpha:g}-s{self.seed}"

    @classmethod
    def from_name(cls, name: str) -> Cell:
        """The cell a run folder is named after (``T4-a0.9-s0``)."""
        T, alpha, seed = re.fullmatch(r"T(.+)-a(.+)-s(\d+)", name).groups()
        return cls(float(T), float(alpha), int(seed))

    def overrides(self) -> dict[str, Any]:
        return {"student.T": self.T, "student.alpha": self.alpha, "seed": self.seed}


def parse_values(text: str, what: str, cast=float) -> list:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]``, with a one-line error for bad input."""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RecipeError(f"--{what} '{text}': expected comma-separated numbers, e.g. "
                          f"--{what} 1,2,4") from None
    if not values:
        raise RecipeError(f"--{what}: no values given")
    if len(set(values)) != len(values):
        raise RecipeError(f"--{what} '{text}': a value is repeated")
    return values


def grid(Ts: list[float], alphas: list[float], seeds: list[int]) -> list[Cell]:
    """Every (T, alpha, seed) combination, T varying slowest. The values come from the
    flags or the recipe's ``sweep`` section: each list is checked here, whatever its source
    (a repeated value would count one student twice in the mean over seeds)."""
    for what, values in (("T", Ts), ("alpha", alphas), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise RecipeError(f"--{what} (or the recipe's sweep.{what}) "
                              f"{','.join(f'{v:g}' for v in values)}: a value is repeated")
    for T in Ts:
        if not (math.isfinite(T) and T > 0):
            raise RecipeError(f"--T: every temperature must be > 0, got {T:g}")
    for a in alphas:
        if not 0 <= a <= 1:
            raise RecipeError(f"--alpha: every alpha must lie in [0, 1], got {a:g}")
    for seed in seeds:
        if not 0 <= seed < 2**32:
            raise RecipeError(f"--seeds: every seed must lie in [0, 2**32), got {seed}")
    return [Cell(T, a, s) for T in Ts for a in alphas for s in seeds]


# ----------------------------------------------------------------------------- results

def cell_result(run: Path) -> dict[str, Any] | None:
    """The results row of a finished cell run (None while unfinished)."""
    path = run / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    final = s.get("final_epoch") or {}
    best = s.get("best_on_val") or {}
    return {"T": s["kd"]["T"], "alpha": s["kd"]["alpha"], "seed": s["seed"],
            "val_accuracy": final.get("val_accuracy"),
            "best_val_accuracy": best.get("val_accuracy"),
            "test_accuracy": s["test"]["accuracy"], "wall_seconds": s["wall_seconds"],
            "run": run.name}


def write_results(sweep_dir: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    """Collect the finished cells' rows into ``results.csv`` (in grid order)."""
    rows = [r for c in cells if (r := cell_result(sweep_dir / c.name)) is not None]
    write_whole(sweep_dir / RESULTS, lambda tmp: _write_csv(tmp, rows))  # other processes too
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    path = sweep_dir / RESULTS
    if not path.is_file():
        raise DistillError(f"{sweep_dir}: no {RESULTS}; not a sweep folder, or no cell has "
                           f"finished yet")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("T", "alpha", "val_accuracy", "best_val_accuracy", "test_accuracy",
                  "wall_seconds"):
            r[k] = float(r[k]) if r[k] not in ("", "None") else None
        r["seed"] = int(r["seed"])
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (T, alpha): mean and std over seeds of val and test accuracy."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["T"], r["alpha"]), []).append(r)
    out = []
    for (T, alpha), rs in groups.items():
        val = [r["val_accuracy"] for r in rs if r["val_accuracy"] is not None]
        test = [r["test_accuracy"] for r in rs]
        entry = {"T": T, "alpha": alpha, "seeds": len(rs), "test": _mean_std(test)}
        entry["val"] = _mean_std(val) if val else None
        out.append(entry)
    return out


def best_cell(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell with the highest mean validation accuracy (test never chooses)."""
    with_val = [c for c in cells if c["val"] is not None]
    return max(with_val, key=lambda c: c["val"][0]) if with_val else None


def sweep_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> Table:
    """The table printed at the end of a sweep and by `distill report`."""
    info = json.loads((sweep_dir / SWEEP_FILE).read_text()) if (sweep_dir / SWEEP_FILE).is_file() else {}
    cells = aggregate(rows)
    best = best_cell(cells)
    teacher = info.get("teacher_test_accuracy")
    baseline = info.get("baseline_test_accuracy")
    baseline_from = f"run {info.get('baseline_run', '--baseline')}"  # given by --baseline
    if baseline is None:  # alpha = 0 cells are baselines trained on the same batches
        baseline_from = "alpha 0"
        zero = [r["test_accuracy"] for r in rows if r["alpha"] == 0]
        baseline = statistics.fmean(zero) if zero else None
    size = grid_size(info)
    of = f" of {size}" if len(rows) < size else ""  # cells still training elsewhere
    table = Table(title=f"{sweep_dir.name}: {len(rows)}{of} students (mean ± std over seeds)")
    for col in ("T", "alpha", "seeds", "val acc", "test acc", "gap closed", ""):
        table.add_column(col, justify="right")
    pct = lambda ms: "—" if ms is None else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"  # noqa: E731
    for c in sorted(cells, key=lambda c: (c["T"], c["alpha"])):
        gap = "—"
        if teacher is not None and baseline is not None and teacher != baseline:
            gap = f"{100 * (c['test'][0] - baseline) / (teacher - baseline):.0f}%"
        mark = "best on val" if c is best else ""
        table.add_row(f"{c['T']:g}", f"{c['alpha']:g}", str(c["seeds"]), pct(c["val"]),
                      pct(c["test"]), gap, mark, style="bold" if c is best else None)
    notes = []
    if teacher is not None:
        notes.append(f"teacher test {100 * teacher:.2f}%")
    if baseline is not None:
        notes.append(f"baseline ({baseline_from}) test {100 * baseline:.2f}%")
    if best is not None:
        notes.append(f"chosen on validation: T {best['T']:g}, alpha {best['alpha']:g} -> "
                     f"test {100 * best['test'][0]:.2f}%")
    table.caption = "; ".join(notes)
    return table


def report(sweep_dir: Path, console: Console | None = None) -> list[dict[str, Any]]:
    """Reprint the table and redraw the plots from the sweep folder's files."""
    from distill.sweep_plots import plot_sweep

    rows = read_results(sweep_dir)
    plot_sweep(sweep_dir, sweep_dir.name, rows)
    (console or Console()).print(sweep_table(sweep_dir, rows))
    return rows


# ----------------------------------------------------------------------------- wandb agents

def wandb_sweep_config(recipe_spec: str | None, Ts: list[float], alphas: list[float],
                       seeds: list[int], extra_args: list[str]) -> dict[str, Any]:
    """A wandb sweep (grid) whose agents each run `distill student` for one cell."""
    command = ["${env}", "distill", "student"]
    if recipe_spec:
        command += ["--recipe", recipe_spec]
    command += [*extra_args, "${args}"]
    return {
        "method": "grid",
        # what best_cell and the heatmap rank by: the last epoch's validation accuracy (the
        # weights that are tested), not the peak epoch's
        "metric": {"name": "final_epoch/val_accuracy", "goal": "maximize"},
        "parameters": {"T": {"values": Ts}, "alpha": {"values": alphas},
                       "seed": {"values": seeds}},
        "command": command,
    }


def write_wandb_sweep(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# ----------------------------------------------------------------------------- running

def sweep_info(recipe: Recipe, cells: list[Cell], teacher: str, mode: str) -> dict[str, Any]:
    from distill.engine import resolve_device

    return {"teacher": teacher, "mode": mode, "device_type": resolve_device(recipe.device).type,
            "Ts": sorted({c.T for c in cells}), "alphas": sorted({c.alpha for c in cells}),
            "seeds": sorted({c.seed for c in cells}), "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def grid_size(info: dict[str, Any]) -> int:
    """How many students the grid of a sweep.json holds (cells x seeds)."""
    return len(info.get("Ts", [])) * len(info.get("alphas", [])) * len(info.get("seeds", []))


def check_same_sweep(sweep_dir: Path, info: dict[str, Any], recipe: Recipe) -> None:
    """A sweep folder continues only the same recipe and teacher (its cells stay comparable).

    The recipe is compared with the one the sweep folder keeps, leaf by leaf, as a resumed
    run's is: tracking, checkpointing and the device's name may change (``--wandb offline``,
    ``--checkpoint-every``, ``cuda:1``), anything that changes a student may not. The kind of
    device may not either: precision (bf16 on a GPU by default), layout and batching follow it.
    """
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("teacher") != info["teacher"]:
        raise DistillError(f"{sweep_dir}: this sweep was started with another teacher "
                           f"({old.get('teacher')}); use another --name for a new sweep")
    if old.get("device_type", info["device_type"]) != info["device_type"]:
        raise DistillError(f"{sweep_dir}: this sweep was started on {old['device_type']}, "
                           f"which sets its students' precision and layout; continue it on "
                           f"{old['device_type']} (not {info['device_type']}), or use another "
                           f"--name for a new sweep")
    saved = sweep_dir / "recipe.yaml"  # written with sweep.json since the first sweep
    changes = changes_since(saved, recipe, exclude={"sweep"}) if saved.is_file() else []
    if changes:
        raise DistillError(f"{sweep_dir}: this sweep was started with another recipe "
                           f"({'; '.join(changes)}); use another --name for a new sweep")


# ----------------------------------------------------------------------------- orchestration

def saved_chunks(sweep_dir: Path) -> dict[Path, list[str]]:
    """The checkpoints of the batched chunks interrupted in this sweep folder and their
    cells' names (those cells continue from the chunk's checkpoint, not from a run folder's).
    One that another process removes meanwhile (its chunk finished) is left out."""
    chunks = {}
    for path in sorted(sweep_dir.glob("chunk-*.pt")):
        try:
            chunks[path] = list(load_checkpoint(path, mmap=True)["cells"])  # weights unread
        except DistillError:
            if path.exists():
                raise
    return chunks


def chunked_cells(sweep_dir: Path) -> set[str]:
    """The names of the cells that continue from an interrupted chunk's checkpoint."""
    return {n for names in saved_chunks(sweep_dir).values() for n in names}


def finished(sweep_dir: Path, name: str) -> bool:
    return (sweep_dir / name / "summary.json").is_file()


class Claimed(list):
    """The cells a process holds (a list of :class:`Cell`), each under its claim lock until
    the ``claimed`` block ends or :meth:`give_back` lets it go earlier."""

    def __init__(self) -> None:
        super().__init__()
        self.locks: dict[str, FileLock] = {}  # cell name -> its claim lock

    def give_back(self, cells: list[Cell]) -> None:
        """Release the claims of ``cells`` now and drop them from this list, so another
        process may take them while this one goes on with the rest."""
        for cell in cells:
            self.locks.pop(cell.name).release()
            self.remove(cell)


@contextmanager
def claimed(sweep_dir: Path, cells: list[Cell], console: Console,
            chunk: bool = False) -> Iterator[Claimed]:
    """The cells of ``cells`` that this process trains now, each claimed until the block
    ends. A cell claimed by another process is left to it, and one that was finished
    meanwhile is dropped. A claimed cell's folder that holds nothing to continue from (started,
    then stopped before its first checkpoint) is removed, so the cell starts afresh.
    ``chunk`` (an interrupted batched chunk, which continues whole): all of ``cells``,
    finished ones included, or none; the claims are taken in order and the first one held
    elsewhere stops them, so of several processes the one with the first cell gets all."""
    mine = Claimed()
    try:
        for cell in cells:
            lock = take_lock(sweep_dir / f".claim-{cell.name}")
            if lock is None:
                console.print(f"  {cell.name}: another process is training it; left to it",
                              markup=False, soft_wrap=True)
                if chunk:  # give back what was taken, at once
                    mine.give_back(list(mine))
                    break
                continue
            mine.locks[cell.name] = lock
            mine.append(cell)
        if not chunk:
            mine.give_back([c for c in mine if finished(sweep_dir, c.name)])
        chunked = chunked_cells(sweep_dir) if mine else set()
        for cell in list(mine):
            run = sweep_dir / cell.name
            if (run.exists() and not finished(sweep_dir, cell.name)
                    and not (run / LAST).is_file() and cell.name not in chunked
                    and not _remove_unlocked(run)):
                console.print(f"  {cell.name}: a process outside this sweep trains in its "
                              "folder; left to it", markup=False, soft_wrap=True)
                mine.give_back(list(mine) if chunk else [cell])
                if chunk:
                    break
        yield mine
    finally:
        for lock in mine.locks.values():
            lock.release()


def _remove_unlocked(run: Path) -> bool:
    """Remove the run folder ``run`` (nothing in it to resume from: the cell trains again)
    unless a process holds its run lock (e.g. ``distill student --resume`` on it); False
    then, and the folder stays."""
    lock = take_lock(run / LOCK)
    if lock is None:
        return False
    try:
        shutil.rmtree(run)
    finally:
        lock.release()
    return True


@contextmanager
def results_lock(sweep_dir: Path, console: Console | None = None,
                 patience: float = 30.0) -> Iterator[None]:
    """Held (waiting for it) while results.csv and the plots are read and rewritten, so
    the last process to write them writes every cell finished by then. A wait longer than
    ``patience`` seconds (a peer stopped while writing, e.g. by Ctrl-Z) is said once."""
    path, start, said = sweep_dir / ".results.lock", time.monotonic(), False
    while (lock := take_lock(path)) is None:
        if not said and time.monotonic() - start > patience and console is not None:
            console.print(f"sweep: waiting for another process to finish writing "
                          f"{sweep_dir / RESULTS} (is one stopped?)", markup=False,
                          soft_wrap=True)
            said = True
        time.sleep(0.2)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@dataclass
class SweepResult:
    """A sweep's folder and its results rows (also in ``sweep_dir/results.csv``)."""

    sweep_dir: Path
    rows: list[dict[str, Any]]


def run_sweep(recipe: Recipe | str | Path | None = None,
              overrides: dict[str, Any] | None = None, *, Ts: list[float] | None = None,
              alphas: list[float] | None = None, seeds: list[int] | None = None,
              mode: str | None = None, name: str | None = None, quiet: bool = False,
              wandb: str | None = None, chunk_size: int | None = None) -> SweepResult:
    """Train one student per (T, alpha, seed) cell from one teacher (see the module doc).

    The grid, ``mode`` and ``chunk_size`` default to the recipe's ``sweep`` section.
    ``mode``: ``batched`` trains the cells of a chunk together (one teacher forward per
    batch, and one vmapped student forward/backward, or the students looped on a CPU, see
    :mod:`distill.batched`), ``sequential`` one after another, ``auto`` batched where the
    model allows it. Re-running with the same ``name`` continues.
    """
    from distill.api import _with_wandb, as_recipe, read_baseline, run_prefix
    from distill.batched import batching_problem, train_batched

    from distill.distributed import launched

    if launched():
        raise DistillError("distill sweep does not run under torchrun: spread a grid over "
                           "processes with wandb agents (distill sweep --wandb-sweep, see the "
                           "README), or run distill sweep on one device")
    base = as_recipe(recipe, _with_wandb(overrides, wandb))
    Ts, alphas = Ts or base.sweep.T, alphas or base.sweep.alpha
    seeds = seeds if seeds is not None else base.sweep.seeds
    mode, chunk_size = mode or base.sweep.mode, chunk_size or base.sweep.chunk_size
    cells = grid(Ts, alphas, seeds)
    console = Console(stderr=True, quiet=quiet)
    require_wandb(resolve_mode(base.wandb.mode))
    teacher_dir, teacher_acc = _sweep_teacher(base, max(alphas) > 0)
    out = Path(base.output_dir)
    dataset = run_prefix(base, "student").removeprefix("student-")
    sweep_name = name or f"sweep-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = out / sweep_name
    if mode not in ("auto", "batched", "sequential"):
        raise DistillError(f"--mode '{mode}': use auto, batched or sequential")
    problem = batching_problem(base) if mode != "sequential" else None
    if problem and mode == "batched":
        raise DistillError(f"--mode batched: {problem}; use --mode sequential")
    chosen = "sequential" if mode == "sequential" or problem else "batched"
    if problem:
        console.print(f"sweep: sequential mode, because {problem}", markup=False,
                      soft_wrap=True)
    info = sweep_info(base, cells, teacher_dir or "", chosen)
    if mode == "auto" and (sweep_dir / SWEEP_FILE).is_file():  # a re-run keeps what auto chose
        info["mode"] = json.loads((sweep_dir / SWEEP_FILE).read_text()).get("mode", chosen)
    if base.student.baseline:
        info["baseline_test_accuracy"] = read_baseline(base.student.baseline)["test"]["accuracy"]
        info["baseline_run"] = base.student.baseline
    info["teacher_test_accuracy"] = teacher_acc
    check_same_sweep(sweep_dir, info, base)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / SWEEP_FILE, info)
    dump_recipe(base, sweep_dir / "recipe.yaml")
    console.print(f"sweep folder: {sweep_dir} ({len(cells)} students)", markup=False,
                  soft_wrap=True)

    common = {"output_dir": str(sweep_dir), "wandb.group": sweep_name}
    if teacher_dir:
        common["student.teacher"] = teacher_dir
    in_chunks = chunked_cells(sweep_dir)
    todo = []
    for cell in cells:
        if finished(sweep_dir, cell.name):
            console.print(f"  {cell.name}: finished, kept", markup=False, soft_wrap=True)
        else:
            todo.append(cell)
    if chosen == "batched":  # cells interrupted with a checkpoint resume one by one
        resumable = [c for c in todo
                     if (sweep_dir / c.name / LAST).is_file() and c.name not in in_chunks]
        fresh = [c for c in todo if c not in resumable]
        left = train_batched(base, common, fresh, sweep_dir, chunk_size, console,
                             auto=mode == "auto")
        if fresh and len(left) == len(fresh):  # auto found batching slower here
            info["mode"] = "sequential"
            write_json(sweep_dir / SWEEP_FILE, info)
        todo = resumable + left
    for i, cell in enumerate(todo, 1):
        with claimed(sweep_dir, [cell], console) as mine:
            if mine:
                _train_cell(base, common, cell, sweep_dir, f"[{i}/{len(todo)}]", console)
                with results_lock(sweep_dir, console):
                    write_results(sweep_dir, cells)
    from distill.sweep_plots import plot_sweep

    with results_lock(sweep_dir, console):
        rows = write_results(sweep_dir, cells)
        plot_sweep(sweep_dir, sweep_name, rows)
    if len(rows) < len(cells):
        console.print(f"sweep: {len(cells) - len(rows)} of {len(cells)} students are still "
                      f"training in another process; the table shows the finished ones (run "
                      f"the same command again, or distill report {sweep_dir}, once they end)",
                      markup=False, soft_wrap=True)
    Console(quiet=quiet).print(sweep_table(sweep_dir, rows))
    _log_sweep(base, sweep_dir, rows)
    return SweepResult(sweep_dir, rows)


def _train_cell(base: Recipe, common: dict[str, Any], cell: Cell, sweep_dir: Path,
                counter: str, console: Console) -> None:
    """Train one cell alone (resume it where its folder has a checkpoint) and print its row."""
    from distill.api import student

    run = sweep_dir / cell.name
    start = time.perf_counter()
    if run.exists():
        student(resume=run, quiet=True, wandb=base.wandb.mode)
    else:
        student(base, {**common, **cell.overrides()}, name=cell.name, quiet=True)
    row = cell_result(run)
    val = "—" if row["val_accuracy"] is None else f"{100 * row['val_accuracy']:.2f}%"
    console.print(f"  {counter} {cell.name}: val {val}  "
                  f"test {100 * row['test_accuracy']:.2f}%  "
                  f"({time.perf_counter() - start:.1f} s)", markup=False, soft_wrap=True)


def _sweep_teacher(recipe: Recipe, needed: bool) -> tuple[str | None, float | None]:
    """The one teacher location all cells use, and its test accuracy when known."""
    location = teacher_location(recipe.student.teacher, recipe.data.name,
                                Path(recipe.output_dir), required=needed)
    summary = read_summary(Path(location)) if location and Path(location).is_dir() else None
    return location, (summary["test"]["accuracy"] if summary else None)


def _log_sweep(recipe: Recipe, sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """The sweep's table and plots as a wandb run of its own, when tracking is on."""
    from distill.sweep_plots import HEATMAP, VAL_CURVES
    from distill.tracking import Tracker

    tracker = Tracker(recipe.wandb.model_copy(update={"group": sweep_dir.name}), sweep_dir,
                      "sweep", {"sweep": sweep_dir.name}, None)
    if tracker.run is None:
        return
    table = tracker._wandb.Table(columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in rows])
    tracker.run.log({"results": table})
    tracker.log_image("heatmap", sweep_dir / HEATMAP)
    tracker.log_image("val_curves", sweep_dir / VAL_CURVES)
    tracker.finish()
