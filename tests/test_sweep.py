"""`distill sweep`: batched students equal students trained alone; results, report, re-runs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import distill.api as api
from distill.cli import app
from distill.sweep import aggregate, best_cell, read_results

runner = CliRunner()

# weight decay > 0, Lookahead on, a cosine schedule, label smoothing: what batched mode must
# reproduce
STUDENT = {"student.model.hidden_sizes": [16], "student.epochs": 3,
           "student.optim.name": "lookahead_adam", "student.optim.weight_decay": 0.01,
           "student.optim.la_k": 4, "student.optim.schedule": "cosine",
           "student.optim.lr": 0.003, "student.label_smoothing": 0.1}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    return api.teach(overrides={"teacher.epochs": 3, "output_dir": str(out)}, name="t",
                     quiet=True).run_dir


def alone(out: Path, teacher: Path, T: float, alpha: float, seed: int, extra=None) -> Path:
    overrides = {**STUDENT, **(extra or {}), "output_dir": str(out), "student.teacher": str(teacher),
                 "student.T": T, "student.alpha": alpha, "seed": seed}
    return api.student(overrides=overrides, name=f"alone-{T:g}-{alpha:g}-{seed}",
                       quiet=True).run_dir


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def close(a: Path, b: Path, atol: float = 1e-5) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(
        torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=0) for k in wa)


@pytest.fixture(scope="module")
def batched(tmp_path_factory, teacher) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    result = api.sweep(overrides={**STUDENT, "output_dir": str(out),
                                  "student.teacher": str(teacher)},
                       Ts=[2.0, 4.0], alphas=[0.0, 0.5], seeds=[0, 1], mode="batched",
                       name="grid", quiet=True)
    assert len(result.rows) == 8
    return result.sweep_dir


def test_a_batched_student_equals_the_same_student_trained_alone(tmp_path, teacher, batched
                                                                 ) -> None:
    single = alone(tmp_path, teacher, 4.0, 0.5, 1)
    assert close(batched / "T4-a0.5-s1", single)
    # the control: a student of the grid with another seed is not that student
    assert not close(batched / "T4-a0.5-s0", single)
    # every metric agrees too (apart from timing): losses and their hard and soft terms,
    # validation loss and accuracy, learning rate
    a = [json.loads(x) for x in (batched / "T4-a0.5-s1" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    timing = {"epoch_seconds", "images_per_second"}
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and {"val_loss", "train_soft", "lr"} <= ra.keys()
        for key in ra.keys() - timing:
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("looped", [False, True])
def test_batchnorm_students_batch_with_their_running_statistics(tmp_path, teacher, looped,
                                                               monkeypatch) -> None:
    """Conv students with BatchNorm, vmapped, or looped over slices of the stacked tensors
    with channels-last weights (as students over CPU_BATCHED_MAX_PARAMS on a CPU)."""
    from contextlib import nullcontext

    import distill.batched
    from test_precision import conv_layouts

    if looped:
        monkeypatch.setattr(distill.batched, "CPU_BATCHED_MAX_PARAMS", 0)
    cnn = {"student.model.name": "cnn", "student.model.width": 4}
    out = tmp_path / "bn"
    with conv_layouts() if looped else nullcontext(set()) as layouts:
        api.sweep(overrides={**STUDENT, **cnn, "output_dir": str(out),
                             "student.teacher": str(teacher)},
                  Ts=[4.0], alphas=[0.5], seeds=[0, 1], mode="batched", name="bn", quiet=True)
    if looped:  # the students' convolutions ran channels-last, as a student's alone does
        assert {layout for pair in layouts for layout in pair} - {None} == {"cl"}, layouts
    single = alone(tmp_path, teacher, 4.0, 0.5, 1, cnn)
    cell = weights(out / "bn" / "T4-a0.5-s1")
    ref = weights(single)
    stats = [k for k in ref if "running_mean" in k]
    assert stats and all(torch.allclose(cell[k], ref[k], atol=1e-4) for k in stats)
    assert close(out / "bn" / "T4-a0.5-s1", single, atol=1e-4)


def test_sequential_mode_is_the_single_run_exactly(tmp_path, teacher) -> None:
    result = api.sweep(overrides={**STUDENT, "output_dir": str(tmp_path),
                                  "student.teacher": str(teacher)},
                       Ts=[4.0], alphas=[0.5], seeds=[1], mode="sequential", name="seq",
                       quiet=True)
    single = alone(tmp_path, teacher, 4.0, 0.5, 1)
    assert close(result.sweep_dir / "T4-a0.5-s1", single, atol=0.0)


def test_sweep_folder_results_and_report(batched, teacher) -> None:
    rows = read_results(batched)
    assert {(r["T"], r["alpha"], r["seed"]) for r in rows} == {
        (T, a, s) for T in (2.0, 4.0) for a in (0.0, 0.5) for s in (0, 1)}
    for r in rows:
        assert r["run"] == f"T{r['T']:g}-a{r['alpha']:g}-s{r['seed']}"
        run = batched / r["run"]
        summary = json.loads((run / "summary.json").read_text())
        assert r["test_accuracy"] == summary["test"]["accuracy"]
        assert summary["teacher"]["location"] == str(teacher)
        # each cell's own folder holds its own settings, as written by the run itself
        resolved = yaml.safe_load((run / "recipe.yaml").read_text())
        assert (resolved["student"]["T"], resolved["student"]["alpha"], resolved["seed"]) == (
            r["T"], r["alpha"], r["seed"])
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    for plot in ("heatmap.png", "val_curves.png"):
        assert (batched / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["report", str(batched)])
    assert result.exit_code == 0
    assert "best on val" in result.stdout and "teacher test" in result.stdout


def test_the_sweep_table_marks_the_cell_chosen_on_validation_and_the_gap_it_closes(tmp_path
                                                                                  ) -> None:
    """The printed table (end of a sweep, `distill report`): the cell best on validation is
    marked and named in the caption although another cell is best on test, and each cell's
    gap closed is (cell - baseline) / (teacher - baseline) of test accuracy, the baseline
    being the mean of the alpha 0 cells when sweep.json names none."""
    from rich.console import Console

    from distill.sweep import sweep_table

    (tmp_path / "sweep.json").write_text(json.dumps(
        {"teacher_test_accuracy": 0.90, "Ts": [4.0], "alphas": [0.0, 0.5, 0.9],
         "seeds": [0, 1]}))

    def row(alpha: float, seed: int, val: float, test: float) -> dict:
        return {"T": 4.0, "alpha": alpha, "seed": seed, "val_accuracy": val,
                "test_accuracy": test}

    rows = [row(0.0, 0, 0.70, 0.79), row(0.0, 1, 0.72, 0.81),  # baseline: test 0.80
            row(0.5, 0, 0.88, 0.84), row(0.5, 1, 0.86, 0.84),  # best on validation
            row(0.9, 0, 0.80, 0.88), row(0.9, 1, 0.82, 0.86)]  # best on test
    console = Console(width=200, record=True)
    console.print(sweep_table(tmp_path, rows))
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert "│ 4 │ 0.5 │ 2 │ 87.00 ± 1.41 │ 84.00 ± 0.00 │ 40% │ best on val │" in lines
    assert "│ 4 │ 0.9 │ 2 │ 81.00 ± 1.41 │ 87.00 ± 1.41 │ 70% │ │" in lines
    assert "│ 4 │ 0 │ 2 │ 71.00 ± 1.41 │ 80.00 ± 1.41 │ 0% │ │" in lines
    assert ("teacher test 90.00%; baseline (alpha 0) test 80.00%; chosen on validation: T 4, "
            "alpha 0.5 -> test 84.00%") in " ".join(lines)
    # a baseline given with --baseline is named as such, not as the alpha 0 cells
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"teacher_test_accuracy": 0.90, "baseline_test_accuracy": 0.75,
         "baseline_run": "outputs/b", "Ts": [4.0], "alphas": [0.0, 0.5, 0.9], "seeds": [0, 1]}))
    console = Console(width=200, record=True)
    console.print(sweep_table(tmp_path, rows))
    text = " ".join(" ".join(line.split()) for line in console.export_text().splitlines())
    assert "baseline (run outputs/b) test 75.00%;" in text and "(alpha 0)" not in text


def test_a_chunk_epoch_line_names_every_student_tied_for_the_highest_val_accuracy() -> None:
    from distill.batched import epoch_line
    from distill.recipe import load_recipe

    recipes = [load_recipe(None, {"student.T": T, "student.alpha": 0.5, "seed": 1})
               for T in (2.0, 4.0, 8.0)]
    records = {i: {"train_loss": loss, "val_accuracy": acc, "epoch_seconds": 12.3}
               for i, (loss, acc) in enumerate([(1.0, 0.80), (0.5, 0.84), (0.7, 0.84)])}
    assert epoch_line(records, 3, recipes) == (
        f"epoch 3/{recipes[0].student.epochs} in 12 s, train loss 0.5000-1.0000, val accuracy "
        "80.00-84.00% (highest: T4-a0.5-s1, T8-a0.5-s1)")


def test_the_best_cell_is_chosen_on_validation_never_on_test() -> None:
    rows = [{"T": 2.0, "alpha": 0.5, "seed": 0, "val_accuracy": 0.90, "test_accuracy": 0.99},
            {"T": 4.0, "alpha": 0.5, "seed": 0, "val_accuracy": 0.95, "test_accuracy": 0.80},
            {"T": 8.0, "alpha": 0.9, "seed": 0, "val_accuracy": 0.91, "test_accuracy": 0.98}]
    best = best_cell(aggregate(rows))
    assert (best["T"], best["alpha"]) == (4.0, 0.5)


def test_rerunning_a_sweep_keeps_finished_cells_and_trains_the_rest(tmp_path, teacher) -> None:
    overrides = {**STUDENT, "output_dir": str(tmp_path), "student.teacher": str(teacher)}
    first = api.sweep(overrides=overrides, Ts=[4.0], alphas=[0.5, 0.9], seeds=[0],
                      mode="batched", name="again", quiet=True).sweep_dir
    kept = (first / "T4-a0.5-s0" / "model.safetensors").stat().st_mtime_ns
    (first / "T4-a0.9-s0" / "summary.json").unlink()  # as if killed before it finished
    (first / "T4-a0.9-s0" / "model.safetensors").unlink()
    again = api.sweep(overrides=overrides, Ts=[4.0], alphas=[0.5, 0.9], seeds=[0],
                      mode="batched", name="again", quiet=True)
    assert (first / "T4-a0.5-s0" / "model.safetensors").stat().st_mtime_ns == kept
    assert (first / "T4-a0.9-s0" / "summary.json").is_file()
    assert len(again.rows) == 2


def test_dropout_students_fall_back_to_sequential(tmp_path, teacher) -> None:
    overrides = {**STUDENT, "student.model.dropout": 0.1, "output_dir": str(tmp_path),
                 "student.teacher": str(teacher), "wandb.mode": "disabled"}
    result = runner.invoke(app, ["sweep", "--T", "4", "--alpha", "0.5", "--mode", "batched",
                                 "--output-dir", str(tmp_path), "--teacher", str(teacher),
                                 "--set", "student.model.dropout=0.1", "--wandb", "disabled"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --mode batched: the student uses dropout, whose "
                                     "masks would differ from a student trained alone; use "
                                     "--mode sequential")
    sweep = api.sweep(overrides=overrides, Ts=[4.0], alphas=[0.5], seeds=[0], name="drop",
                      quiet=True)
    info = json.loads((sweep.sweep_dir / "sweep.json").read_text())
    assert info["mode"] == "sequential" and len(sweep.rows) == 1


def test_an_optimizer_that_could_mix_stacked_students_is_not_batched(tmp_path, teacher) -> None:
    """LAMB scales each tensor's step by a norm of the whole tensor: over stacked students
    that norm would span all of them."""
    result = runner.invoke(app, ["sweep", "--T", "4", "--alpha", "0.5", "--mode", "batched",
                                 "--output-dir", str(tmp_path), "--teacher", str(teacher),
                                 "--set", "student.optim.name=lamb", "--wandb", "disabled"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --mode batched: the optimizer 'lamb' is not one known to update each weight on "
        "its own (sgd, momentum, nesterov, adam, adamw, with or without lookahead_); over "
        "stacked students it could mix them; use --mode sequential")


def test_wandb_sweep_config_for_agents(tmp_path) -> None:
    path = tmp_path / "sweep.yaml"
    result = runner.invoke(app, ["sweep", "--recipe", "mnist_hinton", "--T", "2,4",
                                 "--alpha", "0.5,0.9", "--seeds", "0,1", "--wandb-sweep",
                                 str(path)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    assert config["method"] == "grid"
    assert config["parameters"] == {"T": {"values": [2.0, 4.0]},
                                    "alpha": {"values": [0.5, 0.9]}, "seed": {"values": [0, 1]}}
    assert config["command"] == ["${env}", "distill", "student", "--recipe", "mnist_hinton",
                                 "${args}"]


@pytest.mark.parametrize(("args", "message"), [
    (["--T", "2,x"], "--T '2,x': expected comma-separated numbers, e.g. --T 1,2,4"),
    (["--alpha", "0.5,1.5"], "--alpha: every alpha must lie in [0, 1], got 1.5"),
    (["--T", "nan"], "--T: every temperature must be > 0, got nan"),
    (["--seeds", "0,-1"], "--seeds: every seed must lie in [0, 2**32), got -1"),
    (["--seeds", "0,1,0"], "--seeds '0,1,0': a value is repeated"),
    # from the recipe: one student counted twice would make a mean over seeds and its std lie
    (["--set", "sweep.seeds=[0, 0]"], "--seeds (or the recipe's sweep.seeds) 0,0: a value is "
                                      "repeated"),
    (["--set", "sweep.T=[4, 2, 4]"], "--T (or the recipe's sweep.T) 4,2,4: a value is "
                                     "repeated"),
])
def test_bad_grid_values_are_one_line_errors(tmp_path, args, message) -> None:
    result = runner.invoke(app, ["sweep", *args, "--output-dir", str(tmp_path), "--wandb",
                                 "disabled"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"
    assert not any(tmp_path.iterdir())  # refused before any folder is made


def test_sweep_resume_flag_continues_the_folder(tmp_path, teacher) -> None:
    args = ["sweep", "--T", "4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--output-dir", str(tmp_path), "--name", "s", "--wandb", "disabled", "-q",
            "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "s" / "T4-a0.5-s0" / "summary.json").unlink()
    result = runner.invoke(app, ["sweep", "--T", "4", "--alpha", "0.5", "--seeds", "0",
                                 "--teacher", str(teacher), "--epochs", "1", "--resume",
                                 str(tmp_path / "s"), "--wandb", "disabled", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "T4-a0.5-s0" / "summary.json").is_file()
    # with no grid flags, --resume continues the grid the sweep was started with (not the
    # recipe's 5 x 5 default)
    (tmp_path / "s" / "T4-a0.5-s0" / "summary.json").unlink()
    plain = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "s"), "-q"])
    assert plain.exit_code == 0, plain.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == ["T4-a0.5-s0"]
    assert [r["run"] for r in read_results(tmp_path / "s")] == ["T4-a0.5-s0"]
    bad = runner.invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == f"error: --resume {tmp_path}: not a sweep folder (no sweep.json)"
    # checkpointing and the device's name change no student: the sweep continues with them
    moved = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "s"), "-q", "--device",
                                "cpu", "--checkpoint-every", "5"])
    assert moved.exit_code == 0, moved.output
    # another kind of device would train the rest in another precision: refused
    info = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert info["device_type"] == "cpu"
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({**info, "device_type": "cuda"}))
    elsewhere = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "s"), "--device",
                                    "cpu"])
    assert elsewhere.exit_code == 2
    assert " ".join(elsewhere.stderr.split()) == (
        f"error: {tmp_path / 's'}: this sweep was started on cuda, which sets its students' "
        f"precision and layout; continue it on cuda (not cpu), or use another --name for a "
        f"new sweep")
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(info))
    # a setting that changes the students is refused, and named
    other = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "s"), "--epochs", "2",
                                "--set", "student.optim.lr=0.01"])
    assert other.exit_code == 2
    assert " ".join(other.stderr.split()) == (
        f"error: {tmp_path / 's'}: this sweep was started with another recipe "
        f"(student.epochs: 1 -> 2; student.optim.lr: 0.001 -> 0.01); use another --name for "
        f"a new sweep")


def agent_command(config: dict, values: dict) -> list[str]:
    """The command `wandb agent` runs for one grid point, built with wandb's own helpers
    (``wandb/wandb_agent.py``, ``Agent._command_run``): ``${envvar:X}`` macros filled by
    ``create_sweep_command``, ``${args}`` from ``create_sweep_command_args``, ``${env}`` the
    agent's ``/usr/bin/env``."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros["env"] = ["/usr/bin/env"]
    command = []
    for part in create_sweep_command(list(config["command"])):
        part = str(part)
        is_macro = part.startswith("${") and part.endswith("}")
        command += (macros.get(part[2:-1]) or []) if is_macro else [part]
    return command


def test_a_wandb_agent_command_trains_one_cell(tmp_path, teacher) -> None:
    """What `wandb agent` runs for one grid point trains exactly that cell."""
    import os
    import subprocess
    import sys

    path = tmp_path / "sweep.yaml"
    result = runner.invoke(app, ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0,1",
                                 "--teacher", str(teacher), "--epochs", "1", "--output-dir",
                                 str(tmp_path / "out"), "--wandb-sweep", str(path)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    assert config["method"] == "grid"
    assert config["parameters"] == {"T": {"values": [2.0, 4.0]}, "alpha": {"values": [0.5]},
                                    "seed": {"values": [0, 1]}}
    point = {name: spec["values"][-1] for name, spec in config["parameters"].items()}
    command = agent_command(config, point)
    assert command[:3] == ["/usr/bin/env", "distill", "student"]
    assert command[-3:] == ["--T=4.0", "--alpha=0.5", "--seed=1"]
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (cell,) = (tmp_path / "out").iterdir()
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["kd"] == {"T": 4.0, "alpha": 0.5} and summary["seed"] == 1
    assert summary["teacher"]["location"] == str(teacher) and summary["epochs"] == 1


def test_the_grid_comes_from_the_recipe_unless_flags_say_otherwise(tmp_path, teacher) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sweep:\n  T: [3]\n  alpha: [0.25, 0.75]\n  seeds: [5]\n"
                      "  mode: sequential\n")
    sets = [f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]
    common = ["--teacher", str(teacher), "--epochs", "1", "--output-dir", str(tmp_path),
              "--wandb", "disabled", "-q", *sets]
    result = runner.invoke(app, ["sweep", "--recipe", str(recipe), "--name", "r", *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "r").glob("T*")) == ["T3-a0.25-s5", "T3-a0.75-s5"]
    assert json.loads((tmp_path / "r" / "sweep.json").read_text())["mode"] == "sequential"
    flags = runner.invoke(app, ["sweep", "--recipe", str(recipe), "--name", "f", "--alpha",
                                "0.5", *common])
    assert flags.exit_code == 0, flags.output
    assert [p.name for p in (tmp_path / "f").glob("T*")] == ["T3-a0.5-s5"]
    recipe.write_text("sweep:\n  T: [0]\n")
    bad = runner.invoke(app, ["sweep", "--recipe", str(recipe), *common])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (f"error: {recipe}: sweep.T.0: Input should be greater than 0, "
                                  "got 0")


def test_a_sweep_killed_in_its_second_chunk_reruns_only_the_missing_cells(tmp_path, teacher
                                                                          ) -> None:
    """Chunks of one student: the first finishes (3 epoch checkpoints), the process is
    SIGKILLed after the second chunk's first epoch; the re-run keeps the first cell's files
    untouched and finishes only the second, equal to a sweep never stopped."""
    import os
    import signal
    import subprocess
    import sys

    from distill.checkpoint import KILL_AFTER_SAVE_ENV

    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--chunk-size", "1", "--wandb", "disabled", "-q",
            "--output-dir", str(tmp_path)]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]
    whole = runner.invoke(app, [*args, *sets, "--name", "whole"])
    assert whole.exit_code == 0, whole.output
    killed = subprocess.run([sys.executable, "-m", "distill", *args, *sets, "--name", "killed"],
                            capture_output=True, text=True,
                            env={**os.environ, KILL_AFTER_SAVE_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    sweep = tmp_path / "killed"
    first, second = sweep / "T2-a0.5-s0", sweep / "T4-a0.5-s0"
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    loud = [a for a in args if a != "-q"]  # the re-run says what it keeps and trains
    again = subprocess.run([sys.executable, "-m", "distill", *loud, *sets, "--name", "killed"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "T2-a0.5-s0: finished, kept" in again.stderr
    chunks = [line for line in again.stderr.splitlines() if "students batched" in line]
    assert chunks == ["  chunk 1: 1 students batched (T4-a0.5-s0), resuming after epoch 1"]
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == kept
    for cell in ("T2-a0.5-s0", "T4-a0.5-s0"):
        assert close(tmp_path / "whole" / cell, sweep / cell, atol=0.0)
    rows = read_results(sweep)
    assert [(r["T"], r["run"]) for r in rows] == [(2.0, "T2-a0.5-s0"), (4.0, "T4-a0.5-s0")]


def test_a_sequential_sweep_killed_in_its_second_cell_resumes_that_cell(tmp_path, teacher
                                                                      ) -> None:
    """Sequential mode: the first cell finishes (3 epoch checkpoints), the process is
    SIGKILLed after the second cell's first epoch; the re-run keeps the first cell's files
    untouched and resumes the second from its own ``checkpoint-last.pt`` (epoch 1 is not
    trained again), both equal to a sweep never stopped."""
    import os
    import signal
    import subprocess
    import sys

    from distill.checkpoint import KILL_AFTER_SAVE_ENV

    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "sequential", "--wandb", "disabled", "--output-dir", str(tmp_path)]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]
    whole = runner.invoke(app, [*args, *sets, "-q", "--name", "whole"])
    assert whole.exit_code == 0, whole.output
    killed = subprocess.run([sys.executable, "-m", "distill", *args, *sets, "-q",
                             "--name", "killed"], capture_output=True, text=True,
                            env={**os.environ, KILL_AFTER_SAVE_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    sweep = tmp_path / "killed"
    first, second = sweep / "T2-a0.5-s0", sweep / "T4-a0.5-s0"
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    before = (second / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in before] == [1]
    kept = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = subprocess.run([sys.executable, "-m", "distill", *args, *sets, "--name", "killed"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "T2-a0.5-s0: finished, kept" in again.stderr
    assert re.search(r"\[1/1\] T4-a0.5-s0: val", again.stderr), again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == kept
    after = (second / "metrics.jsonl").read_text().splitlines()
    assert after[0] == before[0]  # epoch 1's record (its timing too) kept, not trained again
    assert [json.loads(line)["epoch"] for line in after] == [1, 2, 3]
    resumes = json.loads((second / "summary.json").read_text())["resumes"]
    assert [(r["epoch"], r["step"]) for r in resumes] == [(1, json.loads(before[0])["step"])]
    for cell in ("T2-a0.5-s0", "T4-a0.5-s0"):
        assert close(tmp_path / "whole" / cell, sweep / cell, atol=0.0)
    assert [r["run"] for r in read_results(sweep)] == ["T2-a0.5-s0", "T4-a0.5-s0"]


def test_the_sweep_table_goes_to_wandb(tmp_path, teacher, monkeypatch) -> None:
    """In offline mode the sweep's own wandb run holds the results table, row for row."""
    from test_tracking import _key, finished_wandb_records

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = api.sweep(overrides={**STUDENT, "student.epochs": 1, "output_dir": str(tmp_path),
                                  "student.teacher": str(teacher)},
                       Ts=[2.0, 4.0], alphas=[0.5], seeds=[0], name="w", quiet=True,
                       wandb="offline")
    (run_file,) = (tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_wandb_records(run_file)
    run = next(r for r in records if r.WhichOneof("record_type") == "run").run
    assert run.job_type == "sweep" and run.run_group == "w"
    logged = {_key(i): json.loads(i.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for i in r.history.item}
    assert logged["results/_type"] == "table-file"
    assert logged["results/nrows"] == 2 and logged["results/ncols"] == 8
    (table_file,) = (tmp_path / "w" / "wandb").glob(
        f"offline-run-*/files/{logged['results/path']}")
    content = json.loads(table_file.read_text())
    assert content["columns"] == ["T", "alpha", "seed", "val_accuracy", "best_val_accuracy",
                                  "test_accuracy", "wall_seconds", "run"]
    assert [row[-1] for row in content["data"]] == [r["run"] for r in result.rows]
    assert [row[5] for row in content["data"]] == [r["test_accuracy"] for r in result.rows]


@pytest.mark.parametrize("every", [None, 8])
def test_a_killed_batched_chunk_continues_from_its_checkpoint(tmp_path, teacher, every) -> None:
    """SIGKILL right after the chunk's first checkpoint: at the end of epoch 1, or with
    --checkpoint-every 8 after batch 8 of epoch 1's 21 (then, resumed with
    --checkpoint-every 5, killed again after batch 10); the last re-run resumes the chunk
    there and ends with the same weights and metrics (epoch 1's loss included) as a sweep
    never stopped and never checkpointed inside an epoch."""
    import os
    import signal
    import subprocess
    import sys

    from distill.checkpoint import KILL_AFTER_SAVE_ENV, load_checkpoint, save_atomic

    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--wandb", "disabled"]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]
    every_args = ["--checkpoint-every", str(every)] if every else []
    whole = runner.invoke(app, [*args, "-q", *sets, "--output-dir", str(tmp_path),
                                "--name", "whole"])
    assert whole.exit_code == 0, whole.output
    killed = subprocess.run([sys.executable, "-m", "distill", *args, "-q", *sets, *every_args,
                             "--output-dir", str(tmp_path), "--name", "killed"],
                            capture_output=True, text=True,
                            env={**os.environ, KILL_AFTER_SAVE_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (chunk,) = (tmp_path / "killed").glob("chunk-*.pt")
    saved = load_checkpoint(chunk)
    assert (saved["epoch"], saved["batch_in_epoch"]) == ((0, 8) if every else (1, 0))
    assert 0 < saved["wall_seconds"] < 600  # the killed segment's time, carried on
    save_atomic({**saved, "wall_seconds": 1000.0}, chunk)  # unmistakable in the sum
    log = tmp_path / "killed" / "T2-a0.5-s0" / "metrics.jsonl"
    logged = log.read_text() if log.is_file() else ""
    assert len(logged.splitlines()) == (0 if every else 1)  # epoch 1 logged before the kill?
    resumed_at = "resuming in epoch 1 after batch 8" if every else "resuming after epoch 1"
    if every:  # resumed mid-epoch, it checkpoints inside the epoch again (step 10, every 5;
        # not a Lookahead sync step, la_k 4) and is killed there a second time
        twice = subprocess.run([sys.executable, "-m", "distill", *args, *sets,
                                "--checkpoint-every", "5", "--output-dir", str(tmp_path),
                                "--name", "killed"], capture_output=True, text=True,
                               env={**os.environ, KILL_AFTER_SAVE_ENV: "1"})
        assert twice.returncode == -signal.SIGKILL, twice.stderr
        assert resumed_at in " ".join(twice.stderr.split())
        saved = load_checkpoint(chunk)
        assert (saved["epoch"], saved["batch_in_epoch"], saved["seen"]) == (0, 10, 640)
        resumed_at = "resuming in epoch 1 after batch 10"
    again = runner.invoke(app, [*args, *sets, "--output-dir", str(tmp_path), "--name", "killed"])
    assert again.exit_code == 0, again.output
    assert resumed_at in " ".join(again.output.split())
    after = (tmp_path / "killed" / "T2-a0.5-s0" / "metrics.jsonl").read_text().splitlines()
    assert len(after) == 3
    if not every:  # resumed, not retrained: epoch 1's record (timing fields too) is as before
        assert after[0] == logged.splitlines()[0]
    assert not list((tmp_path / "killed").glob("chunk-*.pt"))
    for cell in ("T2-a0.5-s0", "T4-a0.5-s0"):  # the chunk's wall, shared by its 2 students
        assert 500.0 < json.loads((tmp_path / "killed" / cell / "summary.json").read_text()
                                  )["wall_seconds"] < 800.0
        assert close(tmp_path / "whole" / cell, tmp_path / "killed" / cell, atol=0.0)
        strip = lambda run: [{k: v for k, v in json.loads(x).items()  # noqa: E731
                              if k not in ("epoch_seconds", "images_per_second")}
                             for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert strip(tmp_path / "whole" / cell) == strip(tmp_path / "killed" / cell)


def test_a_diverging_chunk_stops_before_its_checkpoint_and_names_its_students(tmp_path,
                                                                            teacher) -> None:
    """lr 1e12: the students' loss is not finite by step 3, where --checkpoint-every 3 would
    save; the chunk stops with the students named (they share the seed) and writes no
    checkpoint: a re-run never resumes diverged students."""
    result = runner.invoke(app, [
        "sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
        "--mode", "batched", "--wandb", "disabled", "--output-dir", str(tmp_path), "--name",
        "nan", "--epochs", "1", "--checkpoint-every", "3", "--set", "student.optim.name=sgd",
        "--set", "student.optim.lr=1e12", "--set", "student.model.hidden_sizes=[16]"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: non-finite loss in epoch 1 for the student(s) with seed 0, T 2, alpha 0.5; "
        "seed 0, T 4, alpha 0.5; lower the learning rate (optim.lr) or add grad clipping "
        "(optim.grad_clip)")
    assert not list((tmp_path / "nan").glob("chunk-*.pt"))


@pytest.mark.parametrize("augmented", [True, False])
def test_auto_mode_loops_large_students_on_a_cpu_only_to_share_the_teacher(
        tmp_path, teacher, augmented) -> None:
    """190K-parameter students on a CPU. With augmented data the teacher runs on every batch:
    auto batches them looped (one after another on slices of the stacked tensors, one
    teacher forward per batch) and says so, and each cell is the student trained alone.
    Unaugmented, the teacher's logits come from the cache, nothing is shared, and auto
    trains them one by one and says why."""
    big = {**STUDENT, "student.model.hidden_sizes": [400, 400], "student.epochs": 1,
           "output_dir": str(tmp_path), "student.teacher": str(teacher), "device": "cpu",
           **({"student.augment.jitter": 1} if augmented else {})}
    result = runner.invoke(app, ["sweep", "--T", "2,4", "--alpha", "0.5", "--name", "auto",
                                 "--device", "cpu",
                                 *[f"--set={k}={json.dumps(v)}" for k, v in big.items()],
                                 "--wandb", "disabled"])
    assert result.exit_code == 0, result.output
    err = " ".join(result.stderr.split())
    mode = json.loads((tmp_path / "auto" / "sweep.json").read_text())["mode"]
    if augmented:
        assert ("chunk 1: 2 students batched (looped, one teacher forward per batch) "
                "(T2-a0.5-s0, T4-a0.5-s0)") in err
        assert mode == "batched"
    else:
        assert ("sweep: sequential mode, because on a CPU students of 190,410 parameters gain "
                "from batching only by sharing the teacher's forward, and its logits come "
                "from the cache (--mode batched forces it)") in err
        assert mode == "sequential"
    for T in (2.0, 4.0):
        single = alone(tmp_path, teacher, T, 0.5, 0, {k: v for k, v in big.items()
                                                      if k.startswith("student.")})
        assert close(tmp_path / "auto" / f"T{T:g}-a0.5-s0", single)


HOLD_CLAIMS = """
import sys, time
from pathlib import Path
from distill.checkpoint import take_lock
locks = [take_lock(Path(p)) for p in sys.argv[1:]]
print("held" if all(locks) else "not held", flush=True)
sys.stdin.read()  # until the test closes the pipe or kills this process, however slow
"""


@contextmanager
def claims_held(sweep: Path, *cells: str) -> Iterator[None]:
    """While the block runs, a live process holds the claims of ``cells``, as a second
    sweep training them would."""
    sweep.mkdir(parents=True, exist_ok=True)
    with locks_held(*[sweep / f".claim-{c}" for c in cells]):
        yield


@contextmanager
def locks_held(*paths: Path) -> Iterator[None]:
    """While the block runs, a live process holds the locks ``paths``."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIMS, *map(str, paths)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(("mode", "holder"), [
    ("sequential", "claim"), ("batched", "claim"),  # another sweep process
    ("sequential", "run lock"),  # e.g. distill student --resume on the cell's folder
])
def test_a_cell_claimed_by_another_process_is_left_to_it(tmp_path, teacher, mode,
                                                         holder) -> None:
    """Another process holds one cell (its claim, or the lock of its folder) and has just
    created its folder (no checkpoint yet): the sweep trains the other cells, leaves that
    folder alone and says so; once the other process is gone, the same command trains it."""
    sweep = tmp_path / "shared"
    started = sweep / "T4-a0.9-s0"
    started.mkdir(parents=True)
    (started / "metrics.jsonl").write_text("")  # the other process's run, just begun
    args = ["sweep", "--T", "4", "--alpha", "0,0.5,0.9", "--seeds", "0", "--teacher",
            str(teacher), "--mode", mode, "--output-dir", str(tmp_path), "--name", "shared",
            "--wandb", "disabled", *[f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]]
    held = (claims_held(sweep, "T4-a0.9-s0") if holder == "claim"
            else locks_held(started / ".lock"))
    with held:
        first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    err = " ".join(first.stderr.split())
    assert ("T4-a0.9-s0: another process is training it; left to it" if holder == "claim" else
            "T4-a0.9-s0: a process outside this sweep trains in its folder; left to it") in err
    assert ("sweep: 1 of 3 students are still training in another process; the table shows "
            f"the finished ones (run the same command again, or distill report {sweep}, once "
            "they end)") in err
    assert "shared: 2 of 3 students" in " ".join(first.stdout.split())
    assert (started / "metrics.jsonl").read_text() == ""  # not removed, not written to
    assert [r["run"] for r in read_results(sweep)] == ["T4-a0-s0", "T4-a0.5-s0"]
    if mode == "batched":  # the other two still share one chunk
        assert "chunk 1: 2 students batched (T4-a0-s0, T4-a0.5-s0)" in err
        logs = [[json.loads(x) for x in (sweep / c / "metrics.jsonl").read_text().splitlines()]
                for c in ("T4-a0-s0", "T4-a0.5-s0")]
        for e in range(STUDENT["student.epochs"]):  # a progress line per epoch, from the logs
            loss = sorted(log[e]["train_loss"] for log in logs)
            acc = [100 * log[e]["val_accuracy"] for log in logs]
            lead = ", ".join(n for n, a in zip(("T4-a0-s0", "T4-a0.5-s0"), acc)
                             if a == max(acc))  # both, when tied
            assert (f"chunk 1: epoch {e + 1}/{STUDENT['student.epochs']} in "
                    f"{logs[0][e]['epoch_seconds']:.0f} s, train loss {loss[0]:.4f}-"
                    f"{loss[1]:.4f}, val accuracy {min(acc):.2f}-{max(acc):.2f}% "
                    f"(highest: {lead})") in err
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "left to it" not in second.stderr
    assert [r["run"] for r in read_results(sweep)] == ["T4-a0-s0", "T4-a0.5-s0", "T4-a0.9-s0"]
    assert len((started / "metrics.jsonl").read_text().splitlines()) == STUDENT["student.epochs"]
    assert close(started, alone(tmp_path, teacher, 4.0, 0.9, 0))


def test_a_batched_chunk_shows_a_progress_bar_on_a_terminal(tmp_path, teacher, monkeypatch
                                                            ) -> None:
    """On a terminal a chunk's epoch shows a bar (batches of 21, mean loss, student-images/s),
    as a single run's does; in a log file (no terminal) only the per-epoch lines appear."""
    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--wandb", "disabled", "--output-dir", str(tmp_path),
            *[f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]]
    plain = runner.invoke(app, [*args, "--name", "plain"])
    assert plain.exit_code == 0, plain.output
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "160")
    shown = runner.invoke(app, [*args, "--name", "shown"])
    assert shown.exit_code == 0, shown.output
    for out, bar in ((plain.stderr, False), (shown.stderr, True)):
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # colours and cursor moves
        assert "chunk 1: epoch 3/3 in " in out
        for e in (1, 2, 3):  # the bar of each epoch: batches of 21, mean loss, speed
            assert (re.search(rf"epoch {e}/3 .*\d+/21 .*loss \d+\.\d{{4}} .*img/s", out)
                    is not None) == bar


def test_an_interrupted_chunk_continues_whole_or_not_at_all(tmp_path, teacher) -> None:
    """One cell of an interrupted batched chunk is claimed elsewhere: the chunk waits for a
    later run rather than continuing without it (its cells share one checkpoint)."""
    import os
    import signal
    import subprocess
    import sys

    from distill.checkpoint import KILL_AFTER_SAVE_ENV

    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--wandb", "disabled", "--output-dir", str(tmp_path),
            "--name", "cut", *[f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]]
    killed = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                            text=True, env={**os.environ, KILL_AFTER_SAVE_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (chunk,) = (tmp_path / "cut").glob("chunk-*.pt")
    with claims_held(tmp_path / "cut", "T4-a0.5-s0"):
        waiting = runner.invoke(app, args)
    assert waiting.exit_code == 0, waiting.output
    assert "students batched" not in waiting.stderr and chunk.is_file()
    assert not (tmp_path / "cut" / "T2-a0.5-s0" / "summary.json").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "chunk 1: 2 students batched (T2-a0.5-s0, T4-a0.5-s0), resuming after epoch 1" in (
        " ".join(again.stderr.split()))
    assert len(read_results(tmp_path / "cut")) == 2 and not chunk.exists()


def test_two_processes_running_one_sweep_share_its_cells(tmp_path, teacher) -> None:
    """A real second sweep process, stopped (SIGSTOP) while it trains a cell: this process
    trains every other cell and leaves that one; resumed, the other finishes its cell and
    finds the rest done. Every cell is trained exactly once and the last table is whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distill.checkpoint import take_lock

    epochs = 6
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**STUDENT, "student.epochs": epochs}.items()]
    args = ["sweep", "--T", "2,4", "--alpha", "0.5,0.9", "--seeds", "0", "--teacher",
            str(teacher), "--mode", "sequential", "--output-dir", str(tmp_path), "--name",
            "both", "--wandb", "disabled", *sets]
    sweep = tmp_path / "both"
    other = subprocess.Popen([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    held = None
    try:
        deadline = time.monotonic() + 120
        while held is None and other.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            os.kill(other.pid, signal.SIGSTOP)  # the claims cannot change while we look
            for claim in sweep.glob(".claim-*"):
                lock = take_lock(claim)
                if lock is None:
                    held = claim.name.removeprefix(".claim-")
                else:
                    lock.release()
            results = take_lock(sweep / ".results.lock") if held else None
            if held and results is None:  # stopped while writing results.csv, it would hang
                held = None  # this process's own write: let it go on
            elif results is not None:
                results.release()
            if held is None:
                os.kill(other.pid, signal.SIGCONT)
        assert held is not None, "the other sweep never held a cell"
        mine = runner.invoke(app, args)
    finally:
        if other.poll() is None:
            os.kill(other.pid, signal.SIGCONT)
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err
    assert mine.exit_code == 0, mine.output
    trained_here = {line.split()[1].rstrip(":") for line in mine.stderr.splitlines()
                    if line.strip().startswith("[")}
    trained_there = {line.split()[1].rstrip(":") for line in err.splitlines()
                     if line.strip().startswith("[")}
    cells = {"T2-a0.5-s0", "T2-a0.9-s0", "T4-a0.5-s0", "T4-a0.9-s0"}
    assert f"{held}: another process is training it; left to it" in mine.stderr
    assert held in trained_there and held not in trained_here
    assert trained_here | trained_there == cells and not trained_here & trained_there
    for cell in cells:  # trained once: one record per epoch, one summary
        assert len((sweep / cell / "metrics.jsonl").read_text().splitlines()) == epochs
    assert len(read_results(sweep)) == 4
    assert "both: 4 students" in " ".join(out.split())  # the last to end shows the whole grid


def test_an_interrupted_chunk_is_claimed_in_order_and_stops_at_the_first_cell_held_elsewhere(
        tmp_path) -> None:
    """Of processes continuing the same chunk, the one holding its first cell gets all of
    it: a process that meets a held cell gives back what it took and takes no more."""
    from rich.console import Console

    from distill.checkpoint import take_lock
    from distill.sweep import Cell, claimed

    cells = [Cell(2.0, 0.5, 0), Cell(4.0, 0.5, 0), Cell(8.0, 0.5, 0)]
    with claims_held(tmp_path, cells[1].name):
        with claimed(tmp_path, cells, Console(quiet=True), chunk=True) as mine:
            assert mine == []
            for free in (cells[0], cells[2]):  # given back, and never taken
                lock = take_lock(tmp_path / f".claim-{free.name}")
                assert lock is not None
                lock.release()
        with claimed(tmp_path, [cells[0], cells[2]], Console(quiet=True), chunk=True) as mine:
            assert mine == [cells[0], cells[2]]


def test_a_chunk_file_removed_by_another_process_while_listed_is_skipped(tmp_path,
                                                                         monkeypatch) -> None:
    import distill.sweep as sw
    from distill.checkpoint import FORMAT_VERSION, save_atomic

    real = sw.load_checkpoint
    for name in ("chunk-a.pt", "chunk-b.pt"):
        save_atomic({"format": FORMAT_VERSION, "cells": [name]}, tmp_path / name)

    def finished_meanwhile(path, **options):
        if path.name == "chunk-a.pt":
            path.unlink()  # the other process's chunk ended between glob and read
        return real(path, **options)

    monkeypatch.setattr(sw, "load_checkpoint", finished_meanwhile)
    assert sw.saved_chunks(tmp_path) == {tmp_path / "chunk-b.pt": ["chunk-b.pt"]}


def chunk_killed_after_its_last_epoch(out: Path, teacher: Path, name: str) -> list[str]:
    """A batched 2-student sweep ``out/name`` SIGKILLed right after its chunk saved its last
    epoch, before any cell was finished; returns the sweep's CLI arguments."""
    import os
    import signal
    import subprocess
    import sys

    from distill.checkpoint import KILL_AFTER_SAVE_ENV

    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--wandb", "disabled", "-q", "--output-dir", str(out),
            "--name", name, *[f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]]
    killed = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                            text=True, env={**os.environ,
                                            KILL_AFTER_SAVE_ENV: str(STUDENT["student.epochs"])})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return args


def test_a_chunk_stopped_while_finishing_its_cells_finishes_the_rest_from_its_checkpoint(
        tmp_path, teacher) -> None:
    """Killed after the chunk's last epoch, between two cells' final files: the re-run takes
    the chunk whole from its checkpoint, finishes the cell left and keeps the finished one
    as it was (before, the left cell went to a new chunk, which refused its folder)."""
    import shutil

    args = chunk_killed_after_its_last_epoch(tmp_path, teacher, "cut")
    sweep = tmp_path / "cut"
    (chunk,) = sweep.glob("chunk-*.pt")
    kept = tmp_path / "chunk.pt"
    shutil.copy(chunk, kept)
    whole = runner.invoke(app, args)  # finishes both cells from the chunk
    assert whole.exit_code == 0, whole.output
    shutil.copy(kept, chunk)  # as if killed after the first cell's files, before the second's
    for name in ("summary.json", "model.safetensors"):
        (sweep / "T4-a0.5-s0" / name).unlink()
    first = {p.name: p.stat().st_mtime_ns for p in (sweep / "T2-a0.5-s0").iterdir()}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (sweep / "T4-a0.5-s0" / "summary.json").is_file() and not chunk.exists()
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "T2-a0.5-s0").iterdir()} == first
    assert len(read_results(sweep)) == 2


def test_a_chunk_finished_by_another_process_after_this_one_listed_it_is_left_finished(
        tmp_path, teacher, monkeypatch) -> None:
    """This process lists an interrupted chunk; before it claims it, another process
    finishes the chunk and removes its checkpoint. The claim then finds the cells finished:
    their folders (which hold no checkpoint of their own) stay as they are and nothing is
    trained again (before, they were removed as stale and the chunk was trained afresh)."""
    import subprocess
    import sys

    import distill.batched as batched

    args = chunk_killed_after_its_last_epoch(tmp_path, teacher, "race")
    epochs = str(STUDENT["student.epochs"])
    sweep = tmp_path / "race"
    assert list(sweep.glob("chunk-*.pt"))
    real_claimed, files = batched.claimed, {}

    def peer_finishes_first(sweep_dir, cells, console, chunk=False):
        if chunk and not files:  # between this process's listing and its claim
            peer = subprocess.run([sys.executable, "-m", "distill", *args],
                                  capture_output=True, text=True)
            assert peer.returncode == 0, peer.stderr
            files.update({p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()})
        return real_claimed(sweep_dir, cells, console, chunk=chunk)

    monkeypatch.setattr(batched, "claimed", peer_finishes_first)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert files, "the interrupted chunk was not claimed"
    for cell in ("T2-a0.5-s0", "T4-a0.5-s0"):
        assert (sweep / cell / "summary.json").is_file()
        metrics = sweep / cell / "metrics.jsonl"
        assert len(metrics.read_text().splitlines()) == int(epochs)
        assert metrics.stat().st_mtime_ns == files[metrics]  # not trained again
    assert len(read_results(sweep)) == 2


def test_a_cell_another_process_started_alone_is_not_held_while_this_chunk_trains(
        tmp_path, teacher, monkeypatch) -> None:
    """Between this process's listing and its claim of a fresh chunk, another process starts
    one of the chunk's cells alone and is stopped after its first checkpoint. That cell
    leaves the chunk to be resumed alone, and its claim is given back before the chunk
    trains, so a third process could resume it meanwhile (before, this process held it for
    the whole chunk); here nobody does, so this process resumes it after the chunk."""
    import os
    import signal
    import subprocess
    import sys

    import distill.batched as batched
    from distill.checkpoint import KILL_AFTER_SAVE_ENV, LAST, take_lock

    sweep, cell = tmp_path / "freed", "T4-a0.5-s0"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in STUDENT.items()]
    args = ["sweep", "--T", "2,4", "--alpha", "0.5", "--seeds", "0", "--teacher", str(teacher),
            "--mode", "batched", "--wandb", "disabled", "--output-dir", str(tmp_path),
            "--name", "freed", *sets]
    peer = ["student", "--T", "4", "--alpha", "0.5", "--seed", "0", "--teacher", str(teacher),
            "--wandb", "disabled", "-q", "--output-dir", str(sweep), "--name", cell, *sets]
    real_claimed, real_chunk, held = batched.claimed, batched._train_chunk, []

    def peer_starts_it_first(sweep_dir, cells, console, chunk=False):
        if not chunk and not (sweep / cell).exists():
            stopped = subprocess.run([sys.executable, "-m", "distill", *peer],
                                     capture_output=True, text=True,
                                     env={**os.environ, KILL_AFTER_SAVE_ENV: "1"})
            assert stopped.returncode == -signal.SIGKILL, stopped.stderr
            assert (sweep / cell / LAST).is_file()
        return real_claimed(sweep_dir, cells, console, chunk=chunk)

    def chunk_checks_the_claim(base, common, chunk, *rest, **kw):
        lock = take_lock(sweep / f".claim-{cell}")
        held.append(([c.name for c in chunk], lock is None))
        if lock is not None:
            lock.release()
        return real_chunk(base, common, chunk, *rest, **kw)

    monkeypatch.setattr(batched, "claimed", peer_starts_it_first)
    monkeypatch.setattr(batched, "_train_chunk", chunk_checks_the_claim)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert held == [(["T2-a0.5-s0"], False)]  # the chunk without the cell, its claim free
    assert [r["run"] for r in read_results(sweep)] == ["T2-a0.5-s0", cell]
    metrics = (sweep / cell / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in metrics] == [1, 2, 3]  # resumed, not restarted


def test_a_results_write_waiting_on_a_stopped_peer_says_so_then_goes_on(tmp_path) -> None:
    """results.csv is rewritten under a lock; a peer that holds it for long (stopped while
    writing) makes the wait say so once, and the write goes ahead when the peer lets go."""
    import io
    import threading
    import time

    from rich.console import Console

    from distill.sweep import results_lock

    out, done = io.StringIO(), threading.Event()

    def write() -> None:
        with results_lock(tmp_path, Console(file=out, width=200), patience=0.2):
            done.set()

    with locks_held(tmp_path / ".results.lock"):
        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 60
        while "waiting" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not done.is_set()
    writer.join(60)
    assert done.is_set()
    assert out.getvalue() == (f"sweep: waiting for another process to finish writing "
                              f"{tmp_path / 'results.csv'} (is one stopped?)\n")
