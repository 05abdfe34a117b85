"""Channels-last and bf16 defaults: what each device gets, and that channels-last changes
the memory layout only, never the arithmetic a run does."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill.api as api
from distill.engine import resolve_precision
from distill.models import build_model
from test_on_disk import noisy_image_folder

CONV = build_model("cnn", (1, 8, 8), 10)
MLP = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[16])


@pytest.mark.parametrize(("device", "model", "want"), [
    ("cpu", CONV, (False, True)),  # oneDNN's channels-last kernels are the faster ones
    ("cpu", MLP, (False, False)),  # no convolution: nothing to lay out
    ("meta", CONV, (False, False)),  # any other device keeps NCHW
])
def test_defaults_per_device_and_model(device: str, model, want) -> None:
    assert resolve_precision(None, None, torch.device(device), model) == want


@pytest.mark.parametrize(("capability", "bf16"), [
    ((7, 0), False), ((7, 5), False),  # V100, T4: bf16 only emulated, slower than float32
    ((8, 0), True), ((9, 0), True),  # A100, H100
])
def test_bf16_autocast_is_the_default_on_cuda_only_where_the_gpu_has_native_bf16(
        monkeypatch, capability, bf16) -> None:
    """Decided without a GPU: the capability query is stubbed, the device is only named."""
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation
    cuda = torch.device("cuda", 1)
    assert resolve_precision(None, None, cuda, CONV) == (bf16, True)
    assert resolve_precision(None, None, cuda, MLP) == (bf16, False)
    assert asked == [cuda, cuda]  # the run's own GPU, not whichever is current
    assert resolve_precision(False, False, cuda, CONV) == (False, False)
    for other in ("cpu", "meta"):  # a GPU that has bf16 turns autocast on for CUDA runs only
        assert resolve_precision(None, None, torch.device(other), MLP) == (False, False)


def test_a_recipe_switches_either_off_or_on() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(None, False, cpu, CONV) == (False, False)
    assert resolve_precision(True, None, cpu, MLP) == (True, False)
    assert resolve_precision(None, True, cpu, MLP) == (False, True)


def test_inputs_follow_the_layout_of_the_conv_weights() -> None:
    """Evaluation and latency feed a conv net in the layout its weights were placed in."""
    from distill.models import input_format

    rgb = build_model("cnn", (3, 8, 8), 10)
    assert input_format(rgb) == torch.contiguous_format
    assert input_format(rgb.to(memory_format=torch.channels_last)) == torch.channels_last
    assert input_format(MLP) == torch.contiguous_format


def _layout(t: torch.Tensor) -> str | None:
    """"cl" or "nchw" for a 4-d tensor whose strides tell them apart (None where both
    hold: one channel, or 1 x 1 pixels)."""
    cl, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    return None if cl == nchw else "cl" if cl else "nchw"


SHAPE_CHECKS = {"check_model", "_check_classes"}  # a zeros batch through a model not yet placed


def _in_shape_check() -> bool:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name not in SHAPE_CHECKS:
        frame = frame.f_back
    return frame is not None


@contextmanager
def conv_layouts() -> Iterator[set[tuple[str | None, str | None]]]:
    """The (input, weight) layouts every Conv2d called meanwhile saw, teacher's included."""
    seen: set[tuple[str | None, str | None]] = set()

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Conv2d) and not _in_shape_check():
            seen.add((_layout(args[0]), _layout(module.weight)))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def _conv_pair(out: Path, channels_last: bool, data: Path) -> dict[str, api.RunResult]:
    common = {"output_dir": str(out), "channels_last": channels_last,
              "data.name": f"imagefolder:{data}", "data.val_size": 6,
              "teacher.model.name": "cnn", "student.model.name": "cnn",
              "student.model.width": 4, "teacher.epochs": 2, "student.epochs": 2,
              # no cache and no augmentation: the teacher runs on every (NCHW) batch
              "student.teacher_cache": False}
    t = api.teach(None, common, name="t", quiet=True, wandb="disabled")
    s = api.student(None, {**common, "student.teacher": str(t.run_dir)}, name="s",
                    quiet=True, wandb="disabled")
    return {"teacher": t, "student": s}


def test_channels_last_trains_the_same_conv_teacher_and_student_as_nchw(tmp_path: Path) -> None:
    data = noisy_image_folder(tmp_path / "rgb", per_class=24, size=8)  # 3 channels: one
    runs, layouts = {}, {}  # channel would be laid out alike either way
    for cl in (True, False):
        with conv_layouts() as layouts[cl]:
            runs[cl] = _conv_pair(tmp_path / str(cl), cl, data)
    for cl, want in ((True, "cl"), (False, "nchw")):  # the tensors themselves, not a flag
        seen = {layout for pair in layouts[cl] for layout in pair} - {None}
        assert seen == {want}, (cl, layouts[cl])
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


@pytest.fixture
def loss_dtypes(monkeypatch) -> list[tuple]:
    """(student logits, teacher logits, loss) dtypes of every loss the loops compute: the
    single-run loop's and the batched sweep's."""
    import distill.batched as batched
    import distill.engine as engine

    seen: list[tuple] = []

    def recording(loss_fn):
        def wrapped(logits, teacher_logits, *args, **kwargs):
            parts = loss_fn(logits, teacher_logits, *args, **kwargs)
            seen.append((logits.dtype, None if teacher_logits is None else teacher_logits.dtype,
                         parts["loss"].dtype))
            return parts
        return wrapped

    monkeypatch.setattr(engine, "distillation_loss", recording(engine.distillation_loss))
    monkeypatch.setattr(batched, "per_student_loss", recording(batched.per_student_loss))
    return seen


@pytest.mark.parametrize("amp", [True, False])
def test_amp_runs_the_forward_passes_in_bf16_and_the_loss_in_float32(
        tmp_path: Path, loss_dtypes: list[tuple], amp: bool) -> None:
    """bf16 autocast (here on the CPU, which has it) for the student's and the teacher's
    forward passes, in the single-run loop and in a batched sweep; the loss is float32
    either way, and a bf16 run learns as well as a float32 one."""
    low = torch.bfloat16 if amp else torch.float32
    common = {"output_dir": str(tmp_path), "amp": amp, "teacher.epochs": 3,
              "student.epochs": 2, "student.model.hidden_sizes": [16],
              "student.teacher_cache": False}  # the teacher runs on every batch
    t = api.teach(None, common, name="t", quiet=True, wandb="disabled")
    assert set(loss_dtypes) == {(low, None, torch.float32)}
    loss_dtypes.clear()
    api.student(None, {**common, "student.teacher": str(t.run_dir)}, name="s", quiet=True,
                wandb="disabled")
    assert set(loss_dtypes) == {(low, low, torch.float32)}
    loss_dtypes.clear()
    api.sweep(None, {**common, "student.teacher": str(t.run_dir)}, Ts=[4.0], alphas=[0.5],
              seeds=[0, 1], mode="batched", name="grid", quiet=True, wandb="disabled")
    assert set(loss_dtypes) == {(low, low, torch.float32)}
    env = json.loads((t.run_dir / "environment.json").read_text())
    assert env["amp_bf16"] is amp
    assert t.summary["test"]["accuracy"] > 0.9, t.summary["test"]
