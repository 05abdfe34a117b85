"""`distill teach`, `distill student` and `distill eval` end to end on the embedded digits.

These run the real defaults a newcomer gets (the README's first command), on the CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from distill.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def only_run(out: Path, prefix: str) -> Path:
    runs = sorted(p for p in out.iterdir() if p.name.startswith(prefix))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("outputs")
    common = ["--output-dir", str(out), "--wandb", "disabled", "--quiet"]
    invoke("teach", *common)
    teacher = only_run(out, "teach-digits")
    invoke("student", "--T", "4", *common)
    student = only_run(out, "student-digits")
    invoke("student", "--T", "4", "--alpha", "1", "--name", "soft-only", *common)
    invoke("student", "--alpha", "0", "--name", "baseline", *common)
    return {"out": out, "teacher": teacher, "student": student,
            "soft_only": out / "soft-only", "baseline": out / "baseline"}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_run_folder_holds_everything(runs) -> None:
    for role in ("teacher", "student"):
        run = runs[role]
        for name in ("recipe.yaml", "environment.json", "metrics.jsonl", "model.safetensors",
                     "best.safetensors", "summary.json", "learning_curves.png",
                     "confusion_matrix.png"):
            assert (run / name).is_file(), (role, name)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in lines] == list(range(1, 31))
        assert {"train_loss", "val_loss", "val_accuracy"} <= lines[-1].keys()
        env = json.loads((run / "environment.json").read_text())
        assert env["packages"]["torch"] and env["device"] == "cpu"
        weights = load_file(str(run / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_teacher_learns(runs) -> None:
    assert summary(runs["teacher"])["test"]["accuracy"] >= 0.95


def test_student_reaches_90_percent_and_names_its_teacher(runs) -> None:
    s = summary(runs["student"])
    assert s["test"]["accuracy"] >= 0.90
    assert s["teacher"]["location"] == str(runs["teacher"])
    assert s["teacher"]["sha256"] == summary(runs["teacher"])["weights_sha256"]
    assert s["kd"] == {"T": 4.0, "alpha": 0.9}
    assert s["teacher"]["test"]["accuracy"] == summary(runs["teacher"])["test"]["accuracy"]
    assert 0.9 <= s["agreement_with_teacher"] <= 1.0
    assert s["profile"]["params"] < s["teacher"]["profile"]["params"] / 10


def test_the_temperature_flag_reaches_the_loss(runs, tmp_path) -> None:
    """--T 2 and --T 4 (the default) from one teacher, seed and batches: the summaries record
    each T and the weights differ, so the flag reached training, not only the recipe."""
    common = ["--teacher", str(runs["teacher"]), "--epochs", "2", "--output-dir", str(tmp_path),
              "--wandb", "disabled", "-q"]
    for T in ("2", "4"):
        invoke("student", "--T", T, "--name", f"T{T}", *common)
    assert [summary(tmp_path / f"T{T}")["kd"]["T"] for T in "24"] == [2.0, 4.0]
    a, b = (load_file(str(tmp_path / f"T{T}" / "model.safetensors")) for T in "24")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_soft_targets_alone_teach_the_student(runs) -> None:
    """alpha = 1: no label is ever seen, and the student still learns the digits."""
    s = summary(runs["soft_only"])
    assert s["kd"]["alpha"] == 1.0
    assert s["final_epoch"]["train_soft"] > 0
    assert s["test"]["accuracy"] >= 0.85


@pytest.mark.parametrize("alpha", [1.0, 0.9])
def test_with_alpha_1_the_training_labels_never_reach_the_weights(runs, tmp_path, monkeypatch,
                                                                   alpha) -> None:
    """Shuffling the training labels leaves an alpha = 1 student the same, weight for weight;
    the control: at alpha 0.9 the shuffle changes the student (so it did reach training)."""
    from distill import api
    from distill.data import load_data

    def shuffled_labels(cfg):
        bundle = load_data(cfg)
        order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))
        bundle.train.labels = bundle.train.labels[order]
        return bundle

    def student(name: str) -> dict[str, torch.Tensor]:
        run = api.student(overrides={"student.teacher": str(runs["teacher"]), "student.T": 4.0,
                                     "student.alpha": alpha, "student.epochs": 3,
                                     "output_dir": str(tmp_path)},
                          name=name, quiet=True, wandb="disabled").run_dir
        return load_file(str(run / "model.safetensors"))

    plain = student("plain")
    monkeypatch.setattr(api, "load_data", shuffled_labels)
    shuffled = student("shuffled")
    same = all(torch.equal(plain[k], shuffled[k]) for k in plain)
    assert same == (alpha == 1.0)


def test_best_on_validation_is_recorded_but_test_is_the_last_epoch(runs) -> None:
    s = summary(runs["student"])
    best = s["best_on_val"]
    lines = [json.loads(x) for x in (runs["student"] / "metrics.jsonl").read_text().splitlines()]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in lines)
    assert lines[best["epoch"] - 1]["val_accuracy"] == best["val_accuracy"]
    assert s["final_epoch"]["epoch"] == 30
    # best.safetensors holds that epoch's weights: they score its validation accuracy, and
    # they are not the last epoch's (which score less)
    from distill.data import load_data
    from distill.engine import predict
    from distill.models import build_model
    from distill.recipe import load_recipe

    recipe = load_recipe(str(runs["student"] / "recipe.yaml"))
    data = load_data(recipe.data)
    cfg = recipe.student
    accuracy, test_logits = {}, {}
    for weights in ("best", "model"):
        model = build_model(cfg.model.name, data.info.in_shape, data.info.num_classes,
                            **cfg.model.build_options())
        model.load_state_dict(load_file(str(runs["student"] / f"{weights}.safetensors")))
        val_logits = predict(model, data.val, data.info)
        hits = val_logits.argmax(1) == data.val.labels
        accuracy[weights] = hits.float().mean().item()
        test_logits[weights] = predict(model, data.test, data.info)
        if weights == "model":  # the last epoch's val_loss: cross-entropy on validation
            nll = torch.nn.functional.cross_entropy(val_logits.double(), data.val.labels)
            assert lines[-1]["val_loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert accuracy["best"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert accuracy["model"] == pytest.approx(lines[-1]["val_accuracy"], abs=1e-6)
    if best["val_accuracy"] > lines[-1]["val_accuracy"]:
        assert accuracy["best"] > accuracy["model"]
    # the test figures are the last epoch's weights (model.safetensors), not the best's (the
    # NLL tells them apart where their accuracies happen to tie)
    nll = {w: torch.nn.functional.cross_entropy(logits.float(), data.test.labels).item()
           for w, logits in test_logits.items()}
    assert nll["best"] != pytest.approx(nll["model"], abs=1e-4)
    assert s["test"]["nll"] == pytest.approx(nll["model"], abs=1e-5)


def test_the_best_weights_are_a_copy_that_later_training_does_not_change() -> None:
    """The best epoch's weights are kept apart from the live model: training on (here an
    in-place change of every parameter, as an optimizer step makes) leaves them as they
    were, and a later, better epoch replaces them."""
    from distill.engine import TrainState, _track_best
    from distill.models import build_model
    from distill.optim import build_optimizer, build_scheduler
    from distill.recipe import OptimConfig

    model = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[4])
    cfg = OptimConfig(name="adam", lr=1e-2)
    optimizer = build_optimizer(model, cfg)
    state = TrainState(model, optimizer, build_scheduler(optimizer, cfg, 10, 1))
    _track_best(state, {"epoch": 1, "val_accuracy": 0.5})
    at_epoch_1 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    _track_best(state, {"epoch": 2, "val_accuracy": 0.4})  # worse: epoch 1 stays
    assert state.best_epoch == 1
    assert all(torch.equal(state.best_weights[k], v) for k, v in at_epoch_1.items())
    _track_best(state, {"epoch": 3, "val_accuracy": 0.6})
    assert state.best_epoch == 3
    assert all(torch.equal(state.best_weights[k], v) for k, v in model.state_dict().items())


def test_eval_reproduces_the_summary_and_reports_gap(runs) -> None:
    result = invoke("eval", str(runs["student"]), "--baseline", str(runs["baseline"]), "--json")
    data = json.loads(result.stdout)
    s = summary(runs["student"])
    assert data["test"]["accuracy"] == pytest.approx(s["test"]["accuracy"], abs=1e-12)
    # accuracy can tie between epochs on 359 images; the NLL tells the last epoch's weights
    # (which eval must load) from the best epoch's
    assert data["test"]["nll"] == pytest.approx(s["test"]["nll"], abs=1e-9)
    # the teacher's figures against the teacher run's own evaluation (the student's summary
    # and eval may both read them from the teacher-logits cache), and the agreement, which
    # eval computes again from the student's and the teacher's test logits
    assert data["teacher"]["test"]["accuracy"] == pytest.approx(
        summary(runs["teacher"])["test"]["accuracy"], abs=1e-12)
    assert data["agreement_with_teacher"] == pytest.approx(s["agreement_with_teacher"],
                                                           abs=1e-12)
    assert 0.9 < s["agreement_with_teacher"] < 1  # the student is close to its teacher
    base = summary(runs["baseline"])["test"]["accuracy"]
    teacher = s["teacher"]["test"]["accuracy"]
    expected = (s["test"]["accuracy"] - base) / (teacher - base) if teacher != base else None
    assert data["gap_closed"] == pytest.approx(expected)
    for key in ("accuracy", "top5", "macro_f1", "nll", "ece"):
        assert key in data["test"]
    assert {"params", "macs_per_image", "latency_ms_per_batch"} <= data["profile"].keys()
    table = invoke("eval", str(runs["student"])).stdout
    assert re.search(r"accuracy\s.*%", table) and "agreement" in table


def test_a_run_folder_is_never_overwritten(runs) -> None:
    result = runner.invoke(app, ["student", "--name", "baseline", "--output-dir",
                                 str(runs["out"]), "--wandb", "disabled", "-q"])
    assert result.exit_code == 2
    assert (f"error: {runs['out'] / 'baseline'} exists; runs are never overwritten: choose "
            f"another --name") in result.stderr
    assert summary(runs["baseline"])["kd"]["alpha"] == 0.0


def test_seed_changes_init_but_not_batches(tmp_path, monkeypatch) -> None:
    """Two teachers that differ only in seed: other weights, same data order and split."""
    import distill.engine as engine

    orders: list[list[torch.Tensor]] = []
    real = engine.indexed_train_batches

    def recorded(*args, **kwargs):
        orders[-1].append([])
        for x, y, idx in real(*args, **kwargs):
            orders[-1][-1].append(idx.clone())
            yield x, y, idx

    monkeypatch.setattr(engine, "indexed_train_batches", recorded)
    common = ["--output-dir", str(tmp_path), "--wandb", "disabled", "-q", "--epochs", "1",
              "--set", "teacher.model.dropout=0"]
    for seed, name in (("1", "a"), ("2", "b"), ("1", "c")):
        orders.append([])
        invoke("teach", "--seed", seed, "--name", name, *common)
    (a_order,), (b_order,) = orders[0], orders[1]  # one epoch each: the batches' indices
    assert len(a_order) > 1 and all(torch.equal(i, j) for i, j in zip(a_order, b_order, strict=True))
    assert not torch.equal(a_order[0], torch.arange(len(a_order[0])))  # shuffled, though
    a, b, c = (load_file(str(tmp_path / n / "model.safetensors")) for n in "abc")
    assert all(torch.equal(a[k], c[k]) for k in a)  # same seed: bitwise the same run
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert summary(tmp_path / "a")["data_fingerprint"] == summary(tmp_path / "b")["data_fingerprint"]


def test_a_baseline_needs_no_teacher(tmp_path) -> None:
    invoke("student", "--alpha", "0", "--epochs", "2", "--name", "base", "--output-dir",
           str(tmp_path), "--wandb", "disabled", "-q")
    s = summary(tmp_path / "base")
    assert "teacher" not in s and "agreement_with_teacher" not in s
    assert s["kd"]["alpha"] == 0.0 and "train_soft" not in s["final_epoch"]


def test_a_recipes_label_smoothing_reaches_every_training_loss(tmp_path, monkeypatch) -> None:
    """teacher.label_smoothing and student.label_smoothing are what each run's loss gets."""
    import distill.engine as engine

    seen: list[float] = []
    original = engine.distillation_loss

    def recording(*args, **kwargs):  # the engine passes label_smoothing positionally, last
        seen.append(args[5] if len(args) > 5 else kwargs["label_smoothing"])
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "distillation_loss", recording)
    common = ["--epochs", "1", "--output-dir", str(tmp_path), "--wandb", "disabled", "-q"]
    invoke("teach", "--set", "teacher.label_smoothing=0.1", "--name", "t", *common)
    assert seen and set(seen) == {0.1}
    seen.clear()
    invoke("student", "--teacher", str(tmp_path / "t"), "--set", "student.label_smoothing=0.2",
           *common)
    assert seen and set(seen) == {0.2}


def test_eval_refuses_a_teacher_that_changed(tmp_path) -> None:
    common = ["--output-dir", str(tmp_path), "--wandb", "disabled", "-q", "--epochs", "1"]
    invoke("teach", "--name", "t", *common)
    invoke("student", "--name", "s", "--teacher", str(tmp_path / "t"), *common)
    weights = tmp_path / "t" / "model.safetensors"
    from safetensors.torch import save_file

    tensors = load_file(str(weights))
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, str(weights))
    result = runner.invoke(app, ["eval", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert result.stderr == (f"error: teacher {tmp_path / 't'} changed since {tmp_path / 's'} "
                             f"was trained (sha256 differs)\n")
