"""Teacher logits computed once and kept on disk, reused by every later student and sweep.

A teacher's logits do not depend on T or alpha, and for un-augmented training data they do
not depend on the epoch either: one forward pass over the training, validation and test
splits serves every student distilled from that teacher on that data. They are stored raw
(before any temperature) as float32 ``[N, K]`` per split, in the split's stored order, so a
training batch of indices ``idx`` reads ``train[idx]``.

Where: ``<teacher run>/teacher-logits/<key>.safetensors`` for a teacher run folder, and
``<output_dir>/teacher-logits/`` for a bare weights file. The key hashes everything the
logits depend on: the teacher's weights (sha256) and model spec, the data
(:meth:`DataBundle.cache_fingerprint`: description, preprocessing, and the bytes of every
split's images and labels, or the files' keys of splits left on disk) and the device type the
teacher ran on (its cost profile's latency is that device's). Change any of them and the key
changes, so a stale file is never read; the same images read from another path (in memory)
keep their key. A teacher without a weights hash (``timm:<name>``) is not cached.

The logits are computed in float32 (no autocast): with bf16 autocast on (the GPU default) a
student reading them gets more precise teacher logits than a live bf16 forward would give.
The teacher's test figures (metrics and cost profile) are stored beside the logits, so a
student whose teacher is cached runs the teacher's forward zero times.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from distill.data import DataBundle, write_cache
from distill.teacher import FrozenTeacher, TeacherSource

FOLDER = "teacher-logits"
FORMAT = 1
MAX_BYTES = 4 * 1024**3  # larger logit tables are not cached (the teacher runs per batch)


@dataclass
class TeacherLogits:
    """A teacher's raw logits per split (float32, CPU) and its test figures."""

    train: Tensor  # [N_train, K]
    val: Tensor | None  # [N_val, K]
    test: Tensor  # [N_test, K]
    figures: dict[str, Any]  # {"test": metrics, "profile": cost}
    path: Path | None  # where they are stored (None when not cached)
    computed: bool  # True when the teacher ran to produce them, False when read from disk


def cache_key(source: TeacherSource, data: DataBundle, device: str = "cpu") -> str:
    """A hex key of everything the logits depend on (see the module docstring)."""
    meta = {"format": FORMAT, "teacher_sha256": source.sha256, "teacher_model": source.model,
            "data": data.cache_fingerprint(), "precision": "float32", "device": device}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


def cache_folder(source: TeacherSource, output_dir: Path) -> Path | None:
    """Where this teacher's logits live (None: not cacheable)."""
    if source.sha256 is None:
        return None
    if source.kind == "run":
        return Path(source.location) / FOLDER
    return output_dir / FOLDER


def teacher_logits(teacher: FrozenTeacher, source: TeacherSource, data: DataBundle,
                   output_dir: Path, console=None, write: bool = True) -> TeacherLogits:
    """The teacher's logits over ``data`` (computed on the teacher's device, returned as
    float32 on the CPU, see :class:`TeacherLogits`): read from the cache when
    the key matches, else computed once and stored atomically (unless ``write`` is False:
    the other ranks of a torchrun job)."""
    folder = cache_folder(source, output_dir)
    device = data.train.device.type
    path = folder / f"{cache_key(source, data, device)}.safetensors" if folder else None
    if path is not None and path.is_file():
        cached = _read(path)
        if cached is not None:
            return cached
        _say(console, f"teacher logits: {path} is unreadable; computing them again")
    computed = _compute(teacher, data)
    size = computed.train.numel() * 4
    if path is not None and write and size <= MAX_BYTES and _write(computed, path):
        computed.path = path
        _say(console, f"teacher logits: computed once and stored in {path}")
    return computed


def _compute(teacher: FrozenTeacher, data: DataBundle) -> TeacherLogits:
    from distill.engine import predict
    from distill.metrics import classification_metrics, profile_model

    train = predict(teacher, data.train, data.info)
    val = predict(teacher, data.val, data.info) if data.val is not None else None
    test = predict(teacher, data.test, data.info)
    figures = {"test": classification_metrics(test, data.test.labels.cpu()),
               "profile": profile_model(teacher.model, data.info.in_shape,
                                        data.train.device)}
    return TeacherLogits(train, val, test, figures, None, True)


def _write(logits: TeacherLogits, path: Path) -> bool:
    tensors = {"train": logits.train, "test": logits.test}
    if logits.val is not None:
        tensors["val"] = logits.val
    return write_cache(path, tensors, metadata={"figures": json.dumps(logits.figures)})


def _read(path: Path) -> TeacherLogits | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            figures = json.loads(fh.metadata()["figures"])
            # copies: a tensor backed by the mapped file would fault if the file were truncated
            tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}  # noqa: SIM118
        return TeacherLogits(tensors["train"], tensors.get("val"), tensors["test"], figures,
                             path, False)
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        return None


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
