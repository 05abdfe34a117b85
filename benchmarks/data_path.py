"""Benchmark: teacher and student training speed, the pipeline against the reference loop.

Side by side in one run, on the same data and for the same epochs:
(a) the plain reference loop (``benchmarks/reference_loop.py``: DataLoader with
    ``num_workers = min(8, CPU cores)``, pinned memory, persistent workers, per-sample CPU
    augmentation, the teacher's forward on every student step, float32);
(b) ``distill teach`` / ``distill student`` (the whole split on the device, on-device batch
    augmentation, bf16 autocast and channels-last conv nets by default on GPU and CPU); the
    student twice: with the teacher's logits cached where it is not augmented (the cache
    computed inside the timed run) and with the cache off (the teacher's forward on every
    batch, as in the reference). Each pipeline run is timed whole, around its call.

Reports training images per second for the teacher and for the student, their ratio, and the
test accuracies (which must agree within seed noise). The teacher both students learn from
is the pipeline's (so the students are compared on the same teacher).

    python benchmarks/data_path.py --recipe mnist_hinton --data-dir ../shared/data --epochs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
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


def timed(call, *args, **kwargs) -> tuple[api.RunResult, float]:
    """A whole `distill` run and its wall seconds, from the call to its summary: data
    loading, the teacher-logits cache where one is computed, training, per-epoch
    validation, test evaluation, plots and files."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


def pipeline(recipe, suffix: str, teacher_run=None) -> tuple[api.RunResult, dict[str, float]]:
    """``distill teach``, then ``distill student`` from that teacher (or from
    ``teacher_run``, so every student learns from the same one) twice: with the teacher's
    logits cached (computed once, inside the timing; an augmented student runs the teacher
    per batch anyway) and with the cache off (the teacher's forward on every batch, as the
    reference does). Their wall seconds and test accuracies."""
    teacher, teacher_seconds = timed(api.teach, recipe, name=f"teacher{suffix}", quiet=True)
    source = str((teacher_run or teacher).run_dir)
    shutil.rmtree(Path(source) / FOLDER, ignore_errors=True)  # the cached run pays for it
    student, student_seconds = timed(api.student, recipe, {"student.teacher": source},
                                     name=f"student{suffix}", quiet=True)
    live, live_seconds = timed(api.student, recipe, {"student.teacher": source,
                                                     "student.teacher_cache": False},
                               name=f"student-per-batch{suffix}", quiet=True)
    return teacher, {"teacher_seconds": teacher_seconds, "student_seconds": student_seconds,
                     "student_per_batch_seconds": live_seconds,
                     "teacher_test": teacher.summary["test"]["accuracy"],
                     "student_test": student.summary["test"]["accuracy"],
                     "student_per_batch_test": live.summary["test"]["accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="mnist_hinton")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--val-size", type=float, default=None)
    p.add_argument("--also-nchw", action="store_true",
                   help="time the pipeline a second time with channels_last: false (NCHW "
                        "weights; augmented batches stay channels-last-strided)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    # the runs' folders (weights, logits caches: over 100 MB for MNIST) go with the benchmark
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    """Trains and times both paths with their runs in ``work``; prints the table and writes
    ``args.out``."""
    overrides = {"output_dir": str(work), "wandb.mode": "disabled", "device": args.device,
                 "teacher.epochs": args.epochs, "student.epochs": args.epochs,
                 "data.subset": args.subset, "data.test_subset": args.test_subset}
    if args.val_size is not None:
        overrides["data.val_size"] = args.val_size
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    if args.dataset:
        overrides["data.name"] = args.dataset
    recipe = api.as_recipe(args.recipe, overrides)
    device = resolve_device(recipe.device)
    data = load_data(recipe.data)
    n = len(data.train)
    results = {}

    teacher_run, results["pipeline"] = pipeline(recipe, "")
    if args.also_nchw:
        results["pipeline_nchw"] = pipeline(api.as_recipe(recipe, {"channels_last": False}),
                                            "-nchw", teacher_run)[1]

    test_loader = ref.loader(data.test, data.info, 1000, train=False)
    ref_result = {}
    for role in ("teacher", "student"):
        cfg = getattr(recipe, role)
        torch.manual_seed(recipe.seed)
        model = build_model(cfg.model.name, data.info.in_shape, data.info.num_classes,
                            **cfg.model.build_options())
        teacher = None
        if role == "student":
            teacher = load_teacher(str(teacher_run.run_dir), None, data.info, work)[0].model
        train_loader = ref.loader(data.train, data.info, cfg.batch_size, train=True,
                                  augment=ref.cpu_augment(cfg.augment))
        r = ref.train(model, teacher, train_loader, test_loader, cfg.epochs, cfg.optim.lr,
                      getattr(cfg, "T", 1.0), getattr(cfg, "alpha", 0.0), device,
                      optimizer="adam" if "adam" in cfg.optim.name else "sgd",
                      momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                      lr_lambda=ref.schedule(cfg, len(train_loader)),
                      max_norm=cfg.optim.max_norm)
        ref_result[f"{role}_seconds"] = r.seconds
        ref_result[f"{role}_test"] = r.test_accuracy
    results["reference"] = ref_result

    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    lines = [f"{args.recipe}, {args.epochs} epoch(s) per role, {n} training images, device "
             f"{device} ({machine}), torch {torch.__version__}", "",
             "| role | reference img/s | pipeline img/s | ratio | reference test | pipeline test |",
             "|---|---|---|---|---|---|"]
    rows = (("teacher", "teacher", "teacher"),
            ("student", "student", "student, teacher logits cached (computed in the run)"),
            ("student", "student_per_batch", "student, teacher forward on every batch"))
    for ref_role, role, label in rows:
        for key in [k for k in ("pipeline", "pipeline_nchw") if k in results]:
            r_s = n * args.epochs / results["reference"][f"{ref_role}_seconds"]
            o_s = n * args.epochs / results[key][f"{role}_seconds"]
            name = label if key == "pipeline" else f"{label}, channels_last off"
            lines.append(f"| {name} | {r_s:,.0f} | {o_s:,.0f} | {o_s / r_s:.2f}x | "
                         f"{100 * results['reference'][f'{ref_role}_test']:.2f}% | "
                         f"{100 * results[key][f'{role}_test']:.2f}% |")
    lines.append("")
    lines.append("pipeline seconds: a whole run timed around its call (data loading, the "
                 "teacher-logits cache where one is computed, training, per-epoch validation, "
                 "test evaluation, plots, files); reference seconds: its training loop only "
                 "(the teacher's forward on every batch).")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "n_train": n, "machine": machine,
                                        "table": text}, indent=1))


if __name__ == "__main__":
    main()
