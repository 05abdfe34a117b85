"""Benchmark: teacher and student training speed, the pipeline against the reference loop.

Side by side in one run, on the same data and for the same epochs:
(a) the plain reference loop (``benchmarks/reference_loop.py``: DataLoader with
    ``num_workers = min(8, CPU cores)``, pinned memory, persistent workers, per-sample CPU
    augmentation, the teacher's forward on every student step, float32);
(b) ``distill teach`` / ``distill student`` (the whole split on the device, on-device batch
    augmentation, cached teacher logits where the student is not augmented, bf16 autocast and
    channels-last conv nets by default on GPU and CPU).

Reports training images per second for the teacher and for the student, their ratio, and the
test accuracies (which must agree within seed noise). The teacher both students learn from
is the pipeline's (so the students are compared on the same teacher).

    python benchmarks/data_path.py --recipe mnist_hinton --data-dir ../shared/data --epochs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_loop as ref  # noqa: E402

import distill.api as api  # noqa: E402
from distill.augment import BatchAugment  # noqa: E402
from distill.data import load_data  # noqa: E402
from distill.engine import resolve_device  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.teacher import load_teacher  # noqa: E402


def cpu_augment(cfg):
    """Per-sample augmentation on the CPU, as a torchvision pipeline does it (the same
    operations as the recipe's, applied to one image at a time in the loader workers)."""
    if not cfg.active():
        return None
    aug = BatchAugment(cfg)
    counter = iter(range(1 << 62))
    return lambda image: aug(image.unsqueeze(0), seed=next(counter))[0]


def pipeline(recipe, suffix: str, teacher_run=None) -> tuple[api.RunResult, dict[str, float]]:
    """``distill teach`` then ``distill student`` from that teacher (or from ``teacher_run``,
    so every student learns from the same one): their wall seconds and test accuracies."""
    teacher = api.teach(recipe, name=f"teacher{suffix}", quiet=True)
    source = teacher_run or teacher
    student = api.student(recipe, {"student.teacher": str(source.run_dir)},
                          name=f"student{suffix}", quiet=True)
    return teacher, {"teacher_seconds": teacher.summary["wall_seconds"],
                     "student_seconds": student.summary["wall_seconds"],
                     "teacher_test": teacher.summary["test"]["accuracy"],
                     "student_test": student.summary["test"]["accuracy"]}


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
                                  augment=cpu_augment(cfg.augment))
        r = ref.train(model, teacher, train_loader, test_loader, cfg.epochs, cfg.optim.lr,
                      getattr(cfg, "T", 1.0), getattr(cfg, "alpha", 0.0), device,
                      optimizer="adam" if "adam" in cfg.optim.name else "sgd",
                      momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                      lr_lambda=ref.schedule(cfg, len(train_loader)))
        ref_result[f"{role}_seconds"] = r.seconds
        ref_result[f"{role}_test"] = r.test_accuracy
    results["reference"] = ref_result

    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    lines = [f"{args.recipe}, {args.epochs} epoch(s) per role, {n} training images, device "
             f"{device} ({machine}), torch {torch.__version__}", "",
             "| role | reference img/s | pipeline img/s | ratio | reference test | pipeline test |",
             "|---|---|---|---|---|---|"]
    for role in ("teacher", "student"):
        for key in [k for k in ("pipeline", "pipeline_nchw") if k in results]:
            r_s = n * args.epochs / results["reference"][f"{role}_seconds"]
            o_s = n * args.epochs / results[key][f"{role}_seconds"]
            name = role if key == "pipeline" else f"{role}, pipeline with channels_last off"
            lines.append(f"| {name} | {r_s:,.0f} | {o_s:,.0f} | {o_s / r_s:.2f}x | "
                         f"{100 * results['reference'][f'{role}_test']:.2f}% | "
                         f"{100 * results[key][f'{role}_test']:.2f}% |")
    lines.append("")
    lines.append("pipeline seconds: a run's wall time from its first step to its summary "
                 "(training, per-epoch validation, test evaluation, plots, files); reference "
                 "seconds: its training loop only.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "n_train": n, "machine": machine,
                                        "table": text}, indent=1))


if __name__ == "__main__":
    main()
