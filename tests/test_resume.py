"""Runs that survive: SIGKILL after a checkpoint and resume equals a run never stopped.

A real training subprocess is killed (SIGKILL, by a test hook right after its N-th
checkpoint save, or between writing the temporary file and renaming it), then resumed;
its final weights, optimizer state and metrics must equal an uninterrupted run's, bitwise
on the CPU. Negative controls resume while skipping the random generators or the data
order and must find a difference, so the comparison can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_data import fake_mnist, image_folder
from typer.testing import CliRunner

import distill.api as api
from distill.checkpoint import (BEST, KILL_AFTER_SAVE_ENV, KILL_IN_SAVE_ENV, LAST,
                                RESUME_SKIP_ENV, load_checkpoint, save_atomic)
from distill.cli import app
from distill.data import load_data
from distill.errors import DistillError
from distill.recipe import DataConfig

# 2 epochs of 21 batches; a checkpoint every 5 steps and at each epoch end:
# saves 1-4 at steps 5, 10, 15, 20; save 5 at the end of epoch 1 (step 21); ...; save 10 last.
FLAGS = ["--epochs", "2", "--checkpoint-every", "5", "--set", "teacher.optim.name=lookahead_adam",
         "--set", "teacher.optim.la_k=3", "--set", "teacher.optim.schedule=cosine",
         "--wandb", "disabled", "-q"]
TIMING = {"epoch_seconds", "images_per_second"}


def train(out: Path, name: str, env: dict[str, str] | None = None, *more: str
          ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distill", "teach", "--output-dir", str(out), "--name", name,
           *FLAGS, *more]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def resume(run: Path, **env: str) -> None:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        api.teach(resume=run, quiet=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def weights(run: Path, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / file))


def optimizer_tensors(run: Path) -> list[torch.Tensor]:
    opt = load_checkpoint(run / LAST)["state"]["optimizer"]
    flat = [t for state in opt["base"]["state"].values() for t in state.values()
            if isinstance(t, torch.Tensor)]
    return flat + [t for group in opt["slow"] for t in group]


def assert_same_run(a: Path, b: Path, optimizer: bool = True) -> None:
    """Final and best weights, metrics and (unless ``optimizer`` is False: ``a``'s last
    checkpoint is older than its end) the last checkpoint's optimizer state, all equal."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    ba, bb = weights(a, "best.safetensors"), weights(b, "best.safetensors")
    assert all(torch.equal(ba[k], bb[k]) for k in ba), "best weights differ"
    if optimizer:
        oa, ob = optimizer_tensors(a), optimizer_tensors(b)
        assert len(oa) == len(ob) and all(torch.equal(x, y) for x, y in zip(oa, ob))
    assert metrics(a) == metrics(b)
    assert [r["epoch"] for r in metrics(a)] == [1, 2]
    best = [json.loads((run / "summary.json").read_text())["best_on_val"] for run in (a, b)]
    assert best[0] == best[1] and best[0]["epoch"] in (1, 2)  # the bookkeeping, not only weights


def runs_differ(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = train(out, "whole")
    assert result.returncode == 0, result.stderr
    return out / "whole"


@pytest.fixture(scope="module")
def killed_mid_epoch(tmp_path_factory) -> Path:
    """A run killed right after its 3rd save (step 15, mid-epoch 1)."""
    out = tmp_path_factory.mktemp("mid")
    result = train(out, "killed", {KILL_AFTER_SAVE_ENV: "3"})
    assert result.returncode == -signal.SIGKILL
    return out / "killed"


@pytest.mark.parametrize("save, where", [(1, "first save"), (5, "just after an epoch boundary"),
                                         (10, "the last save")])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference, save, where
                                                          ) -> None:
    result = train(tmp_path, "killed", {KILL_AFTER_SAVE_ENV: str(save)})
    assert result.returncode == -signal.SIGKILL, (where, result.stderr)
    run = tmp_path / "killed"
    assert not (run / "summary.json").exists()
    resume(run)
    assert_same_run(run, reference)
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["resumes"]) == 1


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path, reference, killed_mid_epoch
                                                      ) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    assert load_checkpoint(run / LAST)["state"]["batch_in_epoch"] == 15
    resume(run)
    assert_same_run(run, reference)


def test_a_resumed_run_reports_the_wall_time_of_every_segment(tmp_path, killed_mid_epoch
                                                               ) -> None:
    """The summary's wall time is the whole run's, not the last segment's: the checkpoint
    carries the time so far (set to 1000 s here so the sum is unmistakable)."""
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    checkpoint = load_checkpoint(run / LAST)
    assert 0 < checkpoint["wall_seconds"] < 600  # the killed segment's own time
    save_atomic({**checkpoint, "wall_seconds": 1000.0}, run / LAST)
    resume(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"][0]["wall_seconds_before"] == 1000.0
    assert 1000.0 < summary["wall_seconds"] < 1600.0


@pytest.mark.parametrize("skip", ["rng", "data_order"])
def test_control_a_resume_that_skips_restoring_state_differs(tmp_path, reference,
                                                             killed_mid_epoch, skip) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    resume(run, **{RESUME_SKIP_ENV: skip})
    assert runs_differ(run, reference)


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference) -> None:
    result = train(tmp_path, "killed", {KILL_IN_SAVE_ENV: "3"})
    assert result.returncode == -signal.SIGKILL
    run = tmp_path / "killed"
    assert (run / (LAST + ".tmp")).is_file()  # the interrupted write
    previous = load_checkpoint(run / LAST)  # the one before it still loads
    assert previous["state"]["step"] == 10
    # a leftover that no later save of this run writes over: only the start's clean-up
    # removes it (the interrupted checkpoint-last.pt.tmp is replaced by the next save anyway)
    (run / "best.safetensors.tmp").write_bytes(b"cut short")
    resume(run)
    assert not list(run.glob("*.tmp"))  # cleaned up at the next start
    assert_same_run(run, reference)


def test_kill_in_the_epoch_end_save_drops_the_epoch_logged_before_it(tmp_path, reference
                                                                     ) -> None:
    # An epoch's record is written before its checkpoint: a kill in that checkpoint's write
    # leaves a record newer than the last checkpoint, which the resume must drop, not repeat.
    result = train(tmp_path, "killed", {KILL_IN_SAVE_ENV: "5"})  # save 5: end of epoch 1
    assert result.returncode == -signal.SIGKILL
    run = tmp_path / "killed"
    assert [r["epoch"] for r in metrics(run)] == [1]  # logged, its checkpoint cut short
    assert load_checkpoint(run / LAST)["state"]["step"] == 20  # save 4, mid-epoch
    resume(run)
    assert [r["epoch"] for r in metrics(run)] == [1, 2]  # epoch 1 once, not twice
    assert_same_run(run, reference)


def test_without_epoch_end_checkpoints_a_run_resumes_from_its_step_ones(tmp_path, reference
                                                                        ) -> None:
    # checkpoint.every_epoch false: saves at steps 5, 10, 15, 20, then 25 (epoch 2), none at
    # step 21, the end of epoch 1; the resume starts in epoch 2 with epoch 1's record kept.
    result = train(tmp_path, "killed", {KILL_AFTER_SAVE_ENV: "5"},
                   "--set", "checkpoint.every_epoch=false")
    assert result.returncode == -signal.SIGKILL, result.stderr
    run = tmp_path / "killed"
    saved = load_checkpoint(run / LAST)
    assert (saved["where"], saved["state"]["step"]) == ("step", 25)
    assert not (run / BEST).exists()  # copied only at an epoch-end save
    resume(run)
    # its last checkpoint stays at step 40 (no save at the end): the optimizer is not compared
    assert load_checkpoint(run / LAST)["state"]["step"] == 40
    assert_same_run(run, reference, optimizer=False)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('pwned')",))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path, killed_mid_epoch, monkeypatch
                                                     ) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    payload = load_checkpoint(run / LAST)
    payload["rng"] = _RunsCode()
    torch.save(payload, run / LAST)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistillError, match="the checkpoint cannot be loaded safely"):
        api.teach(resume=run, quiet=True)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- bad input

runner = CliRunner()


def user_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    return result.stderr.strip()


def test_resume_errors(tmp_path, reference, killed_mid_epoch) -> None:
    assert user_error("teach", "--resume", str(tmp_path / "nope")) == (
        f"error: --resume {tmp_path / 'nope'}: no such run folder")
    assert user_error("teach", "--resume", str(reference)) == (
        f"error: --resume {reference}: the run is finished (summary.json exists); nothing to "
        f"resume")
    empty = tmp_path / "empty"
    shutil.copytree(killed_mid_epoch, empty)
    (empty / LAST).unlink()
    assert user_error("teach", "--resume", str(empty)) == (
        f"error: --resume {empty}: no checkpoint ({LAST}) in it; nothing to resume")
    (empty / LAST).write_bytes(b"")
    assert user_error("teach", "--resume", str(empty)) == (
        f"error: {empty / LAST}: the checkpoint is empty (a save was interrupted?); nothing "
        f"to resume from it")
    truncated = tmp_path / "truncated"
    shutil.copytree(killed_mid_epoch, truncated)
    data = (truncated / LAST).read_bytes()
    (truncated / LAST).write_bytes(data[: len(data) // 2])
    message = user_error("teach", "--resume", str(truncated))
    assert message.startswith(f"error: {truncated / LAST}: the checkpoint cannot be loaded "
                              f"safely (truncated, corrupted, or it needs arbitrary code): ")
    assert user_error("student", "--resume", str(killed_mid_epoch), "--wandb", "disabled") == (
        f"error: --resume {killed_mid_epoch}: a teacher run; resume it with `distill teach "
        f"--resume {killed_mid_epoch}`")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from distill.checkpoint import lock_run
lock = lock_run(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_still_training_is_not_resumed_beside_itself(tmp_path, reference,
                                                          killed_mid_epoch) -> None:
    """Another live process holding the run folder (as a training does) makes --resume
    refuse; once that process is gone, however it ended, the resume goes ahead."""
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)  # its own process was SIGKILLed: no lock left
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert user_error("teach", "--resume", str(run)) == (
            f"error: {run}: a process is still training in this run folder; wait for it or "
            f"stop it before resuming")
        assert not (run / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    resume(run)
    assert_same_run(run, reference)


def test_a_new_run_folder_is_locked_before_anything_is_written_in_it(tmp_path,
                                                                      monkeypatch) -> None:
    """From the moment it exists, a new run's folder reads as busy to others (a folder with
    neither lock nor checkpoint is a run stopped early, which scripts and sweeps clear)."""
    from distill.checkpoint import LOCK, take_lock

    real, seen = api.environment, []

    def environment_checked(*args, **kwargs):  # runs right after the folder is made
        (run,) = (tmp_path / "out").iterdir()
        seen.append(take_lock(run / LOCK))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "environment", environment_checked)
    api.teach(None, {"output_dir": str(tmp_path / "out"), "teacher.epochs": 1}, name="t",
              quiet=True, wandb="disabled")
    assert seen == [None]  # held by the run itself
    lock = take_lock(tmp_path / "out" / "t" / LOCK)
    assert lock is not None  # and free once it ended
    lock.release()


def test_resume_with_a_changed_recipe_is_refused_unless_allowed(tmp_path, killed_mid_epoch
                                                                ) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    # checkpointing changes no result: another --checkpoint-every is not a change
    assert user_error("teach", "--resume", str(run), "--epochs", "3", "--lr", "0.01",
                      "--checkpoint-every", "7") == (
        f"error: --resume {run}: the recipe differs from the run's: teacher.epochs: 2 -> 3; "
        f"teacher.optim.lr: 0.001 -> 0.01; pass --allow-changes to resume with it anyway")
    result = runner.invoke(app, ["teach", "--resume", str(run), "--epochs", "3",
                                 "--allow-changes", "--wandb", "disabled", "-q"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]


def test_an_allowed_change_stopped_before_its_first_checkpoint_is_not_lost(
        tmp_path, killed_mid_epoch) -> None:
    """A resume with --allow-changes rewrites recipe.yaml as it starts. Stopped before its
    first checkpoint, it leaves a recipe.yaml that no longer is the checkpoint's: the next
    resume compares with the checkpoint's own recipe, so the change is neither taken
    silently nor missing from the run's record of resumes."""
    from distill.recipe import dump_recipe, load_recipe

    run = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, run)
    dump_recipe(load_recipe(run / "recipe.yaml", {"teacher.epochs": 3}), run / "recipe.yaml")
    assert user_error("teach", "--resume", str(run)) == (
        f"error: --resume {run}: the recipe differs from the run's: teacher.epochs: 2 -> 3; "
        f"pass --allow-changes to resume with it anyway")
    result = runner.invoke(app, ["teach", "--resume", str(run), "--allow-changes", "--wandb",
                                 "disabled", "-q"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    resumes = json.loads((run / "summary.json").read_text())["resumes"]
    assert resumes[-1]["changes"] == ["teacher.epochs: 2 -> 3"]


@pytest.mark.parametrize(("settings", "advice"), [
    ([], "lower the learning rate (optim.lr) or add grad clipping (optim.grad_clip)"),
    (["amp=true"], "lower the learning rate (optim.lr), add grad clipping (optim.grad_clip) "
                   "or turn mixed precision off (amp: false)"),
])
def test_non_finite_loss_stops_with_the_step_and_a_hint(tmp_path, settings, advice) -> None:
    sets = [arg for setting in settings for arg in ("--set", setting)]
    result = runner.invoke(app, ["teach", "--lr", "1e12", "--set", "teacher.optim.name=sgd",
                                 *sets, "--epochs", "1", "--checkpoint-every", "100",
                                 "--output-dir", str(tmp_path), "--name", "nan", "--wandb",
                                 "disabled", "-q"])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: non-finite loss at epoch 1, step ")
    assert message.endswith(f"term is not finite; {advice}")
    assert not (tmp_path / "nan" / LAST).exists()


def test_non_finite_advice_leaves_out_what_the_run_already_does() -> None:
    """A run that clips already is not told to clip (one whose loss overflows despite it)."""
    from distill.engine import LoopConfig, _non_finite

    parts = {"soft": torch.tensor(0.5), "hard": torch.tensor(float("inf")),
             "loss": torch.tensor(float("inf"))}
    cfg = LoopConfig(epochs=1, batch_size=8, data_seed=0, grad_clip=1.0)
    assert str(_non_finite(parts, 0, 3, cfg)) == (
        "non-finite loss at epoch 1, step 3: the hard term is not finite; lower the learning "
        "rate (optim.lr)")


def test_deterministic_runs_are_bitwise_equal(tmp_path, monkeypatch) -> None:
    """Two CPU runs would be equal anyway: what is checked too is that the run switched on
    every setting a GPU run needs to repeat itself (deterministic kernels, cuDNN, cuBLAS)."""
    cudnn = torch.backends.cudnn
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = False, True
    try:
        for name in ("a", "b"):
            api.teach(overrides={"teacher.epochs": 1, "output_dir": str(tmp_path),
                                 "deterministic": True}, name=name, quiet=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        cudnn.deterministic, cudnn.benchmark = before
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_deterministic_flag_reaches_the_run(tmp_path) -> None:
    """`--deterministic` on the command line, not only the recipe field, switches it on."""
    try:
        result = runner.invoke(app, ["teach", "--epochs", "1", "--deterministic", "-q",
                                     "--output-dir", str(tmp_path), "--name", "d",
                                     "--wandb", "disabled"])
        assert result.exit_code == 0, result.output
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert "deterministic: true" in (tmp_path / "d" / "recipe.yaml").read_text().splitlines()


def test_a_student_resumes_with_its_teacher_moved_but_not_with_a_changed_one(tmp_path
                                                                            ) -> None:
    from safetensors.torch import save_file

    out = str(tmp_path)
    teacher = api.teach(overrides={"teacher.epochs": 1, "output_dir": out}, name="t",
                        quiet=True).run_dir
    student = api.student(overrides={"student.epochs": 1, "output_dir": out,
                                     "student.teacher": str(teacher)}, name="s",
                          quiet=True).run_dir
    (student / "summary.json").unlink()  # as if killed after its last checkpoint
    again = shutil.copytree(student, tmp_path / "s-again")
    (tmp_path / "elsewhere").mkdir()
    moved = teacher.rename(tmp_path / "elsewhere" / "t")  # the same weights, another path

    result = runner.invoke(app, ["student", "--resume", str(student), "--teacher", str(moved),
                                 "--wandb", "disabled", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((student / "summary.json").read_text())["resumes"][-1]["moved"] == [
        f"student.teacher: '{teacher}' -> '{moved}'"]

    tensors = weights(moved)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key] * 2
    save_file(tensors, str(moved / "model.safetensors"))
    error = user_error("student", "--resume", str(again), "--teacher", str(moved))
    assert error.startswith(f"error: --resume {again}: teacher {moved} changed since this run "
                            f"started (sha256 ")
    assert error.endswith("resume with the teacher it started with (--teacher <its run "
                          "folder>), or pass --allow-changes to resume with this one anyway")
    # allowed, the other teacher is said and recorded
    sha = load_checkpoint(again / LAST)["teacher_sha256"]
    result = runner.invoke(app, ["student", "--resume", str(again), "--teacher", str(moved),
                                 "--allow-changes", "--wandb", "disabled"])
    assert result.exit_code == 0, result.output
    other = json.loads((again / "summary.json").read_text())["teacher"]["sha256"]
    changes = [f"student.teacher: '{teacher}' -> '{moved}'",
               f"teacher (sha256): {sha[:12]} -> {other[:12]}"]
    assert other != sha
    assert f"resumed with changes (--allow-changes): {'; '.join(changes)}" in result.stderr
    assert json.loads((again / "summary.json").read_text())["resumes"][-1]["changes"] == changes


def test_a_baseline_that_found_a_teacher_is_not_resumed_without_one(tmp_path) -> None:
    """A baseline (alpha 0) takes the newest teacher run, if any, for its teacher figures;
    once that run is gone, resuming it without its teacher is refused, not done silently,
    unless the user allows it: then it finishes without teacher figures, and says so."""
    out = str(tmp_path)
    teacher = api.teach(overrides={"teacher.epochs": 1, "output_dir": out}, name="t",
                        quiet=True).run_dir
    baseline = api.student(overrides={"student.epochs": 1, "student.alpha": 0.0,
                                      "output_dir": out}, name="b", quiet=True).run_dir
    (baseline / "summary.json").unlink()  # as if killed after its last checkpoint
    sha = load_checkpoint(baseline / LAST)["teacher_sha256"]
    teacher.rename(tmp_path.parent / f"{tmp_path.name}-teacher-elsewhere")
    assert user_error("student", "--resume", str(baseline)) == (
        f"error: --resume {baseline}: the run started with a teacher (sha256 {sha[:12]}) and "
        f"none was found this time; name it with --teacher <its run folder>, or pass "
        f"--allow-changes to resume without it")
    result = runner.invoke(app, ["student", "--resume", str(baseline), "--allow-changes",
                                 "--wandb", "disabled"])
    assert result.exit_code == 0, result.output
    change = f"teacher (sha256): {sha[:12]} -> none found"
    assert f"resumed with changes (--allow-changes): {change}" in result.stderr
    summary = json.loads((baseline / "summary.json").read_text())
    assert summary["resumes"][-1]["changes"] == [change] and summary.get("teacher") is None


def test_a_run_resumes_with_its_data_read_from_elsewhere_but_not_with_other_data(
        tmp_path) -> None:
    """A run moved to another machine finds its data at another path: the checkpoint holds
    their fingerprint, so the same data elsewhere resume the run (to the very run never
    stopped), other data there are refused, and so is any other change."""
    data = {"a": tmp_path / "a", "other": tmp_path / "other"}
    fake_mnist(data["a"], n_train=400)  # 360 to train in 6 batches: save 1 is at step 5
    fake_mnist(data["other"], n_train=400, seed=1)

    def run(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "distill", "teach", "--dataset", "mnist", "--data-dir",
               str(data["a"]), "--set", "data.download=false", "--output-dir",
               str(tmp_path / "runs"), "--name", name, *FLAGS]
        return subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, **(env or {})})

    assert run("whole").returncode == 0
    assert run("cut", {KILL_AFTER_SAVE_ENV: "1"}).returncode == -signal.SIGKILL
    cut = tmp_path / "runs" / "cut"
    saved = load_checkpoint(cut / LAST)["data_fingerprint"]
    other = load_data(DataConfig(name="mnist", data_dir=str(data["other"]), download=False)
                      ).content_fingerprint()
    moved = data["a"].rename(tmp_path / "b")

    assert user_error("teach", "--resume", str(cut), "--data-dir", str(data["other"])) == (
        f"error: --resume {cut}: the data were read from elsewhere (data.data_dir: "
        f"'{data['a']}' -> '{data['other']}') and are not the run's (fingerprint {saved[:12]} "
        f"-> {other[:12]}: other files, or the same decoded otherwise); resume with the run's "
        f"data, or pass --allow-changes to resume with these anyway")
    assert user_error("teach", "--resume", str(cut), "--data-dir", str(moved), "--lr",
                      "0.01") == (
        f"error: --resume {cut}: the recipe differs from the run's: data.data_dir: "
        f"'{data['a']}' -> '{moved}'; teacher.optim.lr: 0.001 -> 0.01; pass --allow-changes "
        f"to resume with it anyway")

    api.teach(resume=cut, overrides={"data.data_dir": str(moved)}, quiet=True)
    assert_same_run(tmp_path / "runs" / "whole", cut)
    assert json.loads((cut / "summary.json").read_text())["resumes"][0]["moved"] == [
        f"data.data_dir: '{data['a']}' -> '{moved}'"]
    assert f"data_dir: {moved}" in (cut / "recipe.yaml").read_text()  # the next resume's


def test_an_image_folder_read_from_elsewhere_resumes_when_its_images_are_the_runs(
        tmp_path) -> None:
    """Moved images held in memory are compared by their pixels, files left on disk by
    their names, sizes and labels; the same resume the run, others are refused, and so are
    data placed otherwise than the run placed them (nothing to compare); files replaced
    where the run found them are refused."""
    def started(folder: Path, name: str, **more) -> Path:
        run = api.teach(overrides={"data.name": f"imagefolder:{folder}", "data.val_size": 2,
                                   "teacher.epochs": 1, "output_dir": str(tmp_path / "runs"),
                                   **more}, name=name, quiet=True).run_dir
        (run / "summary.json").unlink()  # as if killed after its last checkpoint
        return run

    def resumed(run: Path, *more: str) -> None:
        result = runner.invoke(app, ["teach", "--resume", str(run), *more, "--wandb",
                                     "disabled", "-q"])
        assert result.exit_code == 0, result.output

    a = image_folder(tmp_path / "a")
    held, on_disk, placed = (started(a, "held"), started(a, "on-disk", **{"data.in_memory": False}),
                             started(a, "placed"))
    b = a.rename(tmp_path / "b")
    moved = f"data.name: 'imagefolder:{a}' -> 'imagefolder:{b}'"
    resumed(held, "--dataset", f"imagefolder:{b}")
    assert user_error("teach", "--resume", str(placed), "--dataset", f"imagefolder:{b}",
                      "--set", "data.in_memory=false") == (
        f"error: --resume {placed}: the data were read from elsewhere ({moved}) and are left "
        f"on disk, where the run had them held in memory, so they cannot be compared with the "
        f"run's; place them as it did (--set data.in_memory=true), or pass --allow-changes to "
        f"resume with these anyway")
    resumed(placed, "--dataset", f"imagefolder:{b}", "--set", "data.in_memory=true")
    saved = load_checkpoint(on_disk / LAST)["data_fingerprint"]
    renamed = (b / "train" / "cat" / "000.png").rename(b / "train" / "cat" / "099.png")
    error = user_error("teach", "--resume", str(on_disk), "--dataset", f"imagefolder:{b}")
    assert error.startswith(f"error: --resume {on_disk}: the data were read from elsewhere "
                            f"({moved}) and are not the run's (fingerprint files:{saved[6:18]} "
                            f"-> files:")  # the same pixels (every cat is one colour): names
    assert error.endswith(": other file names, sizes or labels, or other normalisation "
                          "constants: train/'s pixels differ); resume with the run's data, or "
                          "pass --allow-changes to resume with these anyway")
    renamed.rename(b / "train" / "cat" / "000.png")
    older = tmp_path / "runs" / "older"  # as a checkpoint written before these fingerprints
    shutil.copytree(on_disk, older)
    save_atomic({**load_checkpoint(older / LAST), "data_fingerprint": None}, older / LAST)
    assert user_error("teach", "--resume", str(older), "--dataset", f"imagefolder:{b}") == (
        f"error: --resume {older}: the recipe differs from the run's: {moved} (the data "
        f"moved, and this checkpoint holds no fingerprint to compare them with: it predates "
        f"data fingerprints, or those of files left on disk); pass --allow-changes to resume "
        f"with it anyway")
    resumed(on_disk, "--dataset", f"imagefolder:{b}")
    assert json.loads((on_disk / "summary.json").read_text())["resumes"][0]["moved"] == [moved]
    placed = started(b, "placed-on-disk", **{"data.in_memory": False})
    c = b.rename(tmp_path / "c")
    assert user_error("teach", "--resume", str(placed), "--dataset", f"imagefolder:{c}",
                      "--set", "data.in_memory=true") == (
        f"error: --resume {placed}: the data were read from elsewhere (data.name: "
        f"'imagefolder:{b}' -> 'imagefolder:{c}') and are held in memory, where the run had "
        f"them left on disk, so they cannot be compared with the run's; place them as it did "
        f"(--set data.in_memory=false), or pass --allow-changes to resume with these anyway")
    b = c.rename(tmp_path / "b")

    again, again_on_disk = started(b, "again"), started(b, "again-on-disk",
                                                        **{"data.in_memory": False})
    from PIL import Image

    replaced = b / "train" / "cat" / "000.png"
    size = replaced.stat().st_size
    Image.frombytes("RGB", (10, 10), bytes(range(256)) + bytes(44)).save(replaced)  # in place
    assert replaced.stat().st_size != size
    error = user_error("teach", "--resume", str(again))
    assert error.startswith(f"error: --resume {again}: the data are not the run's (fingerprint ")
    assert error.endswith(": other files, or the same decoded otherwise); resume with the "
                          "run's data, or pass --allow-changes to resume with these anyway")
    error = user_error("teach", "--resume", str(again_on_disk))
    assert error.startswith(f"error: --resume {again_on_disk}: the data are not the run's "
                            f"(fingerprint files:")
    resumed(again, "--allow-changes")


def test_a_run_resumed_from_disk_keeps_its_data_fingerprint(tmp_path) -> None:
    """Resumed with its images left on disk (data.in_memory only places the data), a run
    started with them in memory has a fingerprint of its files that cannot be compared with
    the pixels' it started with; its next checkpoints keep that one, so a later move of the
    data held in memory can still be checked."""
    a = image_folder(tmp_path / "a")
    cmd = [sys.executable, "-m", "distill", "teach", "--dataset", f"imagefolder:{a}", "--set",
           "data.val_size=2", "--output-dir", str(tmp_path / "runs"), "--name", "cut", *FLAGS]
    killed = subprocess.run(cmd, capture_output=True, text=True,
                            env={**os.environ, KILL_AFTER_SAVE_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut = tmp_path / "runs" / "cut"
    first = load_checkpoint(cut / LAST)
    assert first["data_fingerprint"] is not None and first["state"]["epoch"] < 2

    result = runner.invoke(app, ["teach", "--resume", str(cut), "--set",
                                 "data.in_memory=false", "--wandb", "disabled", "-q"])
    assert result.exit_code == 0, result.output
    last = load_checkpoint(cut / LAST)
    assert last["state"]["epoch"] == 2  # written by the resumed run, from disk
    assert last["data_fingerprint"] == first["data_fingerprint"]


FORK_THEN_RELEASE = """
import multiprocessing, sys, time
from pathlib import Path
from distill.checkpoint import lock_run
def work(started):
    started.set()  # a forked child runs its at-fork hooks before its target
    time.sleep(120)
if __name__ == "__main__":
    lock = lock_run(Path(sys.argv[1]))
    context = multiprocessing.get_context("fork")
    started = context.Event()
    worker = context.Process(target=work, args=(started,))
    worker.start()  # as a DataLoader worker forked while the run trains
    assert started.wait(60)  # as a worker does long before its run ends
    lock.release()
    print("released", flush=True)
    worker.join()
"""


def test_a_released_run_lock_is_free_although_a_forked_worker_lives_on(tmp_path) -> None:
    """A child forked while the lock was held (DataLoader workers that persist) does not
    keep the lock after its parent released it, so the run can be resumed elsewhere."""
    from distill.checkpoint import LOCK, take_lock

    parent = subprocess.Popen([sys.executable, "-c", FORK_THEN_RELEASE, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "released"
        lock = take_lock(tmp_path / LOCK)
        assert lock is not None  # the worker still runs, and the lock is free
        lock.release()
    finally:
        for child in _children(parent.pid):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []
