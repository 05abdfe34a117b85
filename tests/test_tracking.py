"""Run folders, the metrics log, wandb modes, and wandb's offline run files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.checkpoint import KILL_AFTER_SAVE_ENV
from distill.cli import app
from distill.errors import DistillError
from distill.tracking import create_run_dir, git_state, resolve_mode


def read_wandb_records(path: Path) -> list:
    """Decode an offline ``run-*.wandb`` file: a 7-byte header, then LevelDB-style log blocks
    of 32 KiB whose records (4-byte checksum, 2-byte length, 1-byte type) hold protobuf
    ``Record`` messages, possibly split across blocks (types: 1 full, 2 first, 3 middle,
    4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
        elif kind == 0 and length == 0:
            pos += block - pos % block if pos % block else 0
    records = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def finished_wandb_records(path: Path, patience: float = 30.0) -> list:
    """The records of an offline run file once it holds its run and summary records.

    wandb's service process writes the file; on a loaded machine the last writes may land
    just after ``finish()`` returned (a sweep test once read a file without its run record
    under load, and passed when run again). The file is read again for up to ``patience``
    seconds; a file that never gets them fails with what it does hold."""
    import time

    deadline = time.monotonic() + patience
    while True:
        records = read_wandb_records(path)
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "summary"} <= kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"run", "summary"} <= kinds, (f"{path} ({path.stat().st_size} bytes) has no run or "
                                         f"summary record: {sorted(kinds)}")
    return records


def _key(item) -> str:
    """A history/summary/config item's key (wandb writes either ``key`` or ``nested_key``)."""
    return item.key or "/".join(item.nested_key)


def history_epochs(records: list) -> list:
    """The ``epoch`` values of a run file's history records, in order."""
    return [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "history"
            for i in r.history.item if _key(i) == "epoch"]


def test_wandb_offline_writes_run_files_with_the_final_metrics(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: auto would also pick offline
    result = CliRunner().invoke(app, ["teach", "--epochs", "2", "--wandb", "offline",
                                      "--output-dir", str(tmp_path / "out"), "--name", "run", "-q"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "out" / "run"
    files = list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = finished_wandb_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds
    assert history_epochs(records) == [1, 2]
    summary_values: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                summary_values[_key(item)] = json.loads(item.value_json)
    expected = json.loads((run / "summary.json").read_text())
    assert summary_values["test/accuracy"] == pytest.approx(expected["test"]["accuracy"])
    assert summary_values["weights_sha256"] == expected["weights_sha256"]
    run_record = next(r for r in records if r.WhichOneof("record_type") == "run").run
    assert run_record.job_type == "teach"
    config = {_key(i): json.loads(i.value_json) for i in run_record.config.update}
    assert config["teacher"]["epochs"] == 2 and config["data"]["name"] == "digits"
    artifacts = [r for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifacts and artifacts[0].artifact.type == "model"


@pytest.mark.parametrize("requested, env, reason", [
    ("offline", None, "as asked"),
    ("offline", "online", "as asked"),  # the recipe's or flag's mode wins over WANDB_MODE
    ("auto", "offline", "WANDB_MODE=offline"),
    ("auto", "dryrun", "WANDB_MODE=dryrun"),
    ("auto", None, "not logged in"),
])
def test_the_offline_notice_says_why(monkeypatch, requested, env, reason) -> None:
    """A user who asked for offline (or is logged in and set WANDB_MODE) is not told that
    they are not logged in."""
    from distill.tracking import offline_reason

    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert offline_reason(requested) == reason


@pytest.mark.parametrize("requested, env, key, expected", [
    ("disabled", "online", None, "disabled"),
    ("offline", None, "k", "offline"),
    ("auto", "disabled", "k", "disabled"),
    ("auto", None, "k", "online"),
    ("auto", None, None, "offline"),
    ("auto", "dryrun", "k", "offline"),
    ("auto", None, "netrc", "online"),  # logged in through a netrc file, no key
])
def test_wandb_mode_resolution(tmp_path, monkeypatch, requested, env, key, expected) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    if key == "netrc":  # ~/.netrc, where `wandb login` writes the key
        monkeypatch.delenv("NETRC")
        (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
        key = None
    for name, value in (("WANDB_MODE", env), ("WANDB_API_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert resolve_mode(requested) == expected


def test_runs_without_wandb_installed_when_tracking_is_off(tmp_path) -> None:
    """The GPU machines have no wandb: a disabled run must not need it, and an enabled one
    says how to fix it. (timm imports wandb opportunistically when it is installed, so the
    test hides it instead of checking sys.modules.)"""
    code = ("import sys; sys.modules['wandb'] = None; import distill.api as a\n"
            "a.teach(overrides={'teacher.epochs': 1, 'output_dir': sys.argv[1]}, "
            "wandb=sys.argv[2], quiet=True)\nprint('trained')")
    ok = subprocess.run([sys.executable, "-c", code, str(tmp_path), "disabled"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "trained"
    hide = tmp_path / "hide" / "wandb"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('wandb hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide")}
    out = tmp_path / "tracked"
    bad = subprocess.run([sys.executable, "-m", "distill", "teach", "--epochs", "1",
                          "--output-dir", str(out), "--wandb", "offline", "-q"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: wandb is not installed; install it (pip install "
                                  "wandb) or run with --wandb disabled")
    assert not out.exists() or not any(out.iterdir())  # refused before any run folder


def test_run_dirs_are_unique_and_never_reused(tmp_path) -> None:
    a = create_run_dir(tmp_path, "teach-digits")
    b = create_run_dir(tmp_path, "teach-digits")
    assert a != b and a.is_dir() and b.is_dir()
    create_run_dir(tmp_path, "x", name="fixed")
    with pytest.raises(DistillError, match="exists; runs are never overwritten"):
        create_run_dir(tmp_path, "x", name="fixed")


def test_git_state_says_when_the_working_tree_differs_from_the_commit(tmp_path) -> None:
    """A run records its commit and whether tracked files were edited: a commit alone does not
    rebuild a run made from an edited tree. Untracked files (outputs/, data/) do not count."""
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a checkout

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t",
                               "-c", "user.email=t@t", *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "recipe.yaml").write_text("lr: 0.05\n")
    git("add", "recipe.yaml")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "run.log").write_text("untracked\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "recipe.yaml").write_text("lr: 0.02\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": True}


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch) -> None:
    """A run killed after epoch 1 and resumed logs to the same wandb run id (the one kept in
    environment.json), and its second segment logs epoch 2 only."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # Each segment is its own process with its own wandb service, as for a user: a service an
    # earlier test started here (WANDB_SERVICE) would still hold the killed segment's run.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    teach = [sys.executable, "-m", "distill", "teach", "--wandb", "offline", "-q"]
    run = tmp_path / "out" / "run"
    killed = subprocess.run([*teach, "--epochs", "2", "--output-dir", str(run.parent), "--name",
                             "run"], capture_output=True, text=True,
                            env={**env, KILL_AFTER_SAVE_ENV: "1"})  # the end of epoch 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_id = json.loads((run / "environment.json").read_text())["wandb_id"]
    resumed = subprocess.run([*teach, "--resume", str(run)], capture_output=True, text=True,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))  # offline-run-<time>-<id>
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # one run, two segments
    assert history_epochs(finished_wandb_records(files[-1])) == [2]  # the resumed segment
