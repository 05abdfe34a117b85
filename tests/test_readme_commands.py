"""The README's scale-out commands, taken from the README itself and run (their single-node
parts): torchrun on a CPU, and writing the wandb sweep file an agent then expands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from distill.cli import app
from test_sweep import agent_command

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_command(prefix: str) -> list[str]:
    """The README line (continuations joined, comment dropped) that starts with ``prefix``."""
    text = README.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]
    assert lines, f"the README has no command starting with {prefix!r}"
    return shlex.split(lines[0].split("  #")[0])


def test_the_readme_torchrun_command_runs_on_a_cpu(tmp_path) -> None:
    command = readme_command("torchrun --standalone --nproc_per_node=2 -m distill teach")
    assert command[-2:] == ["--device", "cpu"]
    launch = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
    result = subprocess.run([*launch, "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                             "--wandb", "disabled", "-q"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert (run / "summary.json").is_file()


def test_the_readme_wandb_sweep_command_writes_what_agents_run(tmp_path, monkeypatch) -> None:
    command = readme_command("distill sweep --recipe mnist_hinton")
    assert command[-2:] == ["--wandb-sweep", "sweep.yaml"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    # the grid comes from the recipe's sweep section, the seeds from the flag
    assert config["parameters"] == {"T": {"values": [4.0, 8.0, 20.0]},
                                    "alpha": {"values": [0.5, 0.9]},
                                    "seed": {"values": [0, 1, 2]}}
    teacher = command[command.index("--teacher") + 1]
    run = agent_command(config, {"T": 8.0, "alpha": 0.5, "seed": 2})
    assert run == ["/usr/bin/env", "distill", "student", "--recipe", "mnist_hinton",
                   f"--set=student.teacher={teacher}", "--T=8.0", "--alpha=0.5", "--seed=2"]
