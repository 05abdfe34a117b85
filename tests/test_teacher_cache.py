"""The teacher-logits cache: computed once, reused with zero teacher forwards, invalidated by
any change of teacher, data or preprocessing, and equal to running the teacher per batch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import distill.api as api
from distill.data import load_data, num_batches
from distill.engine import LoopConfig, TrainState, fit, predict
from distill.models import build_model
from distill.optim import build_optimizer, build_scheduler
from distill.recipe import DataConfig, OptimConfig
from distill.teacher import FrozenTeacher, load_teacher
from distill.teacher_cache import FOLDER, cache_key, teacher_logits

SMALL = {"student.model.hidden_sizes": [16], "student.epochs": 2}


@pytest.fixture
def forwards(monkeypatch) -> list[int]:
    """Counts every forward of any teacher's network (training batches, evaluation, the
    cost profile): one entry per call of the wrapped model."""
    calls: list[int] = []
    original = FrozenTeacher.__init__

    def counting_init(self, model):
        original(self, model)
        model.register_forward_hook(lambda *_: calls.append(1))

    monkeypatch.setattr(FrozenTeacher, "__init__", counting_init)
    return calls


def _teach(out: Path, seed: int, name: str) -> Path:
    return api.teach(overrides={"teacher.epochs": 2, "output_dir": str(out), "seed": seed},
                     name=name, quiet=True).run_dir


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("teachers")
    return _teach(out, 0, "t0"), _teach(out, 1, "t1")


def _sweep(out: Path, teacher: Path, name: str, mode: str = "batched"):
    return api.sweep(overrides={**SMALL, "output_dir": str(out), "student.teacher": str(teacher)},
                     Ts=[2.0, 4.0], alphas=[0.5], seeds=[0], mode=mode, name=name, quiet=True)


def test_a_second_sweep_runs_the_teacher_zero_times(tmp_path, teachers, forwards) -> None:
    first, other = teachers
    _sweep(tmp_path, first, "one")
    assert len(forwards) > 0  # the first sweep computed the logits...
    stored = list((first / FOLDER).glob("*.safetensors"))
    assert len(stored) == 1  # ...once, into the teacher's run folder
    forwards.clear()
    again = _sweep(tmp_path, first, "two")
    assert len(forwards) == 0
    seq = _sweep(tmp_path, first, "three", mode="sequential")
    assert len(forwards) == 0
    api.student(overrides={**SMALL, "output_dir": str(tmp_path), "student.teacher": str(first)},
                quiet=True)
    assert len(forwards) == 0
    # the teacher's figures in the students' summaries are still the teacher's own
    teacher_test = json.loads((first / "summary.json").read_text())["test"]
    for sweep in (again, seq):
        cell = json.loads((sweep.sweep_dir / "T2-a0.5-s0" / "summary.json").read_text())
        assert cell["teacher"]["test"]["accuracy"] == teacher_test["accuracy"]
        assert cell["teacher"]["test"]["nll"] == pytest.approx(teacher_test["nll"], rel=1e-5)
    # a changed teacher is a new key: computed again, into its own folder
    _sweep(tmp_path, other, "four")
    assert len(forwards) > 0
    assert len(list((other / FOLDER).glob("*.safetensors"))) == 1


def test_the_cache_key_changes_with_teacher_data_and_preprocessing(teachers) -> None:
    data = load_data(DataConfig())
    _, source = load_teacher(str(teachers[0]), None, data.info, teachers[0].parent)
    key = cache_key(source, data)
    assert cache_key(source, data) == key  # stable
    other_teacher = dataclasses.replace(source, sha256="0" * 64)
    other_split = load_data(DataConfig(data_seed=1))  # another validation split
    other_subset = load_data(DataConfig(subset=500))
    shifted = dataclasses.replace(data, info=dataclasses.replace(
        data.info, mean=tuple(m + 0.01 for m in data.info.mean)))
    touched = load_data(DataConfig())
    touched.train.images[0, 0, 0, 0] ^= 1  # one pixel of one training image
    keys = {cache_key(other_teacher, data), cache_key(source, other_split),
            cache_key(source, other_subset), cache_key(source, shifted),
            cache_key(source, touched), cache_key(source, data, device="cuda")}
    assert key not in keys and len(keys) == 6


def test_the_same_images_read_from_elsewhere_keep_their_cache_key(tmp_path, teachers) -> None:
    """Images held in memory are keyed by their pixels, so a copy at another path hits the
    cache; files left on disk are keyed by their listing there (path included)."""
    import shutil

    from test_data import image_folder, write_png

    _, source = load_teacher(str(teachers[0]), None, load_data(DataConfig()).info,
                             teachers[0].parent)
    a = image_folder(tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "b")

    def key(root: Path, **kw) -> str:
        return cache_key(source, load_data(DataConfig(name=f"imagefolder:{root}", val_size=2,
                                                      **kw)))

    assert key(a) == key(b)
    assert key(a, in_memory=False) != key(b, in_memory=False)
    write_png(b / "train" / "cat" / "000.png", (10, 10), (0, 0, 0))  # one image replaced
    assert key(a) != key(b)


def test_cached_logits_are_the_teachers_and_train_the_same_student(tmp_path, teachers) -> None:
    """Index for index, the cache holds what the teacher outputs; a student trained from it
    equals one trained with the teacher run on every batch, and one trained from the cache
    with its rows out of place does not (so the comparison can fail)."""
    data = load_data(DataConfig())
    teacher, source = load_teacher(str(teachers[0]), None, data.info, tmp_path)
    cached = teacher_logits(teacher, source, data, tmp_path)
    assert torch.allclose(cached.train, predict(teacher, data.train, data.info), atol=1e-5)
    assert torch.allclose(cached.test, predict(teacher, data.test, data.info), atol=1e-5)

    def train(train_logits) -> dict[str, torch.Tensor]:
        teacher.use_cached(train_logits)
        torch.manual_seed(0)
        model = build_model("mlp", data.info.in_shape, 10, hidden_sizes=[16])
        cfg = OptimConfig(name="adam", lr=3e-3)
        opt = build_optimizer(model, cfg)
        state = TrainState(model, opt, build_scheduler(opt, cfg, 30, 3))
        fit(state, data, LoopConfig(epochs=3, batch_size=64, data_seed=0, T=4.0, alpha=1.0),
            teacher, on_epoch=lambda record: None)
        return model.state_dict()

    live, from_cache = train(None), train(cached.train)
    shuffled = train(cached.train.roll(1, dims=0))
    assert all(torch.allclose(live[k], from_cache[k], atol=1e-5) for k in live)
    assert not all(torch.allclose(live[k], shuffled[k], atol=1e-3) for k in live)


def test_a_student_with_dropout_is_the_same_whether_the_cache_existed_or_not(
        tmp_path, teachers) -> None:
    """Computing the cache (the teacher's evaluation and cost profile) happens between the
    run's seeding and its training: it must not move the RNG that draws dropout masks."""
    import shutil

    from safetensors.torch import load_file

    shutil.rmtree(teachers[1] / FOLDER, ignore_errors=True)  # left by an earlier test
    overrides = {**SMALL, "output_dir": str(tmp_path), "student.teacher": str(teachers[1]),
                 "student.model.dropout": 0.3}
    runs = []
    for name in ("computes-the-cache", "reads-the-cache"):
        runs.append(api.student(overrides=overrides, name=name, quiet=True).run_dir)
        assert len(list((teachers[1] / FOLDER).glob("*.safetensors"))) == 1
    first, second = (load_file(str(run / "model.safetensors")) for run in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_damaged_cache_file_is_computed_again(tmp_path, teachers, forwards) -> None:
    data = load_data(DataConfig())
    teacher, source = load_teacher(str(teachers[0]), None, data.info, tmp_path)
    first = teacher_logits(teacher, source, data, tmp_path)  # created by the sweep test or now
    first.path.write_bytes(b"not a safetensors file")
    forwards.clear()
    messages = []

    class Console:
        def print(self, text, **_):
            messages.append(text)

    again = teacher_logits(teacher, source, data, tmp_path, console=Console())
    assert again.computed and len(forwards) > 0
    assert messages[0] == f"teacher logits: {first.path} is unreadable; computing them again"
    assert torch.equal(again.train, first.train)
    assert not teacher_logits(teacher, source, data, tmp_path).computed  # stored again


def test_the_cache_can_be_turned_off(tmp_path, teachers, forwards) -> None:
    run = api.student(overrides={**SMALL, "output_dir": str(tmp_path),
                                 "student.teacher": str(teachers[1]),
                                 "student.teacher_cache": False}, quiet=True)
    batches = num_batches(len(load_data(DataConfig()).train), 64)
    assert len(forwards) > 2 * batches  # per training batch, plus its evaluation
    assert run.summary["teacher"]["test"]["accuracy"] > 0.5


def test_an_augmented_student_runs_the_teacher_on_its_batches(tmp_path, teachers,
                                                              forwards) -> None:
    """Augmented training images are new every epoch: the cached train logits cannot serve
    them, so the teacher runs per batch (its validation/test logits still come cached)."""
    common = {**SMALL, "output_dir": str(tmp_path), "student.teacher": str(teachers[0])}
    api.student(overrides=common, quiet=True)  # make sure the cache exists
    forwards.clear()
    api.student(overrides={**common, "student.augment.jitter": 1}, quiet=True)
    batches = num_batches(len(load_data(DataConfig()).train), 64)
    assert len(forwards) == 2 * batches  # exactly one forward per training batch
