"""Run folders, the local metrics log (the source of truth), and wandb.

wandb is imported only when tracking is on, so the package runs where wandb is not
installed (with ``--wandb disabled``). Mode, in order of precedence: the recipe or
``--wandb`` flag when not ``auto``; then ``$WANDB_MODE``; then ``online`` when logged in
(``$WANDB_API_KEY`` or a wandb entry in ``~/.netrc``), else ``offline``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.atomic import write_whole
from distill.errors import DistillError
from distill.recipe import WandbConfig

METRICS = "metrics.jsonl"
_OFFLINE_NOTICE_SHOWN = False


def create_run_dir(output_dir: Path, prefix: str, name: str | None = None) -> Path:
    """Make a new run folder; an existing one is never reused or overwritten.

    With ``name`` the folder is exactly ``output_dir/name`` (an error if it exists); otherwise
    ``<prefix>-<YYYYmmdd-HHMMSS>`` with ``-2``, ``-3``, ... appended on a clash.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if name is not None:
        run = output_dir / name
        try:
            run.mkdir()
        except FileExistsError:
            raise DistillError(f"{run} exists; runs are never overwritten: choose another "
                               f"--name") from None
        return run
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        run = output_dir / (f"{prefix}-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise DistillError(f"{output_dir}: could not find a free run name for {prefix}")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(source: Path, *args: str) -> str | None:
    """``git -C source args`` output, or None where git or the repository is missing."""
    try:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(source: Path) -> dict[str, Any]:
    """The commit a run's code came from, and whether tracked files differed from it
    (``git_dirty``): a commit alone does not rebuild a run made from an edited working tree.
    Both None outside a git checkout (an installed wheel)."""
    commit = (_git(source, "rev-parse", "HEAD") or "").strip() or None
    status = _git(source, "status", "--porcelain", "--untracked-files=no")
    dirty = None if commit is None or status is None else bool(status.strip())
    return {"git_commit": commit, "git_dirty": dirty}


def environment(device: str) -> dict[str, Any]:
    """Versions, git commit, host and device: written to every run folder."""
    import torch

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in ("distill", "torch", "torchvision", "timm", "wandb")},
        **git_state(Path(__file__).resolve().parent.parent),
        "device": device,
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file of this process's own, then rename), so
    readers and other writers of the same file see one whole version or another."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    write_whole(path, lambda tmp: tmp.write_text(text))


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (logged after the checkpoint resumed from)."""
        kept = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_whole(self.path, lambda tmp: tmp.write_text(text))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; its epoch runs again on resume
        return records


def logged_in() -> bool:
    """Whether wandb has credentials here (without importing wandb)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(requested: str) -> str:
    """``online``, ``offline`` or ``disabled`` (see the module docstring for the order)."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if logged_in() else "offline"


def offline_reason(requested: str) -> str:
    """Why :func:`resolve_mode` chose ``offline`` for ``requested``: said so by the recipe or
    flag, by ``WANDB_MODE``, or (``auto`` with neither) no wandb login."""
    if requested == "offline":
        return "as asked"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if requested == "auto" and env in ("offline", "dryrun"):
        return f"WANDB_MODE={env}"
    return "not logged in"


def require_wandb(mode: str):
    """Import wandb for an enabled mode (None for ``disabled``); a clear error if missing."""
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise DistillError("wandb is not installed; install it (pip install wandb) or run "
                           "with --wandb disabled") from None
    return wandb


class Tracker:
    """One wandb run per training run (or nothing, when disabled)."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, job_type: str, config: dict[str, Any],
                 console=None, run_id: str | None = None) -> None:
        self.mode = resolve_mode(cfg.mode)
        self.run = None
        if self.mode == "disabled":
            return
        wandb = require_wandb(self.mode)
        self._wandb = wandb
        quiet = console is None or console.quiet
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group,
                              tags=cfg.tags or None, name=run_dir.name, job_type=job_type,
                              config=config, dir=str(run_dir), mode=self.mode,
                              reinit="finish_previous", id=run_id,
                              resume="allow" if run_id else None,
                              settings=wandb.Settings(quiet=True, silent=quiet))
        global _OFFLINE_NOTICE_SHOWN
        if self.mode == "offline" and not _OFFLINE_NOTICE_SHOWN and console is not None:
            _OFFLINE_NOTICE_SHOWN = True
            console.print(f"wandb: offline ({offline_reason(cfg.mode)}); upload later with: "
                          f"wandb sync {run_dir}/wandb/offline-run-*",
                          markup=False, highlight=False, soft_wrap=True)

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(record, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None and path.is_file():
            self.run.log({key: self._wandb.Image(str(path))})

    def log_weights(self, path: Path, name: str, metadata: dict[str, Any]) -> None:
        if self.run is None:
            return
        artifact = self._wandb.Artifact(name=name, type="model", metadata=metadata)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")

