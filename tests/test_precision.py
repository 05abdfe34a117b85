"""Channels-last and bf16 defaults: what each device gets, and that channels-last changes
the memory layout only, never the arithmetic a run does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill.api as api
from distill.engine import resolve_precision
from distill.models import build_model

CONV = build_model("cnn", (1, 8, 8), 10)
MLP = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[16])


@pytest.mark.parametrize(("device", "model", "want"), [
    ("cpu", CONV, (False, True)),  # oneDNN's channels-last kernels are the faster ones
    ("cpu", MLP, (False, False)),  # no convolution: nothing to lay out
    ("meta", CONV, (False, False)),  # any other device keeps NCHW
])
def test_defaults_per_device_and_model(device: str, model, want) -> None:
    assert resolve_precision(None, None, torch.device(device), model) == want


def test_a_recipe_switches_either_off_or_on() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(None, False, cpu, CONV) == (False, False)
    assert resolve_precision(True, None, cpu, MLP) == (True, False)


def _conv_pair(out: Path, channels_last: bool) -> dict[str, api.RunResult]:
    common = {"output_dir": str(out), "channels_last": channels_last,
              "teacher.model.name": "cnn", "student.model.name": "cnn",
              "student.model.width": 4, "teacher.epochs": 2, "student.epochs": 2,
              # no cache and no augmentation: the teacher runs on every (NCHW) batch
              "student.teacher_cache": False}
    t = api.teach(None, common, name="t", quiet=True, wandb="disabled")
    s = api.student(None, {**common, "student.teacher": str(t.run_dir)}, name="s",
                    quiet=True, wandb="disabled")
    return {"teacher": t, "student": s}


def test_channels_last_trains_the_same_conv_teacher_and_student_as_nchw(tmp_path: Path) -> None:
    runs = {cl: _conv_pair(tmp_path / str(cl), cl) for cl in (True, False)}
    for role in ("teacher", "student"):
        envs = {cl: json.loads((runs[cl][role].run_dir / "environment.json").read_text())
                for cl in runs}
        assert envs[True]["channels_last"] is True and envs[False]["channels_last"] is False
        if role == "student":
            assert envs[True]["teacher_channels_last"] is True
            assert envs[False]["teacher_channels_last"] is False
        a, b = (load_file(str(runs[cl][role].run_dir / "model.safetensors")) for cl in runs)
        assert a.keys() == b.keys()
        for k in a:  # the same sums in another order: float rounding apart, equal
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=f"{role} {k}")
        acc = [runs[cl][role].summary["test"]["accuracy"] for cl in runs]
        assert abs(acc[0] - acc[1]) <= 2 / runs[True][role].summary["test"]["n"], (role, acc)
