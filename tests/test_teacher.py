"""A frozen teacher never changes while a student learns from it; teachers load safely."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from distill.data import load_data
from distill.engine import LoopConfig, TrainState, fit
from distill.errors import DistillError
from distill.models import build_model
from distill.optim import build_optimizer, build_scheduler
from distill.recipe import DataConfig, OptimConfig
from distill.teacher import FrozenTeacher, load_teacher, read_state_dict


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def _bn_dropout_teacher(info) -> nn.Module:
    torch.manual_seed(3)
    model = build_model("cnn", info.in_shape, info.num_classes, dropout=0.5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    return model


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_student(digits, teacher: nn.Module) -> None:
    torch.manual_seed(0)
    student = build_model("mlp", digits.info.in_shape, 10, hidden_sizes=[16])
    cfg = OptimConfig(name="adam", lr=1e-2)
    opt = build_optimizer(student, cfg)
    state = TrainState(student, opt, build_scheduler(opt, cfg, 30, 1))
    loop = LoopConfig(epochs=1, batch_size=64, data_seed=0, T=4.0, alpha=0.9)
    fit(state, digits, loop, teacher, on_epoch=lambda record: None)


def test_teacher_weights_and_running_stats_unchanged_after_student_training(digits) -> None:
    teacher = FrozenTeacher(_bn_dropout_teacher(digits.info))
    before = _snapshot(teacher)
    teacher.train()  # whatever is called on it, it stays in eval mode
    _train_student(digits, teacher)
    after = _snapshot(teacher)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


class _UnfrozenTeacher(nn.Module):
    """A teacher as it would be without FrozenTeacher: the model in train mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.train()

    def batch_logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x)


def test_control_an_unfrozen_teacher_would_change(digits) -> None:
    """The comparison above can fail: the same model, not frozen and in train mode, has its
    BatchNorm running statistics moved by the student's batches."""
    model = _bn_dropout_teacher(digits.info)
    before = _snapshot(model)
    _train_student(digits, _UnfrozenTeacher(model))
    after = _snapshot(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)


def test_frozen_teacher_is_deterministic_and_gradient_free(digits) -> None:
    teacher = FrozenTeacher(_bn_dropout_teacher(digits.info))
    teacher.train(True)
    x = torch.randn(8, *digits.info.in_shape)
    a, b = teacher(x), teacher(x)
    assert torch.equal(a, b)  # dropout off
    assert not a.requires_grad


def test_teacher_from_weights_file_and_class_mismatch(tmp_path, digits) -> None:
    model = build_model("mlp", digits.info.in_shape, 10, hidden_sizes=[8])
    path = tmp_path / "t.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(DistillError) as exc:
        load_teacher(str(path), None, digits.info, tmp_path)
    assert str(exc.value) == (f"--teacher {path}: a weights file needs --teacher-model <name> "
                              f"(see `distill models`)")
    # a 10-class state dict does not fit a default mlp: refused with the file named
    with pytest.raises(DistillError, match="the weights do not fit model 'mlp'"):
        load_teacher(str(path), "mlp", digits.info, tmp_path)
    eleven = build_model("mlp", digits.info.in_shape, 11)
    torch.save(eleven.state_dict(), tmp_path / "eleven.pt")
    with pytest.raises(DistillError, match="size mismatch"):
        load_teacher(str(tmp_path / "eleven.pt"), "mlp", digits.info, tmp_path)
    full = build_model("mlp", digits.info.in_shape, 10)
    save_file(full.state_dict(), str(tmp_path / "full.safetensors"))
    teacher, source = load_teacher(str(tmp_path / "full.safetensors"), "mlp", digits.info, tmp_path)
    assert isinstance(teacher, FrozenTeacher) and source.kind == "weights"
    assert len(source.sha256) == 64


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": _Boom()}, tmp_path / "evil.pt")
    with pytest.raises(DistillError, match="refused or unreadable as a weights-only state dict"):
        read_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_a_teacher_trained_on_another_split_is_flagged_once(tmp_path, monkeypatch) -> None:
    """A teacher trained with no validation split (or with another data_seed) has seen the
    student's validation images: the student says so on stderr (quiet or not, once per
    process, as a sweep's cells would repeat it). A teacher of the student's own split, or
    of a larger validation split carved from the same order (a superset of the student's),
    draws no warning."""
    from typer.testing import CliRunner

    import distill.teacher as teacher_module
    from distill.cli import app

    monkeypatch.setattr(teacher_module, "_WARNED", set())
    runner = CliRunner()
    common = ["--epochs", "1", "--output-dir", str(tmp_path), "--wandb", "disabled", "-q"]
    for name, split in (("all", ["--val-size", "0"]), ("same", []),
                        ("larger-val", ["--val-size", "300"]),
                        ("other-seed", ["--set", "data.data_seed=1"])):
        assert runner.invoke(app, ["teach", "--name", name, *split, *common]).exit_code == 0

    def warning(val: int, seed: int) -> str:
        return (f"warning: the teacher was trained on another split (val {val}, data_seed "
                f"{seed}) than this run's (val 144, data_seed 0): it may have seen this run's "
                "validation images, so what validation picks may favour it; train the teacher "
                "with the same data.val_size and data.data_seed to rule that out")

    for name, teacher, said in (("s1", "same", None), ("s2", "larger-val", None),
                                ("s3", "all", warning(0, 0)), ("s4", "all", None),
                                ("s5", "other-seed", warning(144, 1))):
        result = runner.invoke(app, ["student", "--teacher", str(tmp_path / teacher), "--name",
                                     name, *common])
        assert result.exit_code == 0, result.output
        err = " ".join(result.stderr.split())
        assert (said in err) if said else ("warning:" not in err), (name, result.stderr)


def test_a_student_without_teacher_takes_the_newest_finished_teacher_of_its_dataset(
        tmp_path) -> None:
    """Two digits teachers, named so that name order is the reverse of finishing order, then
    a newer teacher of another dataset: the student picks the newest digits one."""
    import json

    from typer.testing import CliRunner

    from distill.cli import app
    from test_on_disk import noisy_image_folder

    runner = CliRunner()
    common = ["--epochs", "1", "--output-dir", str(tmp_path / "out"), "--wandb", "disabled",
              "-q"]
    folder = noisy_image_folder(tmp_path / "rgb")
    for name, more in (("b-older", []), ("a-newer", []),
                       ("z-other-data", ["--dataset", f"imagefolder:{folder}"])):
        result = runner.invoke(app, ["teach", "--name", name, *more, *common])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["student", "--name", "s", *common])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "s" / "summary.json").read_text())
    assert summary["teacher"]["location"] == str(tmp_path / "out" / "a-newer")
