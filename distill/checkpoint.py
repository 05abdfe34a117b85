"""Checkpoints: atomic save, safe load, and what a resumed run needs.

A checkpoint holds everything a run needs to continue as if never stopped: model, optimizer
(Lookahead's slow weights included), schedule, every random generator (python,
numpy, torch CPU and CUDA; the batch order is a function of ``data_seed`` and the epoch, so
the position in the epoch restores it), counters, the best-on-validation state, the running
sums of the current epoch, a hash of the resolved recipe, and the format version. (Its
``scaler`` slot stays None: bf16 autocast needs no gradient scaler.)

Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed
over the old one, so a kill during a save leaves the previous checkpoint loadable; stale
temporary files are removed at the next start. Loads use ``torch.load(weights_only=True)``:
a file that needs arbitrary pickled code is refused, never loaded unsafely as a fallback.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data import FILES_FINGERPRINT
from distill.errors import DistillError, divergence_advice

FORMAT_VERSION = 1
LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
TMP_SUFFIX = ".tmp"

# Test hooks (used by the reliability tests only): SIGKILL this process right after the
# N-th checkpoint save, or between writing the N-th temporary file and renaming it.
KILL_AFTER_SAVE_ENV = "DISTILL_TEST_KILL_AFTER_SAVE"
KILL_IN_SAVE_ENV = "DISTILL_TEST_KILL_IN_SAVE"
# ... and negative controls: a resume that skips restoring "rng" and/or the "data_order".
RESUME_SKIP_ENV = "DISTILL_TEST_RESUME_SKIP"
_saves = 0


def rng_state() -> dict[str, Any]:
    """Every global random generator's state, in types ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples (python's random state is nested tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    global _saves
    _saves += 1
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if os.environ.get(KILL_IN_SAVE_ENV) == str(_saves):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if os.environ.get(KILL_AFTER_SAVE_ENV) == str(_saves):
        os.kill(os.getpid(), signal.SIGKILL)


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove temporary files left by a save that was killed; returns what was removed."""
    stale = sorted(run_dir.glob(f"*{TMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), with a clear error if it is bad.

    ``mmap``: tensors are mapped from the file, read only when touched (for a caller that
    wants the small entries of a large checkpoint)."""
    if not path.is_file():
        raise DistillError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise DistillError(f"{path}: the checkpoint is empty (a save was interrupted?); "
                           f"nothing to resume from it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - truncated zips and refused pickles alike
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DistillError(f"{path}: the checkpoint cannot be loaded safely (truncated, "
                           f"corrupted, or it needs arbitrary code): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DistillError(f"{path}: not a distill checkpoint of format {FORMAT_VERSION} "
                           f"(found {found!r})")
    return payload


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a state dict is finite."""
    return all(torch.isfinite(t).all() for t in state_dict.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file atomically (temporary copy in the same folder, fsync, rename)."""
    tmp = dst.with_name(dst.name + TMP_SUFFIX)
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


def carried_wall(checkpoint: dict[str, Any] | None) -> float:
    """The wall seconds a checkpoint's run had spent before it was saved (0 for a fresh run,
    or a checkpoint older than the record)."""
    return float((checkpoint or {}).get("wall_seconds") or 0.0)


class Checkpointer:
    """Called by the training loop at checkpoint points: writes ``checkpoint-last.pt`` and,
    at an epoch that is the best on validation so far, ``checkpoint-best.pt`` too.

    Each checkpoint stores the run's wall time so far (``wall_seconds``: ``wall_before``, the
    earlier segments' time, plus this process's since the Checkpointer was made), so a run
    resumed any number of times reports its whole training time, not its last segment's.
    """

    def __init__(self, run_dir: Path, role: str, recipe, state, teacher_sha256: str | None,
                 resumes: list[dict[str, Any]], every_epoch: bool = True,
                 wall_before: float = 0.0, data_fingerprint: str | None = None,
                 amp: bool = False) -> None:
        self.run_dir, self.role, self.recipe, self.state = run_dir, role, recipe, state
        self.amp = amp  # bf16 autocast on (as resolved for the device): for the advice
        self.teacher_sha256, self.resumes, self.every_epoch = teacher_sha256, resumes, every_epoch
        self.data_fingerprint = data_fingerprint  # DataBundle.content_fingerprint()
        self.wall_before, self.started = wall_before, time.perf_counter()

    def wall_seconds(self) -> float:
        """The run's wall time so far: earlier segments plus this one."""
        return self.wall_before + time.perf_counter() - self.started

    def __call__(self, where: str, rank_rng: list[dict[str, Any]] | None = None) -> None:
        """Save at ``where`` ("step" or "epoch"); ``rank_rng``: every rank's random stream
        under torchrun (:func:`distill.distributed.gather_rank_rng`), None otherwise."""
        if where == "epoch" and not self.every_epoch:
            return
        model_state = self.state.model.state_dict()
        if not all_finite(model_state):
            optim = getattr(self.recipe, self.role).optim
            raise DistillError(f"non-finite weights at step {self.state.step}: not "
                               f"checkpointed; {divergence_advice(optim.grad_clip, self.amp)}")
        payload = {"format": FORMAT_VERSION, "role": self.role,
                   "recipe_fingerprint": self.recipe.fingerprint(),
                   # what a resume compares with (recipe.yaml is rewritten when it starts)
                   "recipe": self.recipe.model_dump(mode="json"),
                   "state": self.state.state_dict(), "rng": rng_state(), "scaler": None,
                   "teacher_sha256": self.teacher_sha256, "resumes": self.resumes,
                   "data_fingerprint": self.data_fingerprint, "rank_rng": rank_rng,
                   "where": where, "wall_seconds": self.wall_seconds()}
        last = self.run_dir / LAST
        save_atomic(payload, last)
        if where == "epoch" and self.state.best_epoch == self.state.epoch:
            copy_atomic(last, self.run_dir / BEST)


def resume_folder(resume: str | Path) -> Path:
    """The run folder named by ``--resume`` (it must exist)."""
    path = Path(resume)
    if not path.is_dir():
        raise DistillError(f"--resume {resume}: no such run folder")
    return path


LOCK = ".lock"


class FileLock:
    """An exclusive ``flock`` on one file, held by this process until :meth:`release` or
    until the process ends, however it ends (a kill too: the operating system drops it).
    A child forked meanwhile (DataLoader workers) closes its copies of held locks as the
    first thing it does, so a lock never outlives :meth:`release` in a worker (a child
    forked microseconds before the release, not yet scheduled, could hold it that long).
    Where ``fcntl`` is missing (Windows) nothing is locked and every :func:`take_lock`
    succeeds."""

    held: set[FileLock] = set()  # this process's locks not released yet

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            FileLock.held.add(self)

    def release(self) -> None:
        if self.fd is not None:
            FileLock.held.discard(self)
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None


def _drop_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's lock descriptors (the parent's
    locks stay; they drop when the parent closes its own)."""
    for lock in FileLock.held:
        try:
            os.close(lock.fd)
        except OSError:
            pass
        lock.fd = None
    FileLock.held = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def take_lock(path: Path, wait: bool = False) -> FileLock | None:
    """Lock ``path`` (created if missing); None when another open file holds the lock
    (another process, or another :func:`take_lock` of this one). ``wait``: block until the
    lock is free instead."""
    try:
        import fcntl
    except ImportError:
        return FileLock(None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return FileLock(fd)


def lock_run(run_dir: Path) -> FileLock:
    """The run folder's lock, held while a process trains in it, so a second ``--resume``
    of a run that is still going is refused instead of writing beside it."""
    lock = take_lock(run_dir / LOCK)
    if lock is None:
        raise DistillError(f"{run_dir}: a process is still training in this run folder; "
                           f"wait for it or stop it before resuming")
    return lock


# data.in_memory only places the data: from disk or memory, a run trains the same (tested)
_IGNORED_CHANGES = ("wandb.", "output_dir", "device", "checkpoint.", "data.in_memory")


def recipe_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (tracking, placement and checkpointing
    ignored: they change no result)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if dotted.startswith(_IGNORED_CHANGES):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += recipe_changes(a, b, dotted + ".")
        elif a != b:
            changes.append(f"{dotted}: {a!r} -> {b!r}")
    return changes


def changes_since(saved: Path, recipe, exclude: set[str] | None = None) -> list[str]:
    """:func:`recipe_changes` from the recipe file ``saved`` (a run's or a sweep's
    ``recipe.yaml``) to ``recipe``, without the top-level sections in ``exclude``."""
    from distill.recipe import load_recipe

    return recipe_changes(load_recipe(saved).model_dump(mode="json", exclude=exclude),
                          recipe.model_dump(mode="json", exclude=exclude))


def _without_location(dump: dict[str, Any], teacher: bool) -> dict[str, Any]:
    """A recipe dump without where its data are read from (no ``data.data_dir``, and an
    ``imagefolder:<path>`` dataset named ``imagefolder:`` only) and, with ``teacher``, where
    a student's teacher is (no ``student.teacher``)."""
    data = dict(dump.get("data") or {})
    data["data_dir"] = None
    if str(data.get("name", "")).startswith("imagefolder:"):
        data["name"] = "imagefolder:"
    student = dict(dump.get("student") or {})
    if teacher:
        student["teacher"] = None
    return {**dump, "data": data, "student": student}


def checkpoint_recipe(run_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """The recipe ``payload`` (a checkpoint of ``run_dir``) was written under, as a dump: its
    own copy, else (a checkpoint older than that copy) the run's ``recipe.yaml``. Not the
    file first: a resume with --allow-changes rewrites it when it starts, so one stopped
    before its first checkpoint would leave the next resume nothing to compare, and no
    record of the change."""
    from distill.recipe import load_recipe, validate_recipe

    if payload.get("recipe") is None:
        return load_recipe(run_dir / "recipe.yaml").model_dump(mode="json")
    return validate_recipe(payload["recipe"], str(run_dir / LAST), {}).model_dump(mode="json")


def check_resumable(run_dir: Path, role: str, recipe, allow_changes: bool) -> dict[str, Any]:
    """The newest checkpoint of ``run_dir``, after checking it may be resumed with ``recipe``.

    A recipe that differs only in where things are read from passes when the checkpoint can
    tell whether they are the same: the data (``data.data_dir``, the path of an
    ``imagefolder:``) when it holds their fingerprint; a student's teacher
    (``student.teacher``) when it holds the teacher's sha256. The returned payload adds
    ``"moved"`` (those changes), ``"moved_data"`` (the data's), ``"allowed"`` (the changes
    ``allow_changes`` let through, for the resume record) and ``"check_data"`` (False with
    ``allow_changes``) for :func:`check_same_data`, which compares the data once they are
    loaded; :func:`check_same_teacher` compares the teacher of every resumed student."""
    if (run_dir / "summary.json").is_file():
        raise DistillError(f"--resume {run_dir}: the run is finished (summary.json exists); "
                           f"nothing to resume")
    if not (run_dir / LAST).is_file():
        raise DistillError(f"--resume {run_dir}: no checkpoint ({LAST}) in it; nothing to "
                           f"resume")
    payload = load_checkpoint(run_dir / LAST)
    if payload["role"] != role:
        command = "teach" if payload["role"] == "teacher" else "student"
        raise DistillError(f"--resume {run_dir}: a {payload['role']} run; resume it with "
                           f"`distill {command} --resume {run_dir}`")
    saved, new = checkpoint_recipe(run_dir, payload), recipe.model_dump(mode="json")
    changes = recipe_changes(saved, new)
    if not changes or allow_changes:
        return {**payload, "check_data": not allow_changes, "allowed": changes}
    checked = bool(payload.get("teacher_sha256"))
    why = ""
    if not recipe_changes(_without_location(saved, checked), _without_location(new, checked)):
        moved_data = [c for c in changes if c.startswith("data.")]
        if not moved_data or payload.get("data_fingerprint"):
            return {**payload, "moved": changes, "moved_data": moved_data, "check_data": True,
                    "allowed": []}
        why = (" (the data moved, and this checkpoint holds no fingerprint to compare them "
               "with: it predates data fingerprints, or those of files left on disk)")
    raise DistillError(f"--resume {run_dir}: the recipe differs from the run's: "
                       f"{'; '.join(changes)}{why}; pass --allow-changes to resume with it "
                       f"anyway")


def check_same_data(run_dir: Path, payload: dict[str, Any], fingerprint: str) -> str:
    """Refuse to resume with data that are not the run's: ``fingerprint`` is the loaded
    data's content fingerprint (:meth:`DataBundle.content_fingerprint`), compared with the
    checkpoint's unless the resume allowed changes (see :func:`check_resumable`, which has
    already refused moved data its checkpoint holds no fingerprint of). Data read from
    elsewhere must be compared; data where they were, whenever both fingerprints are of one
    kind (files replaced there, another ``$DISTILL_DATA_DIR``). Fingerprints of pixels and
    of files left on disk (``data.in_memory`` placed them otherwise) cannot be compared.

    Returns the fingerprint the resumed run's next checkpoints hold: ``fingerprint``, or,
    for data of the other kind at the run's own path, the checkpoint's (so that a later move
    can still be checked); an unchecked resume (``--allow-changes``) keeps only its own."""
    if not payload.get("check_data"):
        return fingerprint
    moved, saved = payload.get("moved_data"), payload.get("data_fingerprint")
    if fingerprint == saved or saved is None:  # None: moved data were refused before
        return fingerprint
    comparable = _on_disk(saved) == _on_disk(fingerprint)
    if not moved and not comparable:
        return saved
    place = f"the data were read from elsewhere ({'; '.join(moved)}) and" if moved else "the data"
    if not comparable:
        now, then = ("left on disk", "held in memory") if _on_disk(fingerprint) else (
            "held in memory", "left on disk")
        why = (f"are {now}, where the run had them {then}, so they cannot be compared with "
               f"the run's; place them as it did (--set data.in_memory="
               f"{str(not _on_disk(saved)).lower()})")
    else:
        what = ("other file names, sizes or labels, or other normalisation constants: "
                "train/'s pixels differ" if _on_disk(fingerprint)
                else "other files, or the same decoded otherwise")
        why = (f"are not the run's (fingerprint {_short(saved)} -> {_short(fingerprint)}: "
               f"{what}); resume with the run's data")
    raise DistillError(f"--resume {run_dir}: {place} {why}, or pass --allow-changes to "
                       f"resume with these anyway")


def _on_disk(fingerprint: str) -> bool:
    """Whether a content fingerprint is of files left on disk (not of their pixels)."""
    return fingerprint.startswith(FILES_FINGERPRINT)


def _short(fingerprint: str) -> str:
    """A fingerprint as messages show it: its kind, if any, and 12 hex digits."""
    kind, _, digest = fingerprint.rpartition(":")
    return f"{kind}:{digest[:12]}" if kind else digest[:12]


def check_same_teacher(run_dir: Path, payload: dict[str, Any], sha256: str | None,
                       location: str | None, allow_changes: bool = False) -> str | None:
    """Refuse to resume a student with a teacher whose weights changed since it started
    (``location`` None: no teacher was found this time, which only a baseline survives).
    With ``allow_changes`` the change is returned, for the resume record, instead."""
    saved = payload.get("teacher_sha256")
    if not saved or sha256 == saved:
        return None
    if allow_changes:
        return f"teacher (sha256): {saved[:12]} -> {sha256[:12] if sha256 else 'none found'}"
    if location is None:
        raise DistillError(f"--resume {run_dir}: the run started with a teacher (sha256 "
                           f"{saved[:12]}) and none was found this time; name it with "
                           f"--teacher <its run folder>, or pass --allow-changes to resume "
                           f"without it")
    raise DistillError(f"--resume {run_dir}: teacher {location} changed since this run "
                       f"started (sha256 {saved[:12]} -> {(sha256 or 'none')[:12]}); resume "
                       f"with the teacher it started with (--teacher <its run folder>), or "
                       f"pass --allow-changes to resume with this one anyway")


def set_deterministic(enabled: bool) -> None:
    """PyTorch's deterministic algorithms and cuDNN settings (for bitwise-repeatable GPU runs)."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
