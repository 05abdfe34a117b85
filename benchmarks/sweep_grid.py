"""Benchmark: a T x alpha grid of students trained three ways, side by side in one run.

(a) the plain reference loop (``benchmarks/reference_loop.py``), one student after another,
    the teacher's forward on every step;
(b) ``distill sweep --mode sequential`` (each cell a normal `distill student` run);
(c) ``distill sweep`` batched (the students of a chunk in one vmapped forward/backward).

Same recipe, same data, same epochs, same teacher; (b) and (c) each start with an empty
teacher-logits cache, so each pays for its own teacher pass. Wall times are end to end for
the whole grid (sweeps: including each cell's evaluation, plots and files; reference: its
training plus a test pass per student). Prints a Markdown table and writes JSON.

    python benchmarks/sweep_grid.py --recipe mnist_hinton --data-dir ../shared/data \\
        --epochs 1 --out benchmarks/results/sweep-mnist-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_loop as ref  # noqa: E402

import distill.api as api  # noqa: E402
from distill.data import load_data  # noqa: E402
from distill.engine import resolve_device  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.teacher import load_teacher  # noqa: E402
from distill.teacher_cache import FOLDER  # noqa: E402

T_GRID = [1.0, 2.0, 4.0, 8.0, 16.0]
ALPHA_GRID = [0.1, 0.3, 0.5, 0.7, 0.9]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="mnist_hinton")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default=None, help="override data.name (e.g. imagefolder:...)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=None, help="training images kept")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--val-size", type=float, default=None, help="override data.val_size")
    p.add_argument("--grid", default="5x5", help="5x5 (T x alpha) or 3x3")
    p.add_argument("--device", default="auto")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--skip", default="", help="comma list of modes not run: reference,"
                   "sequential,batched")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None,
                   help="output folder, kept (default: a temporary folder, removed at the end)")
    args = p.parse_args()
    if args.work:
        run(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as work:  # goes with the runs
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    """Trains the grid three ways with their runs in ``work``; prints and writes the
    report."""
    rows, cols = (int(v) for v in args.grid.split("x"))
    Ts = T_GRID[:rows] if rows < 5 else T_GRID
    Ts = [1.0, 4.0, 16.0] if rows == 3 else Ts
    alphas = [0.1, 0.5, 0.9] if cols == 3 else ALPHA_GRID[:cols]
    overrides = {"output_dir": str(work), "wandb.mode": "disabled", "device": args.device,
                 "student.epochs": args.epochs, "teacher.epochs": args.teacher_epochs,
                 "data.subset": args.subset, "data.test_subset": args.test_subset}
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    if args.val_size is not None:
        overrides["data.val_size"] = args.val_size
    if args.dataset:
        overrides["data.name"] = args.dataset
    recipe = api.as_recipe(args.recipe, overrides)
    device = resolve_device(recipe.device)
    print(f"teacher: {recipe.teacher.model.name}, {args.teacher_epochs} epoch(s) (not timed)",
          flush=True)
    teacher_run = api.teach(recipe, name="teacher", quiet=True).run_dir
    common = {"student.teacher": str(teacher_run)}
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict] = {}

    if "reference" not in skip:
        results["reference"] = reference(recipe, teacher_run, Ts, alphas, device)
    for mode in ("sequential", "batched"):
        if mode in skip:
            continue
        shutil.rmtree(teacher_run / FOLDER, ignore_errors=True)  # each mode pays its pass
        start = time.perf_counter()
        out = api.sweep(recipe, common, Ts=Ts, alphas=alphas, seeds=[0], mode=mode,
                        name=f"sweep-{mode}", quiet=True, chunk_size=args.chunk_size)
        wall = time.perf_counter() - start
        accs = [r["test_accuracy"] for r in out.rows]
        results[mode] = {"seconds": wall, "test_accuracy": accs}
        print(f"{mode}: {wall:.1f} s, mean test {100 * statistics.mean(accs):.2f}%", flush=True)

    n_train = len(load_data(recipe.data).train)
    report(results, n_train, len(Ts) * len(alphas), args, recipe, device)


def reference(recipe, teacher_run: Path, Ts, alphas, device) -> dict:
    data = load_data(recipe.data)
    teacher, _ = load_teacher(str(teacher_run), None, data.info, teacher_run.parent)
    cfg = recipe.student
    test_loader = ref.loader(data.test, data.info, 1000, train=False)
    train_loader = ref.loader(data.train, data.info, cfg.batch_size, train=True,
                              seed=recipe.data.data_seed, augment=ref.cpu_augment(cfg.augment))
    start = time.perf_counter()
    accs = []
    for T in Ts:
        for alpha in alphas:
            torch.manual_seed(recipe.seed)
            model = build_model(cfg.model.name, data.info.in_shape, data.info.num_classes,
                                **cfg.model.build_options())
            r = ref.train(model, teacher.model, train_loader, test_loader, cfg.epochs,
                          cfg.optim.lr, T, alpha, device,
                          optimizer="adam" if "adam" in cfg.optim.name else "sgd",
                          momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                          lr_lambda=ref.schedule(cfg, len(train_loader)),
                          max_norm=cfg.optim.max_norm)
            accs.append(r.test_accuracy)
            print(f"  reference T {T:g} alpha {alpha:g}: {r.seconds:.1f} s train, test "
                  f"{100 * r.test_accuracy:.2f}%", flush=True)
    wall = time.perf_counter() - start
    print(f"reference: {wall:.1f} s, mean test {100 * statistics.mean(accs):.2f}%", flush=True)
    return {"seconds": wall, "test_accuracy": accs}


def report(results: dict, n_train: int, cells: int, args, recipe, device) -> None:
    images = n_train * cells * args.epochs
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, "
                    f"{torch.get_num_threads()} threads")
    lines = [f"grid {args.grid} ({cells} students), {args.epochs} epoch(s), {n_train} training "
             f"images each, recipe {args.recipe}, device {device} ({machine}), torch "
             f"{torch.__version__}", "",
             "| mode | wall (s) | student-images/s | ratio to reference | mean test acc | "
             "std over cells |", "|---|---|---|---|---|---|"]
    base = results.get("reference", {}).get("seconds")
    for mode, r in results.items():
        accs = r["test_accuracy"]
        ratio = f"{base / r['seconds']:.2f}x" if base else "-"
        lines.append(f"| {mode} | {r['seconds']:.1f} | {images / r['seconds']:,.0f} | {ratio} | "
                     f"{100 * statistics.mean(accs):.2f}% | "
                     f"{100 * statistics.pstdev(accs):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "machine": machine, "torch": torch.__version__,
                                        "n_train": n_train, "cells": cells,
                                        "results": results, "table": text}, indent=1))


if __name__ == "__main__":
    main()
