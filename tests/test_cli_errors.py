"""Tests for the `distill` command line: every user error is exit code 2 and one line
``error: ...`` on stderr (no traceback); ``--debug`` lets the exception through."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError
from distill.models import list_models

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing lands in the checkout; no shared data folder or wandb login is picked up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")


def run_cli(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, message: str) -> None:
    """Exit code 2, exactly one line 'error: <message>' on stderr, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr == f"error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def train_args(tmp_path: Path) -> list[str]:
    return ["--wandb", "disabled", "--output-dir", str(tmp_path / "out"), "--quiet"]


def assert_no_run_started(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


# ----------------------------------------------------------------------------- recipe values

def test_alpha_out_of_range(tmp_path: Path) -> None:
    result = run_cli("student", "--alpha", "1.5", *train_args(tmp_path))
    assert_user_error(result, "command line: student.alpha: Input should be less than or "
                              "equal to 1, got 1.5")
    assert_no_run_started(tmp_path)


def test_temperature_zero(tmp_path: Path) -> None:
    result = run_cli("student", "--T", "0", *train_args(tmp_path))
    assert_user_error(result, "command line: student.T: Input should be greater than 0, got 0.0")
    assert_no_run_started(tmp_path)


def test_recipe_file_with_unknown_key(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("student:\n  alpah: 0.5\n")
    result = run_cli("teach", "--recipe", str(recipe), *train_args(tmp_path))
    assert_user_error(result, f"{recipe}: unknown key 'student.alpah' "
                              "(did you mean 'student.alpha'?)")
    assert_no_run_started(tmp_path)


def test_set_override_out_of_range(tmp_path: Path) -> None:
    result = run_cli("teach", "--set", "student.T=-1", *train_args(tmp_path))
    assert_user_error(result, "command line: student.T: Input should be greater than 0, got -1")
    assert_no_run_started(tmp_path)


def test_set_without_equals(tmp_path: Path) -> None:
    result = run_cli("teach", "--set", "student.T", *train_args(tmp_path))
    assert_user_error(result, "--set 'student.T': expected key.path=value, "
                              "e.g. --set student.T=4")
    assert_no_run_started(tmp_path)


def test_unknown_recipe_name(tmp_path: Path) -> None:
    result = run_cli("teach", "--recipe", "nope", *train_args(tmp_path))
    assert_user_error(result, "recipe 'nope' not found: no such file, and no shipped recipe of "
                              "that name (shipped: cifar10_jpeg_resnet, cifar10_resnet, digits, mnist_hinton)")


# ----------------------------------------------------------------------------- names and paths

def test_unknown_dataset(tmp_path: Path) -> None:
    result = run_cli("teach", "--dataset", "nope", *train_args(tmp_path))
    assert_user_error(result, "unknown dataset 'nope'; known datasets: cifar10, cifar100, "
                              "digits, fashion-mnist, mnist, imagefolder:<path>")
    assert_no_run_started(tmp_path)


def test_unknown_model(tmp_path: Path) -> None:
    result = run_cli("teach", "--model", "nope", *train_args(tmp_path))
    known = ", ".join(list_models())
    assert "resnet20" in known and "mlp" in known
    assert_user_error(result, f"unknown model 'nope'; known models: {known}, or timm:<name> "
                              "for any timm model")
    assert_no_run_started(tmp_path)


def test_missing_mnist_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("teach", "--dataset", "mnist", "--data-dir", str(empty),
                     "--set", "data.download=false", *train_args(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: mnist: files not found (")
    assert result.stderr.count("\n") == 1
    assert "pass --data-dir <folder> (or set DISTILL_DATA_DIR)" in result.stderr
    assert_no_run_started(tmp_path)


def test_teacher_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("student", "--teacher", "/nonexistent", *train_args(tmp_path))
    assert_user_error(result, "--teacher '/nonexistent': no such run folder or weights file")
    assert_no_run_started(tmp_path)


def test_student_without_a_teacher_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("student", *train_args(tmp_path))
    assert_user_error(result, f"no finished teacher run for dataset 'digits' in {out}/; run "
                              "`distill teach` first, or pass --teacher <run folder | weights "
                              "file | timm:<name>>")
    assert_no_run_started(tmp_path)


def test_student_with_an_unfinished_teacher_run(tmp_path: Path) -> None:
    run = tmp_path / "out" / "teach-digits-x"
    run.mkdir(parents=True)
    result = run_cli("student", "--teacher", str(run), *train_args(tmp_path))
    assert_user_error(result, f"--teacher {run}: not a finished run (no summary.json); wait "
                              "for it to finish or pick another run")


def test_eval_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert_user_error(run_cli("eval", str(missing)), f"{missing}: no such run folder")
    target = tmp_path / "not_a_run"
    target.mkdir()
    result = run_cli("eval", str(target))
    assert_user_error(result, f"{target}: not a finished run (no summary.json)")


def test_unavailable_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = run_cli("teach", "--device", "cuda", *train_args(tmp_path))
    assert_user_error(result, "device 'cuda': CUDA is not available here; use --device cpu "
                              "or auto")
    assert_no_run_started(tmp_path)


def test_bad_device_name(tmp_path: Path) -> None:
    result = run_cli("teach", "--device", "gpu0", *train_args(tmp_path))
    assert_user_error(result, "device 'gpu0': not a device name; use auto, cpu, cuda, cuda:N "
                              "or mps")
    assert_no_run_started(tmp_path)


def test_bad_wandb_mode(tmp_path: Path) -> None:
    result = run_cli("teach", "--wandb", "bogus", "--output-dir", str(tmp_path / "out"))
    assert_user_error(result, "command line: wandb.mode: Input should be 'auto', 'online', "
                              "'offline' or 'disabled', got 'bogus'")
    assert_no_run_started(tmp_path)


# ----------------------------------------------------------------------------- --debug

def test_debug_lets_the_exception_through(tmp_path: Path) -> None:
    result = run_cli("student", "--alpha", "1.5", "--debug", *train_args(tmp_path))
    assert result.exit_code != 0 and result.exit_code != 2
    assert isinstance(result.exception, DistillError)
    assert str(result.exception) == ("command line: student.alpha: Input should be less than or "
                                     "equal to 1, got 1.5")
    assert result.exc_info is not None
    trace = "".join(traceback.format_exception(*result.exc_info))
    assert trace.startswith("Traceback (most recent call last):")
    assert "distill/recipe.py" in trace.replace(os.sep, "/")  # raised where it was found
    assert trace.rstrip().endswith("RecipeError: command line: student.alpha: Input should be "
                                   "less than or equal to 1, got 1.5")
    assert "error: " not in result.stderr


def test_debug_on_eval_lets_the_exception_through(tmp_path: Path) -> None:
    result = run_cli("eval", str(tmp_path / "not_a_run"), "--debug")
    assert isinstance(result.exception, DistillError)
    assert str(result.exception) == f"{tmp_path / 'not_a_run'}: no such run folder"
    assert result.stderr == ""


# ----------------------------------------------------------------------------- a real process

def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_DATA_DIR"}
    env.update(WANDB_MODE="disabled", COLUMNS="80", NO_COLOR="1")
    return env


def test_real_process_exit_code_and_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "student", "--alpha", "1.5", *train_args(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=_subprocess_env(), timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("error: command line: student.alpha: Input should be less than or "
                           "equal to 1, got 1.5\n")
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- listings, help

def test_models_lists_the_registry() -> None:
    result = run_cli("models")
    assert result.exit_code == 0, result.output
    for name in ("mlp", "cnn", "resnet20", "resnet56"):
        assert name in result.stdout
    assert "timm:<name>" in result.stdout
    assert result.stderr == ""


def test_datasets_lists_the_loaders() -> None:
    result = run_cli("datasets")
    assert result.exit_code == 0, result.output
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder:<path>"):
        assert name in result.stdout
    assert "DISTILL_DATA_DIR" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command,options", [
    ("teach", ["--recipe", "--set", "--dataset", "--model", "--epochs", "--wandb", "--debug"]),
    ("student", ["--recipe", "--T", "--alpha", "--teacher", "--baseline", "--set"]),
    ("eval", ["--baseline", "--json", "--device", "--debug", "A finished run folder"]),
    # the grid's defaults (once lost: rich read "[default: ...]" as markup and dropped it)
    ("sweep", ["--T", "--alpha", "--seeds", "--mode", "--chunk-size", "sweep.T, 1,2,4,8,16)",
               "sweep.alpha, 0.1,0.3,0.5,0.7,0.9)", "sweep.seeds, 0)", "sweep.mode, auto)"]),
])
def test_help_mentions_the_options(command: str, options: list[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping or cropping of the option names
    result = run_cli(command, "--help")
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.stdout, (option, result.stdout)


def test_no_command_shows_help_once() -> None:
    """Plain `distill` (the console script's entry point) prints the overview once, exit 0."""
    done = subprocess.run([sys.executable, "-m", "distill"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Usage: distill") == 1, done.stdout
    assert all(command in done.stdout for command in ("teach", "student", "sweep", "eval"))
    assert done.stderr == ""
