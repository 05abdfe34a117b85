"""The one data layer, shared by teacher and student.

Every dataset is loaded by name into memory as uint8 images ``[N, C, H, W]`` and int64 labels
``[N]``, split into train / validation / test, and served in batches of normalised float32
images on the training device.

- ``digits``: scikit-learn's 8x8 handwritten digits (embedded, no network). It has no official
  test split, so a fixed 20% (independent of every seed) is held out as test.
- ``mnist``, ``fashion-mnist``: the official IDX files (gzipped or not) from ``data_dir``;
  torchvision's downloader is tried when they are missing and ``download`` is on.
- ``cifar10``, ``cifar100``: torchvision's CIFAR python batches.
- ``imagefolder:<path>``: ``<path>/train/<class>/*.jpg``, optional ``val/`` and ``test/``;
  decoded once and cached when it fits in memory, else (or with ``data.in_memory: false``)
  left on disk and decoded per batch by DataLoader workers (``distill/imagefiles.py``).

Seeds: ``data_seed`` alone fixes the validation split and the order of batches in each epoch,
so runs that differ only in ``seed`` see the same batches in the same order. Normalisation
constants depend on the dataset only (the full official training set), never on the split,
so a teacher and its student always see identically preprocessed inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from distill.atomic import write_whole
from distill.augment import BatchAugment, batch_seed
from distill.errors import DataError, RecipeError
from distill.imagefiles import ImageFiles, check_sizes, decode_image, size_mismatch
from distill.recipe import DataConfig

DATA_DIR_ENV = "DISTILL_DATA_DIR"
FILES_FINGERPRINT = "files:"  # begins the content fingerprint of data left on disk
_TEST_CARVE_SEED = 2015  # fixed: a carved test split never depends on a user seed
_TEST_CARVE_FRACTION = 0.2
_SUBSET_SEED = 2016  # fixed: data.subset / test_subset draw the same images for every seed


@dataclass(frozen=True)
class DataInfo:
    """What models and reports need to know about a dataset."""

    name: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]


@dataclass
class Split:
    """One split: ``images`` uint8 [N, C, H, W] (or :class:`ImageFiles` left on disk for
    data that do not fit in memory), ``labels`` int64 [N] on the split's device."""

    images: Tensor | ImageFiles
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        """Where batches of this split are served."""
        return self.labels.device

    @property
    def on_disk(self) -> bool:
        return isinstance(self.images, ImageFiles)

    def to(self, device: torch.device | str) -> "Split":
        images = self.images if isinstance(self.images, ImageFiles) else self.images.to(device)
        return Split(images, self.labels.to(device))

    def select(self, idx: Tensor) -> "Split":
        """The images and labels at ``idx`` (int64 [M]), in that order."""
        images = (self.images.select(idx) if isinstance(self.images, ImageFiles)
                  else self.images[idx])
        return Split(images, self.labels[idx])

    def update_hash(self, h, located: bool = True) -> None:
        """Feed what this split holds to a hashlib object: the pixels of an in-memory split;
        for one on disk (decoding every file to hash it would cost a pass over the data) its
        files' key where they are (``located``) or their listing wherever they are (see
        :class:`ImageFiles`); the labels either way."""
        if isinstance(self.images, ImageFiles):
            files = self.images
            h.update(f"files:{files.key}".encode() if located
                     else f"listing:{files.listing}".encode())
        else:  # the tensor's own bytes, not a copy of them (a whole split, in memory)
            h.update(memoryview(self.images.detach().cpu().contiguous().numpy()).cast("B"))
        h.update(memoryview(self.labels.detach().cpu().contiguous().numpy()).cast("B"))


@dataclass
class DataBundle:
    """A dataset ready to train on: info plus train, optional validation, and test splits."""

    info: DataInfo
    train: Split
    val: Split | None
    test: Split
    description: dict = field(default_factory=dict)  # sizes, seed, source: for the run folder

    def to(self, device: torch.device | str) -> "DataBundle":
        val = self.val.to(device) if self.val is not None else None
        return DataBundle(self.info, self.train.to(device), val, self.test.to(device),
                          self.description)

    def fingerprint(self) -> str:
        """A short hash of what the training data are (name, split, sizes, label content)."""
        h = hashlib.sha256(repr(sorted(self.description.items())).encode())
        h.update(self.train.labels.cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def content_fingerprint(self) -> str:
        """A short hash of the data themselves, wherever they were read from: the description
        with the dataset's kind for its name (``imagefolder``, not its path), the class names
        and normalisation constants (of the whole training set, ``subset`` or not), and every
        split's pixels and labels. When a split is left on disk, hashing its pixels would
        cost a pass over the data: its files' names, sizes and labels stand for them, and the
        fingerprint begins ``files:`` (it is compared only with one of its own kind)."""
        kind = str(self.description.get("dataset", "")).split(":", 1)[0]
        if self.on_disk:
            return FILES_FINGERPRINT + self._digest(kind, located=False)
        return self._digest(kind)

    def cache_fingerprint(self) -> str:
        """What a cache of results computed from these data is keyed by: the content
        fingerprint when every split is in memory (the same images read from elsewhere hit
        the same entry); for splits left on disk, the same digest over the dataset's full
        name and the files' keys (path, names, sizes, modification times) in place of pixels:
        a listing without times could miss an image rewritten at the same size."""
        if self.on_disk:
            return self._digest(str(self.description.get("dataset", "")))
        return self.content_fingerprint()

    @property
    def on_disk(self) -> bool:
        """Whether any split is left on disk (its pixels are not hashed)."""
        return any(s is not None and s.on_disk for s in (self.train, self.val, self.test))

    def _digest(self, dataset: str, located: bool = True) -> str:
        info = {"class_names": list(self.info.class_names), "mean": list(self.info.mean),
                "std": list(self.info.std), "in_shape": list(self.info.in_shape)}
        h = hashlib.sha256(repr(sorted({**self.description, "dataset": dataset, **info}.items())
                                ).encode())
        for split in (self.train, self.val, self.test):
            if split is None:
                h.update(b"none")
            else:
                split.update_hash(h, located)
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- batching

def normalize(images: Tensor, info: DataInfo) -> Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C, H, W], scaled to [0, 1] then standardised."""
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean) / std


def epoch_order(n: int, data_seed: int, epoch: int, device: torch.device | str = "cpu") -> Tensor:
    """The permutation of ``n`` training indices for ``epoch``: a function of data_seed only."""
    gen = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch + 1)
    return torch.randperm(n, generator=gen).to(device)


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch; a trailing batch of one sample is dropped (BatchNorm cannot use it)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 else 0)


def train_batches(split: Split, info: DataInfo, batch_size: int, data_seed: int, epoch: int,
                  start: int = 0, augment: BatchAugment | None = None
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled training batches ``(x float32 [B, C, H, W], y int64 [B])`` of one epoch.

    ``start`` skips the first batches (for resuming mid-epoch); ``augment``
    (``distill/augment.py``) acts on whole uint8 batches on the device, its randomness a
    function of (data_seed, epoch, batch).
    """
    for x, y, _ in indexed_train_batches(split, info, batch_size, data_seed, epoch, start,
                                         augment):
        yield x, y


def indexed_train_batches(split: Split, info: DataInfo, batch_size: int, data_seed: int,
                          epoch: int, start: int = 0,
                          augment: BatchAugment | None = None,
                          shard: tuple[int, int] | None = None
                          ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """:func:`train_batches` plus each batch's indices into the split (``idx`` int64 [B]),
    for per-sample lookups such as cached teacher logits.

    ``shard = (rank, world)``: only this rank's contiguous part of each global batch
    (``distill/distributed.py``).
    """
    order = epoch_order(len(split), data_seed, epoch, split.device)
    plan = []  # (batch number, this rank's indices, their offset in the global batch, its size)
    for b in range(start, num_batches(len(split), batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        total, offset = len(idx), 0
        if shard is not None:
            parts = idx.tensor_split(shard[1])
            offset = sum(len(p) for p in parts[:shard[0]])
            idx = parts[shard[0]]
        plan.append((b, idx, offset, total))
    for (b, idx, offset, total), images in zip(plan, gather(split, [p[1] for p in plan]), strict=True):
        if augment is not None:
            images = augment(images, batch_seed(data_seed, epoch, b), offset, total)
        yield normalize(images, info), split.labels[idx], idx


def eval_batches(split: Split, info: DataInfo, batch_size: int = 1000
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of a split in its stored order, never augmented."""
    index_batches = [slice(i, i + batch_size) for i in range(0, len(split), batch_size)]
    for idx, images in zip(index_batches, gather(split, index_batches), strict=True):
        yield normalize(images, info), split.labels[idx]


def gather(split: Split, index_batches: list[Tensor] | list[slice]) -> Iterator[Tensor]:
    """uint8 [B, C, H, W] on the split's device for each index batch (indices or a slice):
    indexing of an in-memory split (a slice is a view, no copy), DataLoader workers
    decoding ahead for one on disk."""
    if isinstance(split.images, ImageFiles):
        yield from split.images.batches(index_batches, split.device)
        return
    for idx in index_batches:
        yield split.images[idx]


# ----------------------------------------------------------------------------- registry

_LOADERS: dict[str, tuple[Callable[[DataConfig], tuple], str]] = {}


def _register(name: str, description: str):
    def wrap(fn):
        _LOADERS[name] = (fn, description)
        return fn
    return wrap


def list_datasets() -> dict[str, str]:
    """Dataset names -> one-line descriptions, for `distill datasets`."""
    names = {name: desc for name, (_, desc) in _LOADERS.items()}
    names["imagefolder:<path>"] = ("any folder in ImageFolder layout: train/<class>/*, "
                                   "optional val/ and test/")
    return names


def default_data_dir() -> Path | None:
    """$DISTILL_DATA_DIR when set (CI sets it to the shared data folder), else None."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def load_data(cfg: DataConfig) -> DataBundle:
    """Load, split and check a dataset by name (see the module docstring)."""
    name = cfg.name
    if name.startswith("imagefolder:"):
        train, val, test, info = _load_imagefolder(cfg, Path(name.split(":", 1)[1]))
    elif cfg.in_memory is False:
        raise RecipeError(f"data.in_memory: false applies to imagefolder: datasets only; "
                          f"'{name}' is always held in memory")
    elif name in _LOADERS:
        train, val, test, info = _LOADERS[name][0](cfg)
    else:
        known = ", ".join(sorted(_LOADERS)) + ", imagefolder:<path>"
        raise RecipeError(f"unknown dataset '{name}'; known datasets: {known}")
    if val is None:
        train, val = carve(train, cfg.val_size, cfg.data_seed)
    if cfg.subset is not None:
        train = take(train, cfg.subset)
    if cfg.test_subset is not None:
        test = take(test, cfg.test_subset)
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            _check_split(name, split_name, split, info.num_classes)
    description = {"dataset": name, "train": len(train), "val": len(val) if val else 0,
                   "test": len(test), "data_seed": cfg.data_seed, "subset": cfg.subset,
                   "in_shape": list(info.in_shape), "num_classes": info.num_classes}
    return DataBundle(info, train, val, test, description)


def take(split: Split, n: int) -> Split:
    """``n`` images drawn at random (a fixed draw, independent of every seed), kept in their
    stored order: a class-sorted ImageFolder keeps every class, not the first ones."""
    if n >= len(split):
        return split
    gen = torch.Generator().manual_seed(_SUBSET_SEED)
    idx = torch.randperm(len(split), generator=gen)[:n].sort().values
    return split.select(idx)


def carve(split: Split, val_size: float, data_seed: int) -> tuple[Split, Split | None]:
    """Split off a validation set: ``val_size`` < 1 is a fraction, >= 1 a count, 0 none.

    Indices on both sides keep their original order; which ones go where depends only on
    ``data_seed``.
    """
    n = len(split)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if n_val == 0:
        return split, None
    if n - n_val < 2:
        raise RecipeError(f"data.val_size: {val_size} leaves {max(n - n_val, 0)} training "
                          f"images of {n}; at least 2 are needed")
    gen = torch.Generator().manual_seed(data_seed)
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return split.select(train_idx), split.select(val_idx)


def _check_split(dataset: str, split_name: str, split: Split, num_classes: int) -> None:
    if len(split) == 0:
        raise DataError(f"dataset '{dataset}': the {split_name} split is empty")
    lo, hi = int(split.labels.min()), int(split.labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"dataset '{dataset}': {split_name} labels must lie in "
                        f"[0, {num_classes - 1}], found {lo if lo < 0 else hi}")


def _stats(batches: Iterable[Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images [N, C, H, W] (given whole or in
    batches) scaled to [0, 1], exactly, from the 256-bin histogram of each channel (no float
    copy of the images)."""
    histograms = None  # [C, 256] counts
    for images in batches:
        counts = torch.stack([torch.bincount(images[:, c].reshape(-1).long(), minlength=256)
                              for c in range(images.shape[1])]).double()
        histograms = counts if histograms is None else histograms + counts
    assert histograms is not None, "no images"
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for counts in histograms:
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / max(n - 1, 1)
        means.append(mean.item())
        stds.append(max(var.sqrt().item(), 1e-6))
    return tuple(means), tuple(stds)


def _info(name: str, images: Tensor, class_names: list[str]) -> DataInfo:
    mean, std = _stats([images])
    shape = tuple(int(s) for s in images.shape[1:])
    return DataInfo(name, shape, len(class_names), class_names, mean, std)  # type: ignore[arg-type]


def _carve_test(split: Split) -> tuple[Split, Split]:
    """A fixed held-out test split for datasets that ship none (independent of every seed)."""
    n = len(split)
    gen = torch.Generator().manual_seed(_TEST_CARVE_SEED)
    perm = torch.randperm(n, generator=gen)
    n_test = int(round(_TEST_CARVE_FRACTION * n))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return split.select(train_idx), split.select(test_idx)


# ----------------------------------------------------------------------------- digits

@_register("digits", "scikit-learn's 8x8 handwritten digits, 1797 images, embedded (no network)")
def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).float()  # [1797, 8, 8], values 0..16
    images = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    train, test = _carve_test(Split(images, labels))
    info = _info("digits", train.images, [str(d) for d in range(10)])
    return train, None, test, info


# ----------------------------------------------------------------------------- MNIST family

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_FAMILY = {
    # name: (folder names tried under data_dir, torchvision class, class names)
    "mnist": (["mnist", "MNIST/raw", "MNIST"], "MNIST", [str(d) for d in range(10)]),
    "fashion-mnist": (["fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"],
                      "FashionMNIST",
                      ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot"]),
}


def read_idx(path: Path) -> Tensor:
    """Read an IDX file (gzipped or not) into a uint8 tensor, checking its size.

    Images come back as [N, 28, 28], labels as [N].
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); the file is truncated or corrupted, "
                        "get it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad header)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: the IDX header is truncated ({len(raw)} bytes, needs {offset}); "
                        "the file is truncated or corrupted, get it again")
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: holds {len(raw) - offset} bytes of data, expected {expected} "
                        f"for shape {tuple(dims)}; the file is truncated or corrupted, get it again")
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(data.copy())


def _find_idx_files(folders: list[Path]) -> dict[str, Path] | None:
    for folder in folders:
        found = {}
        for key, stem in _IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _data_roots(cfg: DataConfig) -> list[Path]:
    roots = [Path(cfg.data_dir).expanduser()] if cfg.data_dir else []
    env = default_data_dir()
    if env is not None and env not in roots:
        roots.append(env)
    return roots or [Path("data")]


def _try_download(cls_name: str, root: Path) -> str | None:
    """Run torchvision's downloader; returns None on success or the reason it failed."""
    import socket

    import torchvision.datasets as tvd

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        for train in (True, False):
            getattr(tvd, cls_name)(str(root), train=train, download=True)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not downloadable here"
        reasons = []
        while exc is not None and len(reasons) < 3:
            text = " ".join(str(exc).split()).rstrip(":. ")
            reasons.append(text or type(exc).__name__)
            exc = exc.__cause__ or exc.__context__
        return ": ".join(reasons)
    finally:
        socket.setdefaulttimeout(old)


def _load_mnist_family(cfg: DataConfig):
    subdirs, cls_name, class_names = _MNIST_FAMILY[cfg.name]
    roots = _data_roots(cfg)
    folders = [root / sub for root in roots for sub in ["", *subdirs]]
    files = _find_idx_files(folders)
    reason = "download is off (data.download: false)"
    if files is None and cfg.download:
        reason = _try_download(cls_name, roots[0]) or ""
        files = _find_idx_files(folders)
        reason = f"download failed: {reason}" if reason else reason
    if files is None:
        looked = ", ".join(str(f) for f in folders)
        names = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
        raise DataError(f"{cfg.name}: files not found ({names}); looked in: {looked}; {reason}. "
                        f"Put the four official IDX files in a folder and pass --data-dir "
                        f"<folder> (or set {DATA_DIR_ENV})")
    train_images = read_idx(files["train_images"]).unsqueeze(1)
    train_labels = read_idx(files["train_labels"]).long()
    test_images = read_idx(files["test_images"]).unsqueeze(1)
    test_labels = read_idx(files["test_labels"]).long()
    for kind, imgs, labs in (("train", train_images, train_labels),
                             ("test", test_images, test_labels)):
        if imgs.shape[0] != labs.shape[0]:
            raise DataError(f"{cfg.name}: {kind} images ({imgs.shape[0]}) and labels "
                            f"({labs.shape[0]}) differ in number; a file is from another dataset")
    info = _info(cfg.name, train_images, class_names)
    return Split(train_images, train_labels), None, Split(test_images, test_labels), info


for _name, _desc in (("mnist", "MNIST, 60000 + 10000 28x28 grey digits (official IDX files)"),
                     ("fashion-mnist", "Fashion-MNIST, 60000 + 10000 28x28 grey clothes")):
    _register(_name, _desc)(_load_mnist_family)


# ----------------------------------------------------------------------------- CIFAR

_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python")}


def _load_cifar(cfg: DataConfig):
    import torchvision.datasets as tvd

    cls_name, folder = _CIFAR[cfg.name]
    roots = _data_roots(cfg)
    candidates = [r for root in roots for r in (root, root / cfg.name)]
    root = next((r for r in candidates if (r / folder).is_dir()), None)
    reason = "download is off (data.download: false)"
    if root is None and cfg.download:
        failure = _try_download(cls_name, roots[0])
        root = roots[0] if failure is None else None
        reason = f"download failed: {failure}"
    if root is None:
        looked = ", ".join(str(r / folder) for r in candidates)
        raise DataError(f"{cfg.name}: the python batches folder '{folder}' was not found; looked "
                        f"in: {looked}; {reason}. Extract the official CIFAR python archive into "
                        f"a folder and pass --data-dir <folder> (or set {DATA_DIR_ENV}); a JPEG "
                        f"copy in ImageFolder layout loads as imagefolder:<path>")
    try:
        train = getattr(tvd, cls_name)(str(root), train=True, download=False)
        test = getattr(tvd, cls_name)(str(root), train=False, download=False)
    except Exception as exc:  # noqa: BLE001 - torchvision raises bare RuntimeErrors
        raise DataError(f"{root / folder}: cannot be read ({exc}); get the files again") from None

    def to_split(ds) -> Split:
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.as_tensor(ds.targets, dtype=torch.long))

    tr, te = to_split(train), to_split(test)
    return tr, None, te, _info(cfg.name, tr.images, list(train.classes))


_register("cifar10", "CIFAR-10, 50000 + 10000 32x32 colour images (torchvision batches)")(_load_cifar)
_register("cifar100", "CIFAR-100, 50000 + 10000 32x32 colour images, 100 classes")(_load_cifar)


# ----------------------------------------------------------------------------- ImageFolder

CACHE_DIR_ENV = "DISTILL_CACHE_DIR"
_IMAGEFOLDER_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where decoded datasets are cached: $DISTILL_CACHE_DIR, else ~/.cache/distill."""
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "distill"


class _Listing(NamedTuple):
    """An ImageFolder split as listed: ``(path, label)`` items in sorted order, the class
    names, and two keys of the files. ``key`` (path, names, sizes, modification times, resize)
    names the files where they are, for caches: any added, removed or changed image makes a
    new key. ``listing`` (class folder and file names, labels, sizes, resize; no path and no
    times, which a copy changes) names them wherever they are: what a resume compares for
    files left on disk, whose pixels it does not read."""

    items: list[tuple[str, int]]
    key: str
    listing: str
    classes: list[str]


def _list_image_folder(folder: Path, classes: list[str] | None, size: int | None) -> _Listing:
    """List an ImageFolder split (see :class:`_Listing`)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = classes or found
    if found != classes:
        raise DataError(f"{folder}: class folders {found} differ from train/'s {classes}")
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
    h = hashlib.sha256(json.dumps([_IMAGEFOLDER_CACHE_FORMAT, str(folder.resolve()), size,
                                   classes]).encode())
    listing = hashlib.sha256(json.dumps([size, classes]).encode())
    items = []
    for label, c in enumerate(classes):  # os.scandir: 60000 files listed in a fraction of a s
        with os.scandir(folder / c) as entries:
            files = sorted((e.name, e) for e in entries if e.name.lower().endswith(exts))
        for name, entry in files:
            st = entry.stat()
            h.update(f"{name}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            listing.update(f"{c}/{name}\0{label}\0{st.st_size}\n".encode())
            items.append((os.path.join(folder, c, name), label))
    if not items:
        raise DataError(f"{folder}: no images found in its class folders")
    return _Listing(items, h.hexdigest()[:24], listing.hexdigest()[:24], classes)


def _read_image_folder(folder: Path, items: list[tuple[str, int]], key: str, size: int | None
                       ) -> Split:
    """Every image of an ImageFolder split in memory: uint8 [N, C, H, W], labels [N].

    Decoded once, then cached on disk (``cache_dir()/imagefolder/<key>.safetensors``): a
    later run reads one file instead of decoding again.
    """
    cached = cache_dir() / "imagefolder" / f"{key}.safetensors"
    if cached.is_file():
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(cached))
            return Split(tensors["images"], tensors["labels"])
        except Exception:  # noqa: BLE001 - a damaged cache is decoded again
            pass
    images, labels = _decode_images(folder, items, size)
    write_cache(cached, {"images": images, "labels": labels})
    return Split(images, labels)


def _files_split(listed: _Listing, size: int | None, shape: tuple[int, int, int]) -> Split:
    """An ImageFolder split left on disk (decoded per batch by DataLoader workers)."""
    files = ImageFiles(tuple(path for path, _ in listed.items), shape, size, listed.key,
                       listed.listing)
    return Split(files, torch.tensor([label for _, label in listed.items], dtype=torch.long))


def store_cache_file(path: Path, write: Callable[[Path], None]) -> bool:
    """Store a cache file atomically: ``write(tmp)`` fills a temporary file beside ``path``,
    which then replaces it (readers see the old file or the whole new one). A cache that
    cannot be written (read-only folder, full disk) is skipped, not an error: it is computed
    again next time. Returns whether it was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, write, hidden=True)
        return True
    except OSError:
        return False


def write_cache(path: Path, tensors: dict[str, Tensor],
                metadata: dict[str, str] | None = None) -> bool:
    """Store a cache file of tensors (safetensors) with :func:`store_cache_file`."""
    from safetensors.torch import save_file

    return store_cache_file(path, lambda tmp: save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata))


def _decode_images(folder: Path, items: list[tuple[str, int]], size: int | None
                   ) -> tuple[Tensor, Tensor]:
    """Decode ``items`` (path, label) with a thread pool into uint8 [N, C, H, W], int64 [N]."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda item: decode_image(item[0], size), items))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise size_mismatch(folder, list(shapes))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return images, labels


def memory_budget() -> int:
    """Bytes of decoded images ``data.in_memory: auto`` keeps in memory: a quarter of this
    machine's RAM (or of its container's limit), and of a GPU's memory when there is one
    (the splits move to the training device), shared by the processes torchrun started here
    (each holds its own copy). The rest is for the model, activations and batches."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 16 GiB
        ram = 16 << 30
    try:  # a cgroup v2 memory limit ("max" when unlimited)
        ram = min(ram, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    except (OSError, ValueError):
        pass
    if torch.cuda.is_available():
        ram = min(ram, torch.cuda.get_device_properties(0).total_memory)
    local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return ram // 4 // local_world


def _load_imagefolder(cfg: DataConfig, root: Path):
    root = root.expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"imagefolder: {root / 'train'} is not a folder; expected "
                        f"<path>/train/<class>/*.jpg (optional val/ and test/)")
    listed = {"train": _list_image_folder(root / "train", None, cfg.image_size)}
    classes = listed["train"].classes
    for name in ("val", "test"):
        if (root / name).is_dir() and (name == "test" or cfg.val_size > 0):
            listed[name] = _list_image_folder(root / name, classes, cfg.image_size)
    first = decode_image(listed["train"].items[0][0], cfg.image_size)  # [H, W, 3]
    shape = (first.shape[2], first.shape[0], first.shape[1])
    decoded_bytes = first.nbytes * sum(len(split.items) for split in listed.values())
    in_memory = cfg.in_memory if cfg.in_memory is not None else decoded_bytes <= memory_budget()
    splits: dict[str, Split] = {}
    for name, split in listed.items():
        if in_memory:
            splits[name] = _read_image_folder(root / name, split.items, split.key,
                                              cfg.image_size)
            odd = tuple(splits[name].images.shape[1:])  # a split of one other size
            if odd != shape:
                raise size_mismatch(root / name, [(shape[1], shape[2], shape[0]),
                                                  (odd[1], odd[2], odd[0])])
            continue
        if cfg.image_size is None:
            _checked_once(split.key, lambda: check_sizes(root / name,
                                                         [p for p, _ in split.items], shape))
        splits[name] = _files_split(split, cfg.image_size, shape)
    train, val = splits["train"], splits.get("val")
    test = splits.get("test")
    if test is None:
        train, test = _carve_test(train)
    info_name = f"imagefolder:{root}"
    if in_memory:
        return train, val, test, _info(info_name, train.images, classes)
    mean, std = _disk_stats(train)
    return train, val, test, DataInfo(info_name, shape, len(classes), classes, mean, std)


def _checked_once(key: str, check: Callable[[], None]) -> None:
    """Run ``check`` (raises on a problem) unless it passed before for these files (``key``)."""
    marker = cache_dir() / "imagefolder" / f"{key}.sizes-checked"
    if marker.is_file():
        return
    check()
    store_cache_file(marker, Path.touch)


def _disk_stats(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants of a training split on disk: one decoding pass over it,
    then kept in ``cache_dir()/imagefolder/<files key>.stats.json``."""
    assert isinstance(split.images, ImageFiles)
    path = cache_dir() / "imagefolder" / f"{split.images.key}.stats.json"
    try:
        stored = json.loads(path.read_text())
        return tuple(stored["mean"]), tuple(stored["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std = _stats(gather(split, list(torch.arange(len(split)).split(1000))))
    store_cache_file(path, lambda tmp: tmp.write_text(json.dumps({"mean": mean, "std": std})))
    return mean, std
