"""torchrun on CPU (gloo, 2 processes): one run folder, weights equal to one process with the
same global batch, checkpoints that resume under DDP and in a single process.

Digits with 145 validation images leaves 1293 training images: 20 batches of 64 and a last
one of 13, which the two ranks split 7 + 6, so the loss scaling of unequal shards is
exercised too (the default 144 would leave 14, split evenly). Dropout is off (each
rank draws its own masks), so the runs can be compared weight for weight with one process;
one test turns it on to compare a resumed torchrun run with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from distill.checkpoint import KILL_AFTER_SAVE_ENV, LAST
from distill.cli import app

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "distill"]
# checkpoints at steps 7 and 14 of each 21-step epoch, and at each epoch end
TEACH = ["teach", "--epochs", "2", "--val-size", "145", "--device", "cpu", "--wandb", "disabled",
         "-q",
         "--checkpoint-every", "7", "--set", "teacher.model.dropout=0",
         "--set", "teacher.model.hidden_sizes=[64]"]
STUDENT = ["student", "--epochs", "2", "--device", "cpu", "--wandb", "disabled", "-q"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=600)


def single(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def close(a: Path, b: Path, atol: float = 1e-5) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0)
                                          for k in wa)


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ddp")
    ddp = torchrun(*TEACH, "--output-dir", str(out / "ddp"), "--name", "t")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single(*TEACH, "--output-dir", str(out / "one"), "--name", "t")
    single(*TEACH, "--output-dir", str(out / "seed1"), "--name", "t", "--seed", "1")
    return {"ddp": out / "ddp" / "t", "one": out / "one" / "t", "seed1": out / "seed1" / "t",
            "out": out}


def test_torchrun_writes_one_run_folder(runs) -> None:
    assert [p.name for p in (runs["out"] / "ddp").iterdir()] == ["t"]
    run = runs["ddp"]
    assert len(metrics(run)) == 2 and (run / "summary.json").is_file()
    assert len(list(runs["out"].rglob("metrics.jsonl"))) == 3  # ddp, one, seed1: one each
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["n"] == 359  # every test image counted once
    assert summary["data"]["train"] == 1293  # the last batch is 13: unequal shards


def test_two_processes_equal_one_with_the_same_global_batch(runs) -> None:
    assert close(runs["ddp"], runs["one"])
    assert not close(runs["ddp"], runs["seed1"], atol=1e-2)  # the comparison can fail
    assert len(metrics(runs["ddp"])) == len(metrics(runs["one"])) == 2
    for a, b in zip(metrics(runs["ddp"]), metrics(runs["one"])):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)  # over all ranks
        assert a["val_accuracy"] == b["val_accuracy"]


def test_a_student_under_torchrun_equals_one_process(runs) -> None:
    """With SGD, not Adam: Adam's step does not change when every gradient is scaled, so only
    SGD sees a rank that trains on the whole global batch instead of its shard (the loss
    scaling then doubles each rank's gradient)."""
    out = runs["out"]
    teacher = str(runs["one"])
    sgd = ["--teacher", teacher, "--val-size", "145", "--set", "student.optim.name=momentum",
           "--set", "student.optim.lr=0.05"]
    ddp = torchrun(*STUDENT, *sgd, "--output-dir", str(out / "sd"), "--name", "s")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single(*STUDENT, *sgd, "--output-dir", str(out / "s1"), "--name", "s")
    assert close(out / "sd" / "s", out / "s1" / "s")
    ddp_soft = [m["train_soft"] for m in metrics(out / "sd" / "s")]
    assert ddp_soft == pytest.approx([m["train_soft"] for m in metrics(out / "s1" / "s")],
                                     rel=1e-4)


def test_a_ddp_checkpoint_resumes_in_one_process_and_under_torchrun(runs) -> None:
    """Rank 0 is SIGKILLed right after its 2nd checkpoint (step 14, mid-epoch 1); the run
    then finishes in one process, or under torchrun again, equal to the uninterrupted run."""
    out = runs["out"]
    for name in ("kill-a", "kill-b"):
        killed = torchrun(*TEACH, "--output-dir", str(out / "k"), "--name", name,
                          env={KILL_AFTER_SAVE_ENV: "2"})
        assert killed.returncode != 0
        assert (out / "k" / name / LAST).is_file()
        assert not (out / "k" / name / "summary.json").exists()
    single("teach", "--resume", str(out / "k" / "kill-a"), "-q", "--wandb", "disabled")
    again = torchrun("teach", "--resume", str(out / "k" / "kill-b"), "-q", "--wandb", "disabled")
    assert again.returncode == 0, again.stderr[-3000:]
    for name, world in (("kill-a", 1), ("kill-b", 2)):
        run = out / "k" / name
        assert close(run, runs["one"]), name
        resumed = json.loads((run / "summary.json").read_text())["resumes"]
        assert [(r["step"], r["world_size"]) for r in resumed] == [(14, world)]
        assert len(metrics(run)) == 2, name  # each epoch logged once
        for a, b in zip(metrics(run), metrics(runs["one"])):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4), name


def test_a_ddp_run_with_dropout_resumes_drawing_the_masks_it_would_have(tmp_path) -> None:
    """Every rank's random stream is in the checkpoint: killed right after its step-14
    checkpoint and resumed on two ranks again, a run with dropout ends with the weights of
    the run never stopped (rank 1 would otherwise restart its stream from the step, drawing
    other masks from there on)."""
    dropout = [arg if arg != "teacher.model.dropout=0" else "teacher.model.dropout=0.3"
               for arg in TEACH]
    whole = torchrun(*dropout, "--output-dir", str(tmp_path), "--name", "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = torchrun(*dropout, "--output-dir", str(tmp_path), "--name", "cut",
                      env={KILL_AFTER_SAVE_ENV: "2"})
    assert killed.returncode != 0 and not (tmp_path / "cut" / "summary.json").exists()
    again = torchrun("teach", "--resume", str(tmp_path / "cut"), "-q", "--wandb", "disabled")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("epoch_seconds", "images_per_second")
    logged = [[{k: v for k, v in r.items() if k not in timing} for r in metrics(tmp_path / run)]
              for run in ("whole", "cut")]
    assert logged[0] == logged[1] and len(logged[0]) == 2


def test_ranks_other_than_0_draw_their_own_dropout_masks() -> None:
    from distill.distributed import World, seed_rank

    def draw(rank: int | None) -> torch.Tensor:
        torch.manual_seed(0)
        seed_rank(None if rank is None else World(rank, 2, rank), seed=0, step=0)
        return torch.rand(5)

    assert torch.equal(draw(0), draw(None))  # rank 0 keeps the single-process stream
    assert not torch.equal(draw(1), draw(0))


def test_augmented_training_under_torchrun_equals_one_process(runs) -> None:
    """Jitter draws are made for the global batch and each rank takes its rows, so two
    augmenting processes still follow one."""
    out = runs["out"]
    jitter = ["--set", "teacher.augment.jitter=2", "--checkpoint-every", "100"]
    ddp = torchrun(*TEACH, *jitter, "--output-dir", str(out / "aug"), "--name", "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single(*TEACH, *jitter, "--output-dir", str(out / "aug"), "--name", "one")
    assert close(out / "aug" / "ddp", out / "aug" / "one")
    assert not close(out / "aug" / "one", runs["one"], atol=1e-2)  # jitter changed training


MAIN_FIRST = """
import os, sys, time
from pathlib import Path
from distill.distributed import main_first, setup, teardown

world, _ = setup("cpu")
log = Path(sys.argv[1])
try:
    with main_first(world):
        with log.open("a") as f:
            f.write(f"start {world.rank}\\n")
        time.sleep(1.0)  # long enough for the other rank to overtake, were it let
        with log.open("a") as f:
            f.write(f"end {world.rank}\\n")
        if world.is_main and sys.argv[2] == "fail":
            raise RuntimeError("rank 0 failed")
except RuntimeError:
    pass
with log.open("a") as f:
    f.write(f"after {world.rank}\\n")
teardown(world)
"""


@pytest.mark.parametrize("rank0", ["ok", "fail"])
def test_rank_0_fills_caches_before_the_others_start(tmp_path: Path, rank0: str) -> None:
    script, log = tmp_path / "main_first.py", tmp_path / "log"
    script.write_text(MAIN_FIRST)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script), str(log), rank0],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log.read_text().splitlines()
    # rank 1 enters the block only after rank 0 has left it (also when rank 0's block raised)
    assert lines.index("start 1") > lines.index("end 0"), lines
    # and rank 0 goes on only when rank 1 is out too (no training collective waits meanwhile)
    assert lines.index("after 0") > lines.index("end 1"), lines
    assert sorted(lines) == sorted(["start 0", "end 0", "after 0",
                                    "start 1", "end 1", "after 1"])


# logs which rank decodes the images, computes the teacher's logits, and stores which file
COUNT_CACHE_WORK = """
import os
import distill.data as data
import distill.teacher_cache as teacher_cache


def logged(module, name, what):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        with open(os.environ["CACHE_WORK_LOG"], "a") as log:
            log.write(f"{os.environ.get('RANK', '-')} {what(args)}\\n")
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


logged(data, "store_cache_file", lambda args: f"store {args[0]}")
logged(data, "_decode_images", lambda args: "decode")
logged(teacher_cache, "_compute", lambda args: "teacher logits")
"""


def test_under_torchrun_rank_0_computes_each_cache_once_and_rank_1_reads_it(tmp_path) -> None:
    """A student on a cold cache (an image folder never decoded, a teacher whose logits were
    never stored): rank 0 decodes the images, computes the logits and writes each cache file
    once; rank 1 does none of it (it reads the files)."""
    from test_recipes_smoke import tiny_image_folder

    data = tiny_image_folder(tmp_path / "images")
    common = ["--dataset", f"imagefolder:{data}", "--epochs", "1", "--val-size", "10",
              "--device", "cpu", "--wandb", "disabled", "-q", "--output-dir", str(tmp_path)]
    teacher = subprocess.run([sys.executable, "-m", "distill", "teach", *common, "--name", "t"],
                             capture_output=True, text=True, timeout=300,
                             env={**ENV, "DISTILL_CACHE_DIR": str(tmp_path / "teacher-cache")})
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    hook, log = tmp_path / "hook", tmp_path / "work.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNT_CACHE_WORK)
    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cold"), "CACHE_WORK_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    ddp = torchrun(*STUDENT, *common, "--name", "s",
                   "--teacher", str(tmp_path / "t"), env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    work = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert {rank for rank, _ in work} == {"0"}, work
    done = [what for _, what in work]
    assert done.count("teacher logits") == 1 and done.count("decode") >= 1, work
    stored = [what for what in done if what.startswith("store ")]
    assert len(stored) == len(set(stored)), work  # each file once
    assert any("/cold/imagefolder/" in p for p in stored), work  # the decoded images
    assert any("/t/teacher-logits/" in p for p in stored), work  # the teacher's logits
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["teacher"]["location"] == str(tmp_path / "t")
