"""ImageFolder images left on disk: the DataLoader path for data that do not fit in memory.

An :class:`ImageFiles` stands where an in-memory split holds its uint8 ``[N, C, H, W]``
tensor. Batches are decoded by ``torch.utils.data.DataLoader`` workers
(``num_workers = min(8, CPU cores)``, pinned memory when the device is a GPU, workers kept
from one epoch to the next) in exactly the index order the in-memory path would use, so
both paths give the same batches, the same augmentation and the same training run; only
where the pixels wait differs.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from distill.errors import DataError


def decode_image(path: str, size: int | None) -> np.ndarray:
    """One image file as uint8 ``[H, W, 3]`` (RGB), resized to ``size`` x ``size`` if set."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BILINEAR)
            return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot be decoded ({exc})") from None


def size_mismatch(where: object, shapes: Sequence[tuple[int, ...]]) -> DataError:
    """The error for an ImageFolder whose images differ in size (``shapes``: H, W, C)."""
    return DataError(f"{where}: images differ in size ({sorted(set(shapes))[:3]} ...); set "
                     f"data.image_size to resize them all")


def loader_workers() -> int:
    """DataLoader worker processes: ``min(8, CPU cores)``, as the field's training scripts use;
    the cores this process may use, shared among the processes torchrun started here."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS / Windows
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(local_world, 1)))


def check_sizes(where: object, paths: Sequence[str], shape: tuple[int, int, int]) -> None:
    """Every image's size from its header (cheap: no decoding) against ``shape`` (C, H, W),
    so a misfit image is reported when the data are loaded, not at the end of training."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def size(path: str) -> tuple[int, int]:
        try:
            with Image.open(path) as img:
                return img.size  # (W, H)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot be decoded ({exc})") from None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = set(pool.map(size, paths))
    odd = sorted((h, w, shape[0]) for w, h in sizes if (h, w) != shape[1:])
    if odd:
        raise size_mismatch(where, [(shape[1], shape[2], shape[0]), *odd])


def _one_line(exc: BaseException) -> str:
    """A worker's error, re-raised by the DataLoader with the worker's traceback, as the
    one line a user needs (our own DataError's message, else the last line)."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return last.split("DataError: ", 1)[1] if "DataError: " in last else last


@dataclass(frozen=True)
class ImageFiles:
    """The images of one split as files: ``paths[i]`` decodes to uint8 ``[C, H, W]`` = ``shape``.

    ``key`` names the content where it is (path, file names, sizes, modification times,
    resize and which files were selected) for caches that would otherwise hash the pixels;
    ``listing`` names it wherever it is (class folder and file names, labels, sizes, resize
    and which files were selected), for a resume with the files moved.
    """

    paths: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W) every image must decode to
    size: int | None  # data.image_size
    key: str
    listing: str

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, idx: Tensor) -> "ImageFiles":
        """The files at ``idx`` (int64 [M]), in that order."""
        chosen = idx.cpu().tolist()

        def derived(name: str) -> str:
            return hashlib.sha256(f"{name}:{chosen}".encode()).hexdigest()[:24]

        return ImageFiles(tuple(self.paths[i] for i in chosen), self.shape, self.size,
                          derived(self.key), derived(self.listing))

    def batches(self, index_batches: Sequence[Tensor] | Sequence[slice], device: torch.device
                ) -> Iterator[Tensor]:
        """uint8 ``[B, C, H, W]`` on ``device`` for each index batch (indices or a slice),
        decoded ahead by workers that persist from one pass (epoch) to the next."""
        if not index_batches:
            return
        tensors = [b for b in index_batches if not isinstance(b, slice)]
        moved = iter(torch.cat(tensors).cpu().split([len(b) for b in tensors]) if tensors
                     else ())  # one device sync for the whole pass, not one per batch
        order = [list(range(*b.indices(len(self)))) if isinstance(b, slice)
                 else next(moved).tolist() for b in index_batches]
        pool = _pool_for(self, device.type == "cuda")
        pool.order.batches = order
        batches = iter(pool.loader)
        pool.busy, failure = True, None
        try:
            while True:
                try:
                    images = next(batches)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - a worker's failure, with its traceback
                    failure = _one_line(exc)
                    break
                yield images.to(device, non_blocking=True)
        finally:
            pool.busy = False  # a pass left unfinished is drained when the next one starts
            if failure is not None or not pool.kept:
                pool.close(batches)
            del batches
        if failure is not None:  # raised here, so no traceback keeps the workers alive
            raise DataError(failure)


class _Order:
    """The loader's batch sampler: the index batches of the current pass, set before each."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Pool:
    """A DataLoader and its worker processes for one set of files. ``kept`` pools stay
    alive between passes (persistent workers, as the field's loops use); a pool asked for
    while its files are already being read is a one-off, closed after its pass."""

    def __init__(self, files: "ImageFiles", pin: bool, kept: bool) -> None:
        from torch.utils.data import DataLoader

        self.key = (files.key, pin)  # its place in _POOLS when kept
        self.order, self.kept, self.busy = _Order(), kept, False
        self.loader = DataLoader(_Decoder(files), batch_sampler=self.order,
                                 num_workers=loader_workers(), collate_fn=_Stack(files.shape),
                                 pin_memory=pin, prefetch_factor=2, persistent_workers=kept,
                                 generator=torch.Generator())  # the global RNG stays untouched

    def close(self, running: Iterator[Tensor] | None = None) -> None:
        """Stop the workers now, not whenever the loader is collected (``running``: the
        pass's iterator, which a one-off loader does not keep)."""
        running = running if running is not None else getattr(self.loader, "_iterator", None)
        stop = getattr(running, "_shutdown_workers", None)  # torch's own shutdown
        if stop is not None:
            stop()
        self.loader._iterator = None
        if self.kept:
            _POOLS.pop(self.key, None)


_POOLS: "OrderedDict[tuple[str, bool], _Pool]" = OrderedDict()
_POOLS_KEPT = 3  # a run's train, val and test splits; older pools are closed


def _pool_for(files: ImageFiles, pin: bool) -> _Pool:
    """The kept pool for ``files``, made if needed (the least recently used beyond
    ``_POOLS_KEPT`` is closed); a one-off pool when the kept one is mid-pass."""
    pool = _POOLS.get((files.key, pin))
    if pool is not None and pool.busy:
        return _Pool(files, pin, kept=False)
    if pool is None:
        pool = _POOLS[(files.key, pin)] = _Pool(files, pin, kept=True)
        while len(_POOLS) > _POOLS_KEPT:
            next(iter(_POOLS.values())).close()
    _POOLS.move_to_end(pool.key)
    return pool


def close_pools() -> None:
    """Stop every kept worker pool (at exit, and for tests that count processes)."""
    for pool in list(_POOLS.values()):
        pool.close()


atexit.register(close_pools)


class _Decoder:
    """Map-style dataset: index -> uint8 ``[C, H, W]`` (picklable, for worker processes)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        array = decode_image(self.files.paths[i], self.files.size)
        c, h, w = self.files.shape
        if array.shape != (h, w, c):
            folder = os.path.dirname(os.path.dirname(self.files.paths[i]))
            raise size_mismatch(folder, [(h, w, c), array.shape])
        return torch.from_numpy(array).permute(2, 0, 1)


class _Stack:
    """Collate: a list of uint8 ``[C, H, W]`` -> ``[B, C, H, W]`` (an empty share stays empty)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape

    def __call__(self, images: list[Tensor]) -> Tensor:
        if not images:
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        return torch.stack(images)
