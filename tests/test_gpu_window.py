"""benchmarks/gpu_window.sh, the plan for a short GPU lease, run on the CPU on tiny data: the
staging here and every step there (with a python3 that, like the GPU machine's, lacks the
distill package), each leaving one archive of results, with no checkpoint but the newest of a
CIFAR run cut short."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import yaml

from test_data import fake_mnist
from test_recipes_smoke import tiny_image_folder

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_window.sh"


def fake_shared_data(root: Path) -> Path:
    """A folder shaped like ../shared/data: mnist/ (tiny IDX files) and cifar10-jpeg.tar.gz."""
    data = root / "data"
    fake_mnist(data, n_train=300, n_test=100)
    images = tiny_image_folder(root / "images")
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(images / split, arcname=split)
    return data


def device_like_path(root: Path) -> str:
    """A PATH like the GPU machine's: its python3 has this interpreter's packages (torch,
    pydantic, ...) but not the distill package, and there is no `distill` or `python`."""
    venv = root / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    # a path a .pth file adds is not a site folder: the editable install's hook stays unread
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "outer.pth").write_text("\n".join(sorted(paths)) + "\n")
    (venv / "bin" / "python").unlink()
    bare = f"{venv / 'bin'}:/usr/bin:/bin"
    probe = subprocess.run(["python3", "-c", "import torch, pydantic, distill"], cwd=root,
                           env={"PATH": bare}, capture_output=True, text=True)
    assert "No module named 'distill'" in probe.stderr, probe.stderr
    return bare


def call(env: dict[str, str], *args: str, status: int = 0) -> str:
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == status, done.stdout + done.stderr
    return done.stdout


def staged(tmp_path: Path, **more: str) -> tuple[dict[str, str], Path, Path]:
    """The environment of a call (stage, result folder and link in tmp_path, the device's
    PATH, this machine's pydantic, plus ``more``) after the stage step has run: (env, stage
    folder, result folder)."""
    data = fake_shared_data(tmp_path / "shared")
    stage, results = tmp_path / "stage", tmp_path / "results"
    (tmp_path / "tmp").mkdir()  # the call's temporary files, which must all go when it ends
    env = {**os.environ, "GPU_STAGE": str(stage), "OUT": str(results), "OMP_NUM_THREADS": "1",
           "GPU_LINK": str(tmp_path / "gpu-link"), "PATH": device_like_path(tmp_path),
           "WHEELS": "none", "TMPDIR": str(tmp_path / "tmp"), **more}
    assert "staged in" in call(env, "stage", str(data))
    return env, stage, results


def unpack(archive: Path, into: Path) -> Path:
    """Unpacks it, checking that it holds no checkpoint but checkpoint-last.pt of a run folder
    without summary.json (one cut short, to resume)."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert not [n for n in names if n.endswith(".tmp")], names
        for name in (n for n in names if n.endswith(".pt")):
            folder = name.rsplit("/", 1)[0]
            assert name.endswith("/checkpoint-last.pt") and f"{folder}/summary.json" not in names
        # the "data" filter refuses links and paths out of `into`; Pythons older than 3.11.4
        # (3.10.12, ...), such as Debian 12's 3.11.2, lack extraction filters altogether
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, **safe)
    return into


def test_gpu_window_stages_here_and_every_step_returns_an_archive(tmp_path) -> None:
    env, stage, results = staged(
        tmp_path,
        STEP_LIMIT="840",  # the device's 540 s per step is for a GPU; a loaded CPU needs more
        BENCH_ARGS="--epochs 1 --subset 200 --test-subset 50 --val-size 10",
        EXTRA="--epochs 1 --set data.subset=200 --set data.test_subset=50 "
              "--set teacher.batch_size=16 --set student.batch_size=16")
    assert sorted(p.name for p in (stage / "data").iterdir()) == ["cifar10-jpeg.tar.gz", "mnist"]

    call(env, "first")  # speed, then hinton, in one call and one archive
    speed = unpack(results / "first.tar.gz", tmp_path / "first")
    for name in ("speed-mnist", "speed-cifar"):
        figures = json.loads((speed / f"{name}.json").read_text())
        assert figures["results"]["reference"]["student_seconds"] > 0, figures
        assert figures["results"]["pipeline"]["student_seconds"] > 0, figures
    times = (speed / "times.txt").read_text()
    assert "speed-mnist: exit 0" in times and "speed-cifar: exit 0" in times
    assert "hinton: exit 0" in times
    # the benchmarks' run folders (over 100 MB each on full MNIST) filled a disk once;
    # torch.compile's cache (torchinductor_<user>) is meant to stay and be shared
    left = [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchind")]
    assert not left

    hinton = speed / "runs" / "mnist"
    assert not list(hinton.rglob("*.safetensors"))  # MNIST weights would outgrow 16 MiB
    assert sorted(p.name for p in hinton.iterdir() if p.is_dir()) == [
        "mnist-baseline-s0", "mnist-distilled-val-s0", "mnist-teacher-s0"]
    summaries = {p.name: json.loads((p / "summary.json").read_text())
                 for p in hinton.iterdir() if p.is_dir()}
    assert summaries["mnist-baseline-s0"]["kd"]["alpha"] == 0.0
    assert summaries["mnist-distilled-val-s0"]["kd"] == {"T": 20.0, "alpha": 0.5}
    # timed whole in one call, without the teacher's weights: never carried to the next
    assert call(env, "unpack", str(results / "first.tar.gz"), status=2).strip() == (
        f"unpack: no CIFAR runs in {results / 'first.tar.gz'} (only the cifar step's "
        "archives go on in a later call)")

    env["EXTRA"] += " --set data.val_size=10"  # the CIFAR recipe holds 5000 out
    here = stage  # as .gpu/ here: each call runs on a copy of it at a path of its own

    def device_call(n: int, status: int = 0, **more: str) -> Path:
        """One CIFAR call on a fresh machine whose checkout is elsewhere (GPU_LINK stays the
        same): the stage copied to a new path and removed after the call; then, here, its
        archive unpacked into the stage by the unpack step. Returns the archive unpacked apart."""
        device = tmp_path / f"device-{n}"
        shutil.copytree(here, device)
        call({**env, "GPU_STAGE": str(device), **more}, "cifar", "1", status=status)
        shutil.rmtree(device)
        assert "unpacked into" in call(env, "unpack", str(results / "cifar-s1.tar.gz"))
        return unpack(results / "cifar-s1.tar.gz", tmp_path / f"archive-{n}")

    # call 1 runs out of time while teacher and baseline train (each killed after its first
    # checkpoint): the step fails, and their newest checkpoints come back to resume from
    cut = device_call(1, status=1, DISTILL_TEST_KILL_AFTER_SAVE="1")
    assert sorted(str(p.relative_to(cut)) for p in cut.rglob("*.pt")) == [
        "runs/cifar/cifar-students/cifar-baseline-s1/checkpoint-last.pt",
        "runs/cifar/cifar-teachers/cifar-teacher-s1/checkpoint-last.pt"]
    assert "cifar-teacher-s1 failed" in (cut / "cifar-s1.log").read_text()
    # call 2 resumes both; they finish, and the distilled student is cut short in turn
    cifar = device_call(2, status=1, DISTILL_TEST_KILL_AFTER_SAVE="1")
    log = (cifar / "cifar-s1.log").read_text()
    assert "cifar-teacher-s1: stopped earlier, resuming" in log
    assert "cifar-baseline-s1: stopped earlier, resuming" in log
    cifar = cifar / "runs" / "cifar"
    distilled = "cifar-students/cifar-distilled-T4-a0.5-s1"
    assert [str(p.relative_to(cifar)) for p in cifar.rglob("*.pt")] == [
        f"{distilled}/checkpoint-last.pt"]
    teacher = cifar / "cifar-teachers" / "cifar-teacher-s1"
    assert yaml.safe_load((teacher / "recipe.yaml").read_text())["seed"] == 1
    assert len(json.loads((teacher / "summary.json").read_text())["resumes"]) == 1
    assert (teacher / "model.safetensors").is_file()  # it can teach in the next call
    assert [p.name for p in cifar.rglob("*.safetensors")] == ["model.safetensors"]
    assert (cifar / "cifar-students" / "cifar-baseline-s1" / "summary.json").is_file()
    # here, the finished runs' checkpoints that call 1 brought back are dropped
    kept = here / "runs" / "cifar"
    assert [str(p.relative_to(kept)) for p in kept.rglob("*.pt")] == [
        f"{distilled}/checkpoint-last.pt"]
    # call 3 resumes the student from its teacher of call 2, and brings back only what was
    # unfinished when it began
    again = device_call(3)
    log = (again / "cifar-s1.log").read_text()
    assert "cifar-teacher-s1: finished earlier" in log
    assert f"{distilled.split('/')[1]}: stopped earlier, resuming" in log
    back = again / "runs" / "cifar"  # run folders; the logs beside them all come back
    assert [str(p.relative_to(back)) for p in back.glob("*/*") if p.is_dir()] == [distilled]
    student = json.loads((here / "runs" / "cifar" / distilled / "summary.json").read_text())
    assert student["kd"] == {"T": 4.0, "alpha": 0.5} and len(student["resumes"]) == 1
    # the runs know their teacher and data by the link's path, the same on every machine
    assert student["teacher"]["location"] == str(
        tmp_path / "gpu-link" / "runs/cifar/cifar-teachers/cifar-teacher-s1")
    assert not list(kept.rglob("*.pt"))
    assert not (tmp_path / "gpu-link-cifar10-jpeg").exists()  # the images do not stay


def test_gpu_window_names_what_staging_needs(tmp_path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "stage", str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "GPU_STAGE": str(tmp_path / "stage")})
    assert done.returncode == 2
    assert done.stdout.strip() == (f"stage: {tmp_path} needs mnist/ and cifar10-jpeg.tar.gz "
                                   "(see its README)")


def test_gpu_window_refuses_an_unknown_step_before_any_set_up(tmp_path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "sped"], capture_output=True, text=True,
                          env={**os.environ, "GPU_STAGE": str(tmp_path / "stage")})
    assert done.returncode == 2
    assert done.stdout.strip() == ("unknown step 'sped'; usage: gpu_window.sh stage [data "
                                   "folder] | speed | hinton | first | cifar <seed> | unpack <archive>")
    assert not (tmp_path / "stage").exists()


def test_unpack_says_why_an_archive_cannot_be_read(tmp_path) -> None:
    """A damaged archive fails with tar's own words, not as an archive without runs."""
    env, stage, _ = staged(tmp_path)
    broken = tmp_path / "cifar-s0.tar.gz"
    broken.write_bytes(b"not an archive")
    done = subprocess.run(["bash", str(SCRIPT), "unpack", str(broken)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no CIFAR runs" not in done.stdout
    assert "gzip" in done.stderr, done.stderr  # "gzip: stdin: not in gzip format"
    assert not (stage / "runs").exists()


def test_a_step_out_of_time_still_returns_its_archive_and_fails(tmp_path) -> None:
    """STEP_LIMIT holds a step under the device's 600 s per command: a benchmark that would
    outrun it is stopped by `timeout` when the step's time is up (exit 124, its log kept),
    what then has no time left is not started (exit 124, "no time left"), the archive of what
    there is still comes back, and the step's exit status says it failed."""
    bench = "--epochs 1000 --subset 200 --test-subset 50 --val-size 10"  # would outrun 50 s
    env, _, results = staged(tmp_path, STEP_LIMIT="50", BENCH_ARGS=bench)
    start = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), "speed"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert time.monotonic() - start < 50 + 30  # held to the limit, the archive's time aside
    assert done.returncode == 1, done.stdout + done.stderr
    speed = unpack(results / "speed.tar.gz", tmp_path / "speed")
    times = (speed / "times.txt").read_text()
    assert "speed-mnist: exit 124" in times and "speed-cifar: exit 124" in times, times
    assert (speed / "speed-mnist.log").read_text() != "no time left\n"  # started, then stopped
    assert (speed / "speed-cifar.log").read_text() == "no time left\n"


def test_a_cifar_archive_too_big_with_checkpoints_comes_back_without_them(tmp_path) -> None:
    """Checkpoints that would take the archive over what the device returns (GPU_FILE_KB,
    16 MiB there) are left out, so the call's logs and finished runs still come back, and the
    step fails, saying so. The runs here are cut short earlier (a 2 MB stand-in checkpoint
    each, which the resume refuses at once)."""
    env, stage, results = staged(tmp_path, GPU_FILE_KB="1000")
    for run in ("cifar-teachers/cifar-teacher-s0", "cifar-students/cifar-baseline-s0"):
        folder = stage / "runs" / "cifar" / run
        folder.mkdir(parents=True)
        (folder / "checkpoint-last.pt").write_bytes(os.urandom(2_000_000))
    out = call(env, "cifar", "0", status=1)
    back = unpack(results / "cifar-s0.tar.gz", tmp_path / "back")
    assert not list(back.rglob("*.pt")) and (back / "cifar-s0.log").is_file()
    assert ("packed again without them; the runs cut short resume from the checkpoint the "
            "stage had before this call, if any, else start again") in out
    assert "without them" in (back / "times.txt").read_text()
