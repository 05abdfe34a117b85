"""Bad input that issue-level users hit, each a one-line message and exit code 2.

(Recipe keys and values: test_recipe.py and test_cli_errors.py; data files: test_data.py;
checkpoints and resume: test_resume.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distill.cli import app

runner = CliRunner()


def one_line_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_cli_values_are_one_line_with_exit_2() -> None:
    """Through the real entry point: typer's usage errors become one line too."""
    env = {**os.environ, "COLUMNS": "200"}
    cases = [
        (["student", "--alpha", "abc"], "error: Invalid value for '--alpha': Input should be a "
         "valid number, unable to parse string as a number (see: distill student --help)"),
        (["teach", "--bogus"], "error: No such option: --bogus (see: distill teach --help)"),
    ]
    for args, expected in cases:
        out = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                             text=True, env=env)
        assert out.returncode == 2
        assert out.stderr.strip() == expected
        assert "Traceback" not in out.stderr


def _folder(root: Path, classes: int, images: int) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(images):
                Image.fromarray(np.full((8, 8, 3), 30 * c + i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_an_empty_image_folder_is_named(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "train" / "cat").mkdir(parents=True)
    assert one_line_error("teach", "--dataset", f"imagefolder:{root}", "--wandb", "disabled",
                          "--output-dir", str(tmp_path / "out")) == (
        f"error: {root / 'train'}: no images found in its class folders")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_a_teacher_run_with_other_classes_is_refused_before_training(tmp_path) -> None:
    out = tmp_path / "out"
    common = ["--wandb", "disabled", "-q", "--output-dir", str(out), "--epochs", "1"]
    assert runner.invoke(app, ["teach", "--name", "digits-teacher", *common]).exit_code == 0
    data = _folder(tmp_path / "two", classes=2, images=6)
    message = one_line_error("student", "--dataset", f"imagefolder:{data}", "--teacher",
                             str(out / "digits-teacher"), *common)
    assert message == (f"error: --teacher {out / 'digits-teacher'}: the teacher outputs 10 "
                       f"classes, dataset 'imagefolder:{data}' has 2")
    assert sorted(p.name for p in out.iterdir()) == ["digits-teacher"]


@pytest.mark.parametrize(("more", "advice"), [
    ([], "lower the learning rate (optim.lr) or add grad clipping (optim.grad_clip)"),
    (["--set", "amp=true"], "lower the learning rate (optim.lr), add grad clipping "
                            "(optim.grad_clip) or turn mixed precision off (amp: false)"),
])
def test_non_finite_weights_are_never_checkpointed(tmp_path, more, advice) -> None:
    from distill.checkpoint import LAST, all_finite, load_checkpoint

    result = runner.invoke(app, ["teach", "--lr", "1e30", "--set", "teacher.optim.name=sgd",
                                 *more, "--epochs", "1", "--checkpoint-every", "1",
                                 "--output-dir", str(tmp_path), "--name", "nan", "--wandb",
                                 "disabled", "-q"])
    assert result.exit_code == 2
    assert result.stderr == f"error: non-finite weights at step 2: not checkpointed; {advice}\n"
    saved = load_checkpoint(tmp_path / "nan" / LAST)  # step 1's, before the fault
    assert saved["state"]["step"] == 1 and all_finite(saved["state"]["model"])
