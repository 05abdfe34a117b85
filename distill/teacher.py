"""A frozen teacher, and finding one: from a run folder, a weights file, or timm.

Whatever the caller does (``.train()`` on a parent module, a training loop that switches
modes), a :class:`FrozenTeacher` stays in eval mode and computes its logits under
``torch.no_grad``: its weights, BatchNorm statistics and dropout never change while a student
learns from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.data import DataInfo
from distill.errors import DistillError
from distill.models import build_model

SUMMARY = "summary.json"
WEIGHTS = "model.safetensors"


class FrozenTeacher(nn.Module):
    """Wraps a trained model: eval mode and no gradients, always.

    ``forward(x [B, C, H, W]) -> logits [B, K]``, raw (pre-softmax).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.train_logits: Tensor | None = None  # [N_train, K] cached, on the device
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":  # noqa: ARG002 - frozen on purpose
        """Ignore ``mode``: a teacher is never put in training mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def use_cached(self, train_logits: Tensor | None) -> None:
        """Serve training batches from cached logits ``[N_train, K]`` (already on the device)
        instead of running the model; None runs it again."""
        self.train_logits = train_logits

    def batch_logits(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Logits ``[B, K]`` of training batch ``x`` whose training-set indices are ``idx``
        (from the cache when there is one and ``idx`` is given, else from the model)."""
        if self.train_logits is not None and idx is not None:
            return self.train_logits[idx]
        return self(x)


@dataclass
class TeacherSource:
    """Where a teacher came from: recorded in the student's summary."""

    kind: str  # run | weights | timm
    location: str  # run folder, weights file, or timm:<name>
    model: dict[str, Any]  # {"name": ..., "options": {...}}
    sha256: str | None  # of the weights file, when there is one

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "model": self.model,
                "sha256": self.sha256}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's summary (None while the run is unfinished or not a run)."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def newest_teacher_run(output_dir: Path, dataset: str) -> Path | None:
    """The newest finished teacher run trained on ``dataset`` under ``output_dir``: by the
    finishing time its summary records (to the second), then by its summary file's
    modification time (two runs finished within one second)."""
    if not output_dir.is_dir():
        return None
    runs = []
    for run in output_dir.iterdir():
        summary = read_summary(run) if run.is_dir() else None
        if summary and summary.get("role") == "teacher" and summary.get("dataset") == dataset:
            runs.append((summary.get("finished_at", ""),
                         (run / SUMMARY).stat().st_mtime_ns, run.name, run))
    return max(runs)[-1] if runs else None


def split_warning(location: str | None, data: dict[str, Any]) -> str | None:
    """A warning when the teacher run at ``location`` may have trained on validation images
    of a student (``data``: the student's ``DataBundle.description``), so that choices made on
    that validation (epochs, T, alpha) may favour it. Both carve their validation split from
    the same shuffled order of the dataset's training images (a permutation drawn from
    ``data_seed``; the subset is drawn after it), taking its first ``val`` images: the
    teacher trained on none of the student's when the seeds agree and its own validation
    split is at least as large. None then, and when the student has no validation split,
    its images come from a ``val/`` folder of their own (nothing carved), the teacher is of
    another dataset, or it is not a run of ours."""
    summary = read_summary(Path(location)) if location and Path(location).is_dir() else None
    theirs = (summary or {}).get("data") or {}
    if not theirs or not data.get("val") or theirs.get("dataset") != data.get("dataset"):
        return None
    dataset = str(data.get("dataset", ""))
    if dataset.startswith("imagefolder:") and (Path(dataset.split(":", 1)[1]) / "val").is_dir():
        return None
    if theirs.get("data_seed") == data.get("data_seed") and (theirs.get("val") or 0) >= data["val"]:
        return None
    keys = ("val", "data_seed")
    split = lambda d: ", ".join(f"{k} {d.get(k)}" for k in keys)  # noqa: E731
    return (f"warning: the teacher was trained on another split ({split(theirs)}) than this "
            f"run's ({split(data)}): it may have seen this run's validation images, so "
            f"what validation picks may favour it; train the teacher with the same "
            f"data.val_size and data.data_seed to rule that out")


_WARNED: set[str] = set()  # split warnings already printed by this process


def warn_if_other_split(location: str | None, data: dict[str, Any]) -> None:
    """Print :func:`split_warning`'s warning on stderr, once per process (the cells of a
    sweep share their teacher and data), whether or not the run is quiet."""
    warning = split_warning(location, data)
    if warning and warning not in _WARNED:
        _WARNED.add(warning)
        from rich.console import Console

        Console(stderr=True).print(warning, markup=False, highlight=False, soft_wrap=True)


def teacher_location(spec: str | None, dataset: str, output_dir: Path,
                     required: bool = True) -> str | None:
    """``--teacher`` as given, else the newest finished teacher run for ``dataset``.

    With no such run: an error, or None when the teacher is not ``required`` (a baseline).
    """
    if spec is not None:
        return spec
    run = newest_teacher_run(output_dir, dataset)
    if run is None and required:
        raise DistillError(f"no finished teacher run for dataset '{dataset}' in "
                           f"{output_dir}/; run `distill teach` first, or pass --teacher "
                           f"<run folder | weights file | timm:<name>>")
    return str(run) if run is not None else None


def load_teacher(spec: str | None, teacher_model: str | None, info: DataInfo,
                 output_dir: Path) -> tuple[FrozenTeacher, TeacherSource]:
    """Resolve ``--teacher`` into a frozen teacher for a dataset described by ``info``.

    ``spec``: a run folder (default: the newest finished teacher run for the dataset), a
    weights file (``.safetensors`` or a state dict, with ``teacher_model``), or
    ``timm:<name>`` (timm's pretrained weights, which must be available offline).
    """
    spec = teacher_location(spec, info.name, output_dir)
    if spec.startswith("timm:"):
        model, source = _from_timm(spec, info)
    elif Path(spec).is_dir():
        model, source = _from_run(Path(spec), info)
    elif Path(spec).is_file():
        model, source = _from_weights(Path(spec), teacher_model, info)
    else:
        raise DistillError(f"--teacher '{spec}': no such run folder or weights file")
    _check_classes(model, source.location, info)
    return FrozenTeacher(model), source


def _from_run(run: Path, info: DataInfo) -> tuple[nn.Module, TeacherSource]:
    summary = read_summary(run)
    if summary is None:
        raise DistillError(f"--teacher {run}: not a finished run (no {SUMMARY}); wait for it "
                           f"to finish or pick another run")
    weights = run / WEIGHTS
    if not weights.is_file():
        raise DistillError(f"--teacher {run}: {WEIGHTS} is missing")
    spec = summary["model"]
    if summary.get("num_classes") != info.num_classes:
        raise DistillError(f"--teacher {run}: the teacher outputs {summary.get('num_classes')} "
                           f"classes, dataset '{info.name}' has {info.num_classes}")
    model = build_model(spec["name"], info.in_shape, info.num_classes, **spec["options"])
    _load_weights(model, weights, spec["name"])
    return model, TeacherSource("run", str(run), spec, file_sha256(weights))


def _from_weights(path: Path, model_name: str | None, info: DataInfo
                  ) -> tuple[nn.Module, TeacherSource]:
    if not model_name:
        raise DistillError(f"--teacher {path}: a weights file needs --teacher-model <name> "
                           f"(see `distill models`)")
    model = build_model(model_name, info.in_shape, info.num_classes)
    _load_weights(model, path, model_name)
    spec = {"name": model_name, "options": {}}
    return model, TeacherSource("weights", str(path), spec, file_sha256(path))


def _from_timm(spec: str, info: DataInfo) -> tuple[nn.Module, TeacherSource]:
    import timm

    name = spec.split(":", 1)[1]
    try:
        model = timm.create_model(name, pretrained=True, in_chans=info.in_shape[0])
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise DistillError(f"--teacher {spec}: pretrained weights could not be loaded "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                           f"pass a weights file with --teacher-model {spec}") from None
    return model, TeacherSource("timm", spec, {"name": spec, "options": {}}, None)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from ``.safetensors``, or a state dict loaded with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise DistillError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistillError(f"{path}: refused or unreadable as a weights-only state dict "
                           f"({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DistillError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _load_weights(model: nn.Module, path: Path, model_name: str) -> None:
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DistillError(f"{path}: the weights do not fit model '{model_name}' "
                           f"for this dataset: {detail}") from None


def _check_classes(model: nn.Module, location: str, info: DataInfo) -> None:
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *info.in_shape))
    if out.ndim != 2 or out.shape[1] != info.num_classes:
        raise DistillError(f"--teacher {location}: the teacher outputs {tuple(out.shape[1:])} "
                           f"classes, dataset '{info.name}' has {info.num_classes}")
