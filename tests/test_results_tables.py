"""docs/results/results.py: per-run figures in, the RESULTS.md tables out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results_module():
    spec = importlib.util.spec_from_file_location("results", ROOT / "docs/results/results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, name: str, seed: int, errors: int, kd=None, env=None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    summary = {"run": name, "seed": seed, "epochs": 60, "wall_seconds": 100.0,
               "test": {"accuracy": 1 - errors / 10000, "errors": errors, "n": 10000}}
    if kd:
        summary["kd"] = kd
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "environment.json").write_text(json.dumps(env or {"device": "cuda", "gpu": "H100"}))
    return run


def test_tables_from_stored_runs(tmp_path) -> None:
    r = results_module()
    store = tmp_path / "results"
    errors = {"teacher": [70, 72, 74], "baseline": [140, 150, 145],
              "distilled": [80, 84, 82]}
    for variant, values in errors.items():
        for seed, e in enumerate(values):
            kd = {"T": 20, "alpha": 0.9} if variant == "distilled" else None
            run = fake_run(tmp_path / "runs", f"{variant}-{seed}", seed, e, kd)
            r.add(run, "mnist_hinton", variant, f"distill ... {variant}", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"intro\n{r.START}\nold\n{r.END}\noutro\n")
    block = r.tables(store, md)
    text = md.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| teacher | 72.00 ± 2.00 (n=3) | s0: 70, s1: 72, s2: 74 | 67 |" in block
    assert "| baseline | 145.00 ± 5.00 (n=3) |" in block
    # paired per seed: 80-140, 84-150, 82-145
    assert ("| distilled (jittered), alpha 0.9 - baseline (paired) | -63.00 ± 3.00 (n=3) | "
            "s0: -60.00, s1: -66.00, s2: -63.00 | |") in block
    assert "| distilled | 0 | 60 | 20 | 0.9 | 100 | H100 | `distill ... distilled` |" in block
    assert "no jitter" not in block  # the optional row appears only with its runs
    for seed, e in enumerate([90, 95]):
        run = fake_run(tmp_path / "runs", f"plain-{seed}", seed, e, {"T": 20, "alpha": 0.9},
                       env={"device": "cpu", "cpu_count": 2})
        r.add(run, "mnist_hinton", "distilled_plain", "distill ... plain", store)
    block = r.tables(store, md)
    assert "| distilled (no jitter, as published) | 92.50 ± 3.54 (n=2) | s0: 90, s1: 95 | 74 |" \
        in block
    assert ("| distilled (no jitter, as published) - baseline (paired) | -52.50 ± 3.54 (n=2) | "
            "s0: -50.00, s1: -55.00 | |") in block
    assert "| distilled_plain | 1 | 60 | 20 | 0.9 | 100 | CPU (2 cores) |" in block
    assert "alpha chosen on validation" not in block
    run = fake_run(tmp_path / "runs", "val-0", 0, 75, {"T": 20, "alpha": 0.5})
    r.add(run, "mnist_hinton", "distilled_val", "distill ... --alpha 0.5", store)
    block = r.tables(store, md)
    rows = block.splitlines()
    val_row = "| distilled (jittered), alpha chosen on validation | 75.00 (n=1) | s0: 75 |"
    position = {x.split(" | ")[0]: i for i, x in enumerate(rows)}
    assert rows[position["| distilled (jittered), alpha 0.9"] + 1].startswith(val_row)
    assert ("| distilled (jittered), alpha chosen on validation - baseline (paired) | "
            "-65.00 (n=1) | s0: -65.00 | |") in block  # one seed: no spread shown
    assert "Not measured yet." in block  # the CIFAR experiment has no runs
    stored = json.loads((store / "mnist_hinton" / "teacher-s1.json").read_text())
    assert stored["test_errors"] == 72 and "weights" not in json.dumps(stored)


def test_superseded_recipe_borrows_the_current_baselines(tmp_path) -> None:
    """The first teacher recipe's table pairs its students with mnist_hinton's baselines
    (a baseline never sees its teacher) and lists only its own runs."""
    r = results_module()
    store = tmp_path / "results"
    for seed, e in enumerate([140, 150, 145]):
        run = fake_run(tmp_path / "runs", f"baseline-{seed}", seed, e)
        r.add(run, "mnist_hinton", "baseline", "distill ... baseline", store)
    for seed, e in enumerate([100, 104]):
        run = fake_run(tmp_path / "runs", f"old-distilled-{seed}", seed, e, {"T": 20, "alpha": 0.9})
        r.add(run, "mnist_hinton_lr0.05", "distilled", "distill ... old", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{r.START}\n{r.END}\n")
    block = r.tables(store, md)
    old = block.split("### MNIST, the first teacher recipe")[1].split("### CIFAR")[0]
    assert "| baseline (the runs of the table above) | 145.00 ± 5.00 (n=3) |" in old
    assert ("| distilled (jittered), alpha 0.9 - baseline (paired) | -43.00 ± 4.24 (n=2) | "
            "s0: -40.00, s1: -46.00 | |") in old
    assert "| baseline | 0 |" not in old and "| distilled | 1 | 60 |" in old
    assert "| teacher | not measured | - | 67 |" in old


def test_longer_teachers_borrow_the_cifar_baselines_and_report_in_accuracy(tmp_path) -> None:
    """The 60-epoch-teacher table counts the recipe's CIFAR baselines (they see no teacher)
    in accuracy %, beside the published figures, before its students exist."""
    r = results_module()
    store = tmp_path / "results"
    for seed, e in enumerate([1372, 1417, 1334]):
        run = fake_run(tmp_path / "runs", f"baseline-{seed}", seed, e)
        r.add(run, "cifar10_jpeg_resnet", "baseline", "distill ... baseline", store)
    teacher = fake_run(tmp_path / "runs", "teacher-e60-0", 0, 1150)
    r.add(teacher, "cifar10_jpeg_resnet_e60", "teacher", "distill teach ... --epochs 60", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{r.START}\n{r.END}\n")
    longer = r.tables(store, md).split("teachers trained 60 epochs")[1]
    assert "| teacher | 88.50 (n=1) | s0: 88.50 | ~93 (original images) |" in longer
    assert ("| baseline (the runs of the table above) | 86.26 ± 0.42 (n=3) | "
            "s0: 86.28, s1: 85.83, s2: 86.66 | ~91 (original) |") in longer
    assert "| distilled | not measured | - | ~91.5 (original) |" in longer
    assert "| distilled - baseline (paired) | not measured | - | |" in longer
    assert "| baseline | 0 |" not in longer and "`distill teach ... --epochs 60`" in longer


def test_a_run_the_longer_teacher_table_would_misreport_is_refused(tmp_path) -> None:
    """cifar10_jpeg_resnet_e60 holds 60-epoch teachers and their students only: a 30-epoch
    teacher, a student of one, or a baseline of its own (the borrowed ones would stand in its
    place unseen) is refused with the reason, and nothing is written. A student brought back
    from another machine is matched with its teacher here by layout and weights."""
    r = results_module()
    store, runs = tmp_path / "results", tmp_path / "runs"
    short = fake_run(runs, "teacher-e30", 0, 1268)
    summary = json.loads((short / "summary.json").read_text())
    (short / "summary.json").write_text(json.dumps({**summary, "epochs": 30}))
    student = fake_run(runs, "distilled-0", 0, 1250, {"T": 4, "alpha": 0.5})
    summary = json.loads((student / "summary.json").read_text())
    (student / "summary.json").write_text(json.dumps(
        {**summary, "teacher": {"kind": "run", "location": str(short)}}))
    orphan = fake_run(runs, "distilled-1", 1, 1250, {"T": 4, "alpha": 0.5})  # names none
    baseline = fake_run(runs, "baseline-0", 0, 1372)

    def refusal(run: Path, variant: str) -> str:
        try:
            r.add(run, "cifar10_jpeg_resnet_e60", variant, "distill ...", store)
        except ValueError as e:
            return str(e)
        raise AssertionError(f"{run.name} was recorded")

    assert refusal(short, "teacher") == (
        f"{short}: trained 30 epochs; cifar10_jpeg_resnet_e60 holds teachers trained 60")
    assert refusal(student, "distilled") == refusal(short, "teacher")
    assert refusal(orphan, "distilled") == (
        f"{orphan}: its teacher (none named) is not a finished run here, so its 60 epochs "
        "cannot be checked")
    assert refusal(baseline, "baseline") == (
        f"cifar10_jpeg_resnet_e60 takes its baselines from cifar10_jpeg_resnet; record "
        f"{baseline} there")
    assert not store.exists()
    # runs brought back from another machine name their teacher by its path there: the
    # teacher of that name in the same layout here counts, if it holds the same weights
    out = tmp_path / "gpu"
    teacher = fake_run(out / "cifar-teachers", "teacher-e60", 0, 1150)
    summary = json.loads((teacher / "summary.json").read_text())
    (teacher / "summary.json").write_text(json.dumps({**summary, "weights_sha256": "abc"}))
    for name, sha in (("moved", "abc"), ("moved-other-weights", "abd")):
        moved = fake_run(out / "cifar-students", name, 0, 1250, {"T": 4, "alpha": 0.5})
        summary = json.loads((moved / "summary.json").read_text())
        (moved / "summary.json").write_text(json.dumps({**summary, "teacher": {
            "kind": "run", "location": "/device/runs/cifar-teachers/teacher-e60",
            "sha256": sha}}))
    other = out / "cifar-students" / "moved-other-weights"
    assert refusal(other, "distilled") == (
        f"{other}: its teacher (/device/runs/cifar-teachers/teacher-e60) is not a finished "
        "run here with the weights it learnt from (sha256 abd), so its 60 epochs cannot be "
        "checked")
    r.add(out / "cifar-students" / "moved", "cifar10_jpeg_resnet_e60", "distilled", "d", store)
    assert [p.name for p in (store / "cifar10_jpeg_resnet_e60").glob("*.json")] == [
        "distilled-s0.json"]
    # the same runs are welcome where no teacher length is set
    r.add(short, "cifar10_jpeg_resnet", "teacher", "distill ...", store)
    r.add(student, "cifar10_jpeg_resnet", "distilled", "distill ...", store)
    assert sorted(p.name for p in (store / "cifar10_jpeg_resnet").glob("*.json")) == [
        "distilled-s0.json", "teacher-s0.json"]


def test_a_resumed_run_counts_the_wall_time_of_every_segment(tmp_path) -> None:
    """Resumed from a checkpoint that carried its time: the summary's wall stands. From an
    older checkpoint (wall_seconds_before None or missing): the epochs' times from metrics.jsonl,
    marked as such in the table, not the last segment's time alone."""
    r = results_module()
    store = tmp_path / "results"
    carried = fake_run(tmp_path / "runs", "carried", 0, 70)
    summary = json.loads((carried / "summary.json").read_text())
    summary["resumes"] = [{"epoch": 30, "wall_seconds_before": 60.0}]
    (carried / "summary.json").write_text(json.dumps(summary))
    r.add(carried, "mnist_hinton", "teacher", "distill teach ...", store)
    older = fake_run(tmp_path / "runs", "older", 1, 72)
    summary = json.loads((older / "summary.json").read_text())  # wall 100: the last segment
    summary["resumes"] = [{"epoch": 30}, {"epoch": 40, "wall_seconds_before": None}]
    (older / "summary.json").write_text(json.dumps(summary))
    (older / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "epoch_seconds": 20.5}) + "\n" for e in range(1, 61)))
    r.add(older, "mnist_hinton", "teacher", "distill teach ...", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{r.START}\n{r.END}\n")
    block = r.tables(store, md)
    assert "| teacher | 0 | 60 | - | - | 100 (resumed 1x) | H100 |" in block
    assert "| teacher | 1 | 60 | - | - | 1230 (sum of epoch times, resumed 2x) | H100 |" in block


def test_accuracy_tables_show_each_seed_to_two_decimals(tmp_path) -> None:
    """CIFAR reports accuracy %: a seed at 87.50% reads 87.50 beside 87.32, not 87.5."""
    r = results_module()
    store = tmp_path / "results"
    for seed, errors in enumerate([1268, 1250]):
        run = fake_run(tmp_path / "runs", f"teacher-{seed}", seed, errors)
        r.add(run, "cifar10_jpeg_resnet", "teacher", "distill teach ...", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{r.START}\n{r.END}\n")
    block = r.tables(store, md)
    assert ("| teacher | 87.41 ± 0.13 (n=2) | s0: 87.32, s1: 87.50 | ~93 (original images) |"
            in block)


def test_a_record_keeps_the_resolved_recipe_the_tree_state_and_the_epochs(tmp_path) -> None:
    """A command that leans on recipe defaults does not rebuild a run once the recipe file
    changes, nor does a commit when the tree was edited: the record keeps the run's resolved
    recipe and git_dirty, and its per-epoch metrics go to a CSV beside it that the tables skip."""
    r = results_module()
    store = tmp_path / "results"
    run = fake_run(tmp_path / "runs", "teacher-0", 0, 70,
                   env={"device": "cpu", "cpu_count": 2, "git_commit": "abc", "git_dirty": True})
    (run / "recipe.yaml").write_text("name: mnist-hinton\nteacher:\n  optim: {lr: 0.02}\n")
    (run / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "train_loss": 0.5, "epoch_seconds": 20.25}) + "\n"
        + json.dumps({"epoch": 2, "train_loss": 0.25, "val_accuracy": 0.9,
                      "epoch_seconds": 19.5}) + "\n")
    out = r.add(run, "mnist_hinton", "teacher", "distill teach ...", store)
    record = json.loads(out.read_text())
    assert record["recipe"] == {"name": "mnist-hinton", "teacher": {"optim": {"lr": 0.02}}}
    assert (record["git_commit"], record["git_dirty"]) == ("abc", True)
    epochs = (store / "mnist_hinton" / "teacher-s0.epochs.csv").read_text().splitlines()
    assert epochs == ["epoch,train_loss,epoch_seconds,val_accuracy",
                      "1,0.5,20.25,", "2,0.25,19.5,0.9"]
    assert [x["run"] for x in r.load(store)["mnist_hinton"]] == ["teacher-0"]
    bare = fake_run(tmp_path / "runs", "teacher-1", 1, 72)  # no recipe.yaml, no metrics
    record = json.loads(r.add(bare, "mnist_hinton", "teacher", "distill teach ...", store)
                        .read_text())
    assert record["recipe"] is None and record["git_dirty"] is None
    assert not (store / "mnist_hinton" / "teacher-s1.epochs.csv").exists()


def test_distilled_runs_are_paired_with_the_baseline_of_their_own_seed(tmp_path) -> None:
    """Seeds 1 and 2 distilled against baselines 0, 1, 2: each difference uses its own
    seed's baseline (pairing by position would take seed 0's for seed 1)."""
    r = results_module()
    store = tmp_path / "results"
    for seed, e in enumerate([140, 150, 145]):
        r.add(fake_run(tmp_path / "runs", f"b-{seed}", seed, e), "mnist_hinton", "baseline",
              "b", store)
    for seed, e in ((1, 84), (2, 82)):
        r.add(fake_run(tmp_path / "runs", f"d-{seed}", seed, e, {"T": 20, "alpha": 0.9}),
              "mnist_hinton", "distilled", "d", store)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{r.START}\n{r.END}\n")
    block = r.tables(store, md)
    assert ("| distilled (jittered), alpha 0.9 - baseline (paired) | -64.50 ± 2.12 (n=2) | "
            "s1: -66.00, s2: -63.00 | |") in block


def test_a_run_tested_on_a_subset_is_refused(tmp_path) -> None:
    r = results_module()
    run = fake_run(tmp_path / "runs", "small", 0, 30)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "test": {**summary["test"],
                                                                      "n": 1000}}))
    try:
        r.add(run, "cifar10_jpeg_resnet", "teacher", "distill ...", tmp_path / "results")
    except ValueError as e:
        assert str(e) == (f"{run}: tested on 1000 images; cifar10_jpeg_resnet reports runs "
                          "tested on all 10000 (a data.test_subset run?)")
    else:
        raise AssertionError("recorded")
    assert not (tmp_path / "results").exists()


def test_the_committed_tables_are_those_the_committed_runs_give(tmp_path) -> None:
    """docs/RESULTS.md between its markers is exactly what `results.py tables` writes from
    the summaries committed under docs/results/: no figure edited by hand, none stale."""
    r = results_module()
    copy = tmp_path / "RESULTS.md"
    copy.write_text(r.RESULTS_MD.read_text())
    r.tables(r.HERE, copy)
    assert copy.read_text() == r.RESULTS_MD.read_text()
