"""Every shipped recipe runs end to end on a few images for one epoch, so recipes never rot.

MNIST runs on the real files when the shared data folder is present ($DISTILL_DATA_DIR, set
by .ci/run); CIFAR-10's recipe runs on a tiny generated ImageFolder of 32x32 images.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import shared_data_dir
from distill.cli import app
from distill.recipe import shipped_recipes
from distill.sweep import aggregate, best_cell, read_results

runner = CliRunner()


def run_ok(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_all_shipped_recipes_are_covered() -> None:
    """Exactly these recipes ship, and each has a smoke run: digits in test_end_to_end (it is
    the default), the others below. A new recipe fails this until it gets one."""
    assert set(shipped_recipes()) == {"digits", "mnist_hinton", "cifar10_resnet",
                                      "cifar10_jpeg_resnet"}


def tiny_image_folder(root: Path, classes: int = 10, per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] = 25 * c  # a learnable colour cue per class
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


# the JPEG recipe's alpha was chosen on its validation split; the other's was never swept
@pytest.mark.parametrize("recipe, alpha",
                         [("cifar10_resnet", 0.9), ("cifar10_jpeg_resnet", 0.5)])
def test_cifar10_recipe_smoke(tmp_path, recipe, alpha) -> None:
    data = tiny_image_folder(tmp_path / "cifar")
    common = ["--recipe", recipe, "--dataset", f"imagefolder:{data}", "--epochs", "1",
              "--val-size", "10", "--output-dir", str(tmp_path / "out"), "--wandb", "disabled",
              "-q", "--batch-size", "16"]
    run_ok("teach", *common, "--name", "t")
    run_ok("student", *common, "--name", "s", "--teacher", str(tmp_path / "out" / "t"))
    s = summary(tmp_path / "out" / "s")
    assert s["model"]["name"] == "resnet20" and s["teacher"]["model"]["name"] == "resnet56"
    assert s["kd"] == {"T": 4.0, "alpha": alpha}
    assert s["data"]["train"] == 50 and s["in_shape"] == [3, 32, 32]


@pytest.mark.skipif(shared_data_dir() is None or not (shared_data_dir() / "mnist").is_dir(),
                    reason="real MNIST files absent: set DISTILL_DATA_DIR to the shared data "
                           "folder (.ci/run does when ../shared/data exists)")
def test_mnist_hinton_recipe_on_real_mnist_subset(tmp_path) -> None:
    common = ["--recipe", "mnist_hinton", "--data-dir", str(shared_data_dir()),
              "--set", "data.subset=1000", "--set", "data.test_subset=500", "--val-size", "200",
              "--epochs", "2", "--output-dir", str(tmp_path), "--wandb", "disabled", "-q"]
    run_ok("teach", *common, "--name", "teacher")
    run_ok("student", *common, "--name", "student", "--teacher", str(tmp_path / "teacher"))
    t, s = summary(tmp_path / "teacher"), summary(tmp_path / "student")
    assert t["dataset"] == "mnist" and t["in_shape"] == [1, 28, 28]
    assert t["data"]["train"] == 1000 and t["data"]["val"] == 200 and t["data"]["test"] == 500
    assert t["model"]["options"]["hidden_sizes"] == [1200, 1200]
    assert s["model"]["options"]["hidden_sizes"] == [800, 800] and s["kd"]["T"] == 20.0
    # two epochs on 1000 real digits: far above the 10% of guessing (the teacher, with
    # dropout and 2-pixel jitter, learns slowest)
    assert t["test"]["accuracy"] > 0.5 and s["test"]["accuracy"] > 0.6


def _jpeg_subset(archive: Path, root: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` images per class of the CIFAR-10 JPEG archive."""
    import tarfile

    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            split = next((p for p in parts if p in ("train", "test")), None)
            if not member.isfile() or split is None:
                continue
            cls = parts[parts.index(split) + 1]
            if taken.get((split, cls), 0) >= (train if split == "train" else test):
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            target = root / split / cls / Path(member.name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return root


@pytest.mark.skipif(shared_data_dir() is None
                    or not (shared_data_dir() / "cifar10-jpeg.tar.gz").is_file(),
                    reason="CIFAR-10 JPEG archive absent: set DISTILL_DATA_DIR to the shared "
                           "data folder (.ci/run does when ../shared/data exists)")
def test_cifar10_jpeg_recipe_on_real_images(tmp_path) -> None:
    """A few hundred real CIFAR-10 JPEGs, one epoch of teacher and student, with the
    recipe's augmentation; a second load reads the decoded-tensor cache."""
    data = _jpeg_subset(shared_data_dir() / "cifar10-jpeg.tar.gz", tmp_path / "jpeg", 30, 10)
    common = ["--recipe", "cifar10_jpeg_resnet", "--dataset", f"imagefolder:{data}",
              "--epochs", "1", "--val-size", "50", "--output-dir", str(tmp_path / "out"),
              "--wandb", "disabled", "-q", "--batch-size", "50"]
    run_ok("teach", *common, "--name", "t")
    run_ok("student", *common, "--name", "s", "--teacher", str(tmp_path / "out" / "t"))
    t, s = summary(tmp_path / "out" / "t"), summary(tmp_path / "out" / "s")
    assert t["data"]["train"] == 250 and t["data"]["test"] == 100 and t["in_shape"] == [3, 32, 32]
    assert t["model"]["name"] == "resnet56" and s["model"]["name"] == "resnet20"


@pytest.mark.skipif(shared_data_dir() is None or not (shared_data_dir() / "mnist").is_dir(),
                    reason="real MNIST files absent: set DISTILL_DATA_DIR to the shared data "
                           "folder (.ci/run does when ../shared/data exists)")
def test_mnist_reproduction_script_runs_every_variant(tmp_path) -> None:
    """docs/results/mnist_hinton.sh, shrunk to 300 images and one epoch, one seed."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path), "RECORD": "0", "JOBS": "2",
           "WANDB_MODE": "disabled",
           "EXTRA": "--set data.subset=300 --set data.test_subset=200 --epochs 1"}
    done = subprocess.run(["bash", str(root / "docs/results/mnist_hinton.sh"),
                           str(shared_data_dir()), "3"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    students = ("baseline", "distilled-val", "distilled", "distilled-plain")
    runs = {name: summary(tmp_path / f"mnist-{name}-s3") for name in ("teacher", *students)}
    assert all(s["seed"] == 3 and s["data"]["train"] == 300 and s["data"]["val"] == 0
               for s in runs.values())
    assert runs["baseline"]["kd"]["alpha"] == 0.0
    assert runs["distilled-val"]["kd"] == {"T": 20.0, "alpha": 0.5}  # the recipe's
    assert runs["distilled"]["kd"] == runs["distilled-plain"]["kd"] == {"T": 20.0, "alpha": 0.9}
    teacher = str(tmp_path / "mnist-teacher-s3")
    for name in students:
        assert runs[name]["teacher"]["location"] == teacher, runs[name]["teacher"]
    jitter = {n: yaml.safe_load((tmp_path / f"mnist-{n}-s3" / "recipe.yaml").read_text())
              ["student"]["augment"]["jitter"] for n in students}
    assert jitter == {"baseline": 0, "distilled-val": 2, "distilled": 2, "distilled-plain": 0}


def test_mnist_reproduction_script_refuses_an_unknown_student(tmp_path) -> None:
    """STUDENTS names the students to train; a typo stops the script before any training."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path), "STUDENTS": "distilled baseln"}
    done = subprocess.run(["bash", str(root / "docs/results/mnist_hinton.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (2, "STUDENTS: unknown 'baseln'")
    assert not any(tmp_path.iterdir())


HOLD_RUN_LOCK = """
import sys, time
from pathlib import Path
from distill.checkpoint import lock_run
lock = lock_run(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(300)
"""


def test_cifar_reproduction_script_resumes_stopped_runs_and_distils_only_when_told_how(
        tmp_path) -> None:
    """docs/results/cifar10_jpeg.sh on a tiny image folder, one seed. A teacher killed after
    its first epoch's checkpoint is resumed (not restarted, not skipped); a baseline folder
    left before any checkpoint is moved aside and trained again; with no T and ALPHA no
    distilled student is trained; with them, one named after them; a last call finds
    everything finished."""
    import os
    import subprocess

    from distill.checkpoint import KILL_AFTER_SAVE_ENV

    root = Path(__file__).resolve().parent.parent
    data = tiny_image_folder(tmp_path / "cifar")
    out = tmp_path / "out"
    shrink = ["--batch-size", "16", "--val-size", "10"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        ["distill", "teach", "--recipe", "cifar10_jpeg_resnet", "--dataset", f"imagefolder:{data}",
         "--seed", "3", "--epochs", "2", *shrink, "--output-dir", str(out / "cifar-teachers"),
         "--name", "cifar-teacher-s3", "-q"],
        env={**env, KILL_AFTER_SAVE_ENV: "1"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "cifar-teachers" / "cifar-teacher-s3" / "summary.json").exists()
    (out / "cifar-students" / "cifar-baseline-s3").mkdir(parents=True)  # killed while starting

    script = ["bash", str(root / "docs/results/cifar10_jpeg.sh"), str(data), "3"]
    env.update(OUT=str(out), RECORD="0", JOBS="2",
               EXTRA="--epochs 1 --set teacher.batch_size=16 --set student.batch_size=16 "
                     "--set data.val_size=10")

    def call(**more: str) -> str:
        done = subprocess.run(script, env={**env, **more}, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = call()
    assert "cifar-teacher-s3: stopped earlier, resuming" in first
    assert "cifar-baseline-s3: stopped before its first checkpoint, starting again" in first
    assert "distilled students: not trained" in first
    assert len(list((out / "cifar-students").glob("cifar-baseline-s3.unstarted-*"))) == 1
    assert not list((out / "cifar-students").glob("cifar-distilled*"))
    teacher = summary(out / "cifar-teachers" / "cifar-teacher-s3")
    assert teacher["epochs"] == 2 and len(teacher["resumes"]) == 1
    assert teacher["model"]["name"] == "resnet56"

    # the T x alpha choice on validation: the recipe's 6 cells from the teacher, shared by
    # two sweep processes, each cell trained once
    swept = call(SWEEP="1")
    sweep_dir = out / "cifar-sweeps" / "cifar-val-sweep"
    rows = read_results(sweep_dir)
    assert sorted((r["T"], r["alpha"]) for r in rows) == [
        (2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9), (8.0, 0.5), (8.0, 0.9)]
    for r in rows:
        assert len((sweep_dir / r["run"] / "metrics.jsonl").read_text().splitlines()) == 1
        assert summary(sweep_dir / r["run"])["teacher"]["location"] == str(
            out / "cifar-teachers" / "cifar-teacher-s3")
    best = best_cell(aggregate(rows))
    assert f"chosen on validation: T={best['T']:g} ALPHA={best['alpha']:g}" in swept
    assert len(list((out / "cifar-sweeps").glob("cifar-val-sweep.*.log"))) == 2
    figures, heatmap, curves = (tmp_path / f"val_sweep{end}" for end in
                                (".csv", ".png", "_curves.png"))
    subprocess.run([sys.executable, str(root / "docs/results/results.py"), "sweep",
                    str(sweep_dir), "--out", str(figures), "--command", "the command",
                    "--plot", str(heatmap), "--curves", str(curves)],
                   check=True, capture_output=True)
    for plot in (heatmap, curves):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(figures, newline="") as fh:
        stored = list(csv.DictReader(fh))
    assert list(stored[0]) == ["T", "alpha", "seed", "epochs", "val_accuracy",
                               "best_val_accuracy", "wall_seconds", "command"]  # no test column
    assert len(stored) == 6 and {r["epochs"] for r in stored} == {"1"}
    assert [float(r["val_accuracy"]) for r in stored] == [r["val_accuracy"] for r in rows]

    second = call(T="2", ALPHA="0.5")
    assert second.count("finished earlier") == 2 and "cifar-distilled-T2-a0.5-s3: done" in second
    students = {k: summary(out / "cifar-students" / f"cifar-{k}-s3")
                for k in ("baseline", "distilled-T2-a0.5")}
    assert students["baseline"]["kd"]["alpha"] == 0.0 and "teacher" not in students["baseline"]
    assert students["distilled-T2-a0.5"]["kd"] == {"T": 2.0, "alpha": 0.5}
    assert students["distilled-T2-a0.5"]["teacher"]["location"] == str(
        out / "cifar-teachers" / "cifar-teacher-s3")
    assert all(s["model"]["name"] == "resnet20" and s["data"]["train"] == 50
               for s in students.values())

    last = call(T="2", ALPHA="0.5")
    assert last.count("finished earlier") == 3 and ": done" not in last

    # a run folder that a live process is starting (no checkpoint yet, its lock held, as by
    # a second call of the script) is left to it, neither moved aside nor trained beside it
    busy = out / "cifar-teachers" / "cifar-teacher-s5"
    busy.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN_LOCK, str(busy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        shared = subprocess.run([*script[:-1], "5"], env=env, capture_output=True, text=True,
                                timeout=900)
    finally:
        holder.kill()
        holder.wait()
    assert shared.returncode == 1, shared.stdout + shared.stderr
    assert "cifar-teacher-s5: another process is training it; left to it" in shared.stdout
    assert "cifar-teacher-s5: not finished, another process is training it" in shared.stdout
    assert "cifar-baseline-s5: done" in shared.stdout  # the rest goes on
    assert busy.is_dir() and not list(busy.parent.glob("cifar-teacher-s5.unstarted-*"))
    assert not (out / "cifar-teachers" / "cifar-teacher-s5.log").exists()
    # the logs show each epoch, for tail -f on a long run
    assert "epoch   1/1  train_loss" in (out / "cifar-students" / "cifar-baseline-s5.log").read_text()


def test_cifar_reproduction_script_trains_longer_teachers_in_runs_of_their_own(
        tmp_path) -> None:
    """TEACHER_EPOCHS=2: the teacher trains 2 epochs in a run named -e2-, the distilled
    student learns from that teacher and is named after it too, no baseline is trained (one
    sees no teacher: the recipe's baselines serve that table too), and both runs are recorded
    in their experiment's table. A value that is not a count of epochs (an empty one too), or
    one with no experiment in results.py to record its runs in, stops the script before any
    training. Run from a copy of docs/ whose results.py knows an e2 experiment."""
    import os
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    docs = tmp_path / "docs"
    shutil.copytree(root / "docs" / "results", docs / "results")
    shutil.copy(root / "docs" / "RESULTS.md", docs / "RESULTS.md")
    results_py = docs / "results" / "results.py"
    anchor = "EXPERIMENTS = {name: _inherit(spec)"
    assert anchor in results_py.read_text()
    results_py.write_text(results_py.read_text().replace(anchor, (
        'EXPERIMENTS["cifar10_jpeg_resnet_e2"] = {"title": "e2 teachers", "teacher_epochs": 2,'
        ' "baselines_from": "cifar10_jpeg_resnet", "n_test": None}\n' + anchor)))  # 20 images
    data = tiny_image_folder(tmp_path / "cifar")
    script = ["bash", str(docs / "results" / "cifar10_jpeg.sh"), str(data), "3"]
    env = {**os.environ, "WANDB_MODE": "disabled", "JOBS": "2", "OUT": str(tmp_path / "out")}

    def call(**more: str) -> subprocess.CompletedProcess:
        return subprocess.run(script, env={**env, **more}, capture_output=True, text=True,
                              timeout=900)

    for value in ("sixty", ""):
        bad = call(TEACHER_EPOCHS=value)
        assert (bad.returncode, bad.stdout.strip()) == (
            2, f"TEACHER_EPOCHS: '{value}' is not a whole number of epochs")
    unknown = call(TEACHER_EPOCHS="45")
    assert unknown.returncode == 2 and unknown.stdout.strip().startswith(
        "TEACHER_EPOCHS=45: no experiment cifar10_jpeg_resnet_e45 in ")
    assert not (tmp_path / "out").exists()

    done = call(TEACHER_EPOCHS="2", T="2", ALPHA="0.5",
                EXTRA="--set teacher.batch_size=16 --set student.batch_size=16 "
                      "--set data.val_size=10 --set student.epochs=1")
    assert done.returncode == 0, done.stdout + done.stderr
    teachers, students = tmp_path / "out" / "cifar-teachers", tmp_path / "out" / "cifar-students"
    assert sorted(p.name for p in teachers.iterdir() if p.is_dir()) == ["cifar-teacher-e2-s3"]
    assert sorted(p.name for p in students.iterdir() if p.is_dir()) == [
        "cifar-distilled-e2-T2-a0.5-s3"]
    assert summary(teachers / "cifar-teacher-e2-s3")["epochs"] == 2
    distilled = summary(students / "cifar-distilled-e2-T2-a0.5-s3")
    assert distilled["epochs"] == 1 and distilled["kd"] == {"T": 2.0, "alpha": 0.5}
    assert distilled["teacher"]["location"] == str(teachers / "cifar-teacher-e2-s3")
    records = docs / "results" / "cifar10_jpeg_resnet_e2"
    assert sorted(p.name for p in records.glob("*.json")) == [
        "distilled-s3.json", "teacher-s3.json"]
    assert json.loads((records / "teacher-s3.json").read_text())["command"].startswith(
        "distill teach --recipe cifar10_jpeg_resnet --epochs 2 --seed 3 ")
    table = (docs / "RESULTS.md").read_text().split("### e2 teachers")[1].split("###")[0]
    assert "| baseline (the runs of the table above) | 86.26 ± 0.42 (n=3) |" in table
    assert "| distilled - baseline (paired) | not measured | - | |" in table  # no seed 3 there
