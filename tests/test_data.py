"""Tests for distill.data: loading, splitting, batch order, normalisation, IDX / MNIST /
ImageFolder reading, and the one-line errors for missing or malformed data."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import (
    DATA_DIR_ENV,
    DataBundle,
    DataInfo,
    Split,
    epoch_order,
    eval_batches,
    load_data,
    normalize,
    num_batches,
    read_idx,
    train_batches,
)
from distill.errors import DataError, RecipeError
from distill.recipe import DataConfig

DIGITS_TOTAL = 1797
DIGITS_TEST = 359  # round(0.2 * 1797), carved with a fixed seed
DIGITS_TRAIN = DIGITS_TOTAL - DIGITS_TEST  # 1438

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


SHARED_DATA_DIR = os.environ.get(DATA_DIR_ENV)  # read before any test unsets it


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep $DISTILL_DATA_DIR out of the tests (the real-data test sets it back itself)."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig())


# ----------------------------------------------------------------------------- helpers

def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0,
               train_labels: np.ndarray | None = None, test_labels: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """Four tiny gzipped IDX files under root/mnist with the official names."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (train_labels if train_labels is not None
                         else rng.integers(0, 10, n_train, dtype=np.uint8)),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (test_labels if test_labels is not None
                        else rng.integers(0, 10, n_test, dtype=np.uint8)),
    }
    for key, array in arrays.items():
        write_idx(folder / f"{MNIST_NAMES[key]}.gz", array)
    return arrays


def index_split(n: int) -> tuple[Split, DataInfo]:
    """A split whose label i is i and whose image i is filled with the value i (n <= 256)."""
    assert n <= 256
    labels = torch.arange(n, dtype=torch.long)
    images = labels.to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    info = DataInfo("index", (1, 2, 2), n, [str(i) for i in range(n)], (0.0,), (1.0,))
    return Split(images, labels), info


def collect(split: Split, info: DataInfo, batch_size: int, data_seed: int, epoch: int, **kw):
    return list(train_batches(split, info, batch_size, data_seed, epoch, **kw))


def labels_of(batches) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


CLASS_COLOURS = {"cat": (10, 20, 200), "ant": (200, 30, 5)}  # 'ant' sorts first


def image_folder(root: Path, n_train: int = 6, n_test: int = 3, size: int = 10) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, colour in CLASS_COLOURS.items():
            for i in range(n):
                write_png(root / split / cls / f"{i:03d}.png", (size, size), colour)
    return root


# ----------------------------------------------------------------------------- digits

def test_digits_shapes_dtypes_and_sizes(digits) -> None:
    assert digits.info.name == "digits"
    assert digits.info.in_shape == (1, 8, 8)
    assert digits.info.num_classes == 10
    assert digits.info.class_names == [str(d) for d in range(10)]
    for split in (digits.train, digits.val, digits.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (1, 8, 8)
        assert split.labels.dtype == torch.int64
        assert split.images.shape[0] == split.labels.shape[0]
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == 9
    assert int(digits.train.images.max()) == 255  # 0..16 scaled to 0..255
    assert len(digits.test) == DIGITS_TEST
    assert len(digits.val) == 144  # round(0.1 * 1438)
    assert len(digits.train) == DIGITS_TRAIN - 144
    assert digits.description["train"] == DIGITS_TRAIN - 144
    assert digits.description["val"] == 144
    assert digits.description["test"] == DIGITS_TEST


def test_digits_test_split_is_fixed_for_any_data_seed_or_val_size(digits) -> None:
    for cfg in (DataConfig(data_seed=7), DataConfig(data_seed=123, val_size=0),
                DataConfig(val_size=300)):
        other = load_data(cfg)
        assert torch.equal(other.test.images, digits.test.images)
        assert torch.equal(other.test.labels, digits.test.labels)


def test_val_size_fraction_and_count() -> None:
    frac = load_data(DataConfig(val_size=0.25))
    assert len(frac.val) == round(0.25 * DIGITS_TRAIN)
    assert len(frac.train) + len(frac.val) == DIGITS_TRAIN
    count = load_data(DataConfig(val_size=100))
    assert len(count.val) == 100
    assert len(count.train) == DIGITS_TRAIN - 100


def test_val_size_zero_trains_on_all_non_test_images(digits) -> None:
    bundle = load_data(DataConfig(val_size=0))
    assert bundle.val is None
    assert len(bundle.train) == DIGITS_TRAIN
    assert bundle.description["val"] == 0
    # train + val of the default split is exactly the full training set, as a multiset
    both = torch.cat([digits.train.images, digits.val.images]).flatten(1)
    full = bundle.train.images.flatten(1)
    key = lambda x: sorted(map(bytes, x.numpy()))  # noqa: E731
    assert key(both) == key(full)


def test_val_size_leaving_no_training_data_is_an_error() -> None:
    with pytest.raises(RecipeError) as exc:
        load_data(DataConfig(val_size=DIGITS_TRAIN))
    assert str(exc.value) == (f"data.val_size: {float(DIGITS_TRAIN)} leaves 0 training images "
                              f"of {DIGITS_TRAIN}; at least 2 are needed")


# ----------------------------------------------------------------------------- data_seed

def test_same_data_seed_gives_identical_split(digits) -> None:
    again = load_data(DataConfig(data_seed=0))
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.train.labels, digits.train.labels)
    assert torch.equal(again.val.images, digits.val.images)
    assert torch.equal(again.val.labels, digits.val.labels)
    assert again.fingerprint() == digits.fingerprint()


def test_different_data_seed_gives_different_val_split(digits) -> None:
    other = load_data(DataConfig(data_seed=1))
    assert len(other.val) == len(digits.val)
    assert not torch.equal(other.val.images, digits.val.images)
    assert not torch.equal(other.train.images, digits.train.images)
    assert other.fingerprint() != digits.fingerprint()


def test_split_does_not_depend_on_global_torch_rng() -> None:
    torch.manual_seed(1)
    a = load_data(DataConfig(data_seed=3))
    torch.manual_seed(999)
    b = load_data(DataConfig(data_seed=3))
    assert torch.equal(a.val.images, b.val.images)
    assert torch.equal(a.train.labels, b.train.labels)


# ----------------------------------------------------------------------------- batch order

def test_train_batches_same_seed_and_epoch_are_identical(digits) -> None:
    a = collect(digits.train, digits.info, 64, data_seed=0, epoch=3)
    b = collect(digits.train, digits.info, 64, data_seed=0, epoch=3)
    assert len(a) == len(b) == num_batches(len(digits.train), 64)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    xa, ya = a[0]
    assert xa.dtype == torch.float32 and xa.shape == (64, 1, 8, 8)
    assert ya.dtype == torch.int64 and ya.shape == (64,)


def test_batch_order_ignores_global_torch_rng() -> None:
    """Runs that differ only in `seed` (torch.manual_seed) see the same batches."""
    split, info = index_split(200)
    torch.manual_seed(0)
    a = labels_of(collect(split, info, 16, data_seed=5, epoch=2))
    torch.manual_seed(12345)
    torch.rand(10)  # consume some global randomness too
    b = labels_of(collect(split, info, 16, data_seed=5, epoch=2))
    assert torch.equal(a, b)


def test_batch_order_changes_with_epoch_and_data_seed() -> None:
    split, info = index_split(200)
    base = labels_of(collect(split, info, 16, data_seed=5, epoch=0))
    next_epoch = labels_of(collect(split, info, 16, data_seed=5, epoch=1))
    other_seed = labels_of(collect(split, info, 16, data_seed=6, epoch=0))
    assert not torch.equal(base, next_epoch)
    assert not torch.equal(base, other_seed)
    assert not torch.equal(base, torch.arange(200)[:len(base)])  # actually shuffled
    # the order is epoch_order's
    assert torch.equal(base, epoch_order(200, 5, 0)[:len(base)])


def test_every_image_once_per_epoch_and_images_stay_with_labels() -> None:
    split, info = index_split(200)
    for epoch in range(3):
        batches = collect(split, info, 32, data_seed=1, epoch=epoch)
        seen = labels_of(batches)
        assert sorted(seen.tolist()) == list(range(200))  # 6*32 + 8: nothing dropped
        for x, y in batches:
            # image i holds the value i everywhere (mean 0, std 1 -> x = i / 255)
            values = (x * 255).round().long()
            assert torch.equal(values[:, 0, 0, 0], y)
            assert torch.equal(values.amin(dim=(1, 2, 3)), values.amax(dim=(1, 2, 3)))


def test_every_digits_training_image_appears_once(digits) -> None:
    n = len(digits.train)
    batches = collect(digits.train, digits.info, 50, data_seed=2, epoch=0)
    order = epoch_order(n, 2, 0)
    expected_n = n if n % 50 != 1 else n - 1
    seen_labels = labels_of(batches)
    assert len(seen_labels) == expected_n
    assert torch.equal(seen_labels, digits.train.labels[order[:expected_n]])
    xs = torch.cat([x for x, _ in batches])
    assert torch.allclose(xs, normalize(digits.train.images[order[:expected_n]], digits.info))


@pytest.mark.parametrize("n,b,expected", [(10, 3, 3), (11, 3, 4), (9, 3, 3), (12, 5, 3),
                                          (11, 5, 2), (64, 64, 1), (65, 64, 1), (66, 64, 2),
                                          (2, 3, 1), (1, 3, 0)])
def test_num_batches_drops_only_a_trailing_batch_of_one(n: int, b: int, expected: int) -> None:
    assert num_batches(n, b) == expected


def test_trailing_batch_of_one_is_dropped() -> None:
    split, info = index_split(10)
    batches = collect(split, info, 3, data_seed=0, epoch=0)
    assert [len(y) for _, y in batches] == [3, 3, 3]
    seen = labels_of(batches)
    assert len(set(seen.tolist())) == 9
    order = epoch_order(10, 0, 0)
    assert set(range(10)) - set(seen.tolist()) == {int(order[-1])}


def test_trailing_batch_of_two_is_kept() -> None:
    split, info = index_split(11)
    batches = collect(split, info, 3, data_seed=0, epoch=0)
    assert [len(y) for _, y in batches] == [3, 3, 3, 2]
    assert sorted(labels_of(batches).tolist()) == list(range(11))


def test_start_skips_batches_for_resuming() -> None:
    split, info = index_split(100)
    full = collect(split, info, 8, data_seed=4, epoch=1)
    resumed = collect(split, info, 8, data_seed=4, epoch=1, start=5)
    assert len(resumed) == len(full) - 5
    for (_, ya), (_, yb) in zip(full[5:], resumed):
        assert torch.equal(ya, yb)


def test_a_resumed_epoch_augments_each_batch_as_the_whole_epoch_did() -> None:
    """The draws of batch b come from (data_seed, epoch, b), not from b's place after the
    resume: batches 5.. are the same augmented images either way."""
    from distill.augment import BatchAugment
    from distill.recipe import AugmentConfig

    gen = torch.Generator().manual_seed(0)
    split = Split((torch.rand(100, 1, 6, 6, generator=gen) * 255).to(torch.uint8),
                  torch.zeros(100, dtype=torch.long))
    info = DataInfo("noise", (1, 6, 6), 1, ["0"], (0.0,), (1.0,))
    augment = BatchAugment(AugmentConfig(jitter=2, flip=True))
    full = collect(split, info, 8, data_seed=4, epoch=1, augment=augment)
    resumed = collect(split, info, 8, data_seed=4, epoch=1, start=5, augment=augment)
    for (xa, _), (xb, _) in zip(full[5:], resumed, strict=True):
        assert torch.equal(xa, xb)


# ----------------------------------------------------------------------------- normalisation

def test_normalised_training_split_has_zero_mean_unit_std(digits) -> None:
    x = normalize(digits.train.images, digits.info)
    assert x.dtype == torch.float32
    assert x.shape == digits.train.images.shape
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05
    assert 0.2 < digits.info.mean[0] < 0.4  # the raw statistic is not already 0 / 1
    assert 0.3 < digits.info.std[0] < 0.5


def test_normalisation_constants_come_from_the_whole_training_set() -> None:
    full = load_data(DataConfig(val_size=0))  # train = every non-test image
    pixels = full.train.images.double() / 255
    # tight enough to tell the unbiased std (the documented one, torch's default) from the
    # biased one: on these 1438 x 64 pixels they differ by a factor 1 + 5.4e-6
    assert full.info.mean[0] == pytest.approx(float(pixels.mean()), rel=1e-9)
    assert full.info.std[0] == pytest.approx(float(pixels.std()), rel=1e-9)
    assert full.info.std[0] != pytest.approx(float(pixels.std(correction=0)), rel=1e-9)


def test_normalisation_constants_ignore_split_settings(digits) -> None:
    for cfg in (DataConfig(data_seed=9), DataConfig(val_size=0), DataConfig(val_size=500),
                DataConfig(subset=100)):
        info = load_data(cfg).info
        assert info.mean == digits.info.mean
        assert info.std == digits.info.std


def test_eval_batches_cover_the_split_in_stored_order_normalised_never_augmented(digits) -> None:
    batches = list(eval_batches(digits.test, digits.info, batch_size=100))
    assert [len(y) for _, y in batches] == [100, 100, 100, DIGITS_TEST - 300]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(images, normalize(digits.test.images, digits.info))
    assert torch.equal(labels, digits.test.labels)
    again = torch.cat([x for x, _ in eval_batches(digits.test, digits.info, batch_size=100)])
    assert torch.equal(again, images)  # no random draw anywhere


def test_normalize_per_channel() -> None:
    images = torch.tensor([[[[0]], [[255]], [[51]]]], dtype=torch.uint8)  # [1, 3, 1, 1]
    info = DataInfo("x", (3, 1, 1), 2, ["a", "b"], (0.0, 0.5, 0.2), (1.0, 0.5, 0.1))
    out = normalize(images, info).flatten().tolist()
    assert out == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    img = read_idx(write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images))
    lab = read_idx(write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels))
    assert img.dtype == torch.uint8 and tuple(img.shape) == (7, 28, 28)
    assert lab.dtype == torch.uint8 and tuple(lab.shape) == (7,)
    assert np.array_equal(img.numpy(), images)
    assert np.array_equal(lab.numpy(), labels)


def test_read_idx_truncated_raw_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError) as exc:
        read_idx(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ")
    assert "truncated" in msg
    assert msg == (f"{path}: holds 90 bytes of data, expected 100 for shape (4, 5, 5); the file "
                   f"is truncated or corrupted, get it again")


def test_read_idx_truncated_gz_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.arange(300, dtype=np.uint8).reshape(3, 10, 10))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError) as exc:
        read_idx(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: cannot be read (")
    assert "truncated" in msg
    assert "\n" not in msg


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x04\x00\x00")  # 3 dims, 1.5 given
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(exc.value) == (f"{path}: the IDX header is truncated (10 bytes, needs 16); the "
                              "file is truncated or corrupted, get it again")


def test_read_idx_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")  # 0x0d: float data, not uint8
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(exc.value) == f"{path}: not an IDX file of unsigned bytes (bad header)"
    path.write_bytes(b"PK\x03\x04rest")  # some other file format
    with pytest.raises(DataError, match="bad header"):
        read_idx(path)


def test_read_idx_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01a")  # raw bytes with a .gz name
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(exc.value).startswith(f"{path}: cannot be read (")


# ----------------------------------------------------------------------------- MNIST (fake)

def test_fake_mnist_loads(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    bundle = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=10,
                                  download=False))
    assert bundle.info.name == "mnist"
    assert bundle.info.in_shape == (1, 28, 28)
    assert bundle.info.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 20)
    assert bundle.train.images.dtype == torch.uint8
    assert tuple(bundle.train.images.shape) == (40, 1, 28, 28)
    assert bundle.train.labels.dtype == torch.int64
    # the test split is the test file, in order
    assert np.array_equal(bundle.test.images[:, 0].numpy(), arrays["test_images"])
    assert np.array_equal(bundle.test.labels.numpy(), arrays["test_labels"].astype(np.int64))
    # train + val are the train file, split without reordering inside either side
    both = torch.cat([bundle.train.images, bundle.val.images])[:, 0].numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, arrays["train_images"]))
    position = {bytes(image): i for i, image in enumerate(arrays["train_images"])}
    assert len(position) == 50  # every image differs, so each has one place in the file
    for side in (bundle.train, bundle.val):
        places = [position[bytes(image)] for image in side.images[:, 0].numpy()]
        assert places == sorted(places)
    # statistics come from the whole training file
    expected_mean = arrays["train_images"].astype(np.float64).mean() / 255
    assert bundle.info.mean[0] == pytest.approx(expected_mean, rel=1e-5)


def test_fake_mnist_subset_and_test_subset(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    bundle = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=0,
                                  subset=15, test_subset=5, download=False))
    assert len(bundle.train) == 15
    assert bundle.val is None
    assert len(bundle.test) == 5
    # a fixed draw in stored order: rows of the original arrays, increasing, not the first n
    def rows(images, source):
        flat = source.reshape(len(source), -1)
        return [next(i for i, r in enumerate(flat) if np.array_equal(r, img.reshape(-1)))
                for img in images[:, 0].numpy()]
    train_rows = rows(bundle.train.images, arrays["train_images"])
    assert train_rows == sorted(train_rows) and train_rows != list(range(15))
    assert len(set(rows(bundle.test.images, arrays["test_images"]))) == 5
    again = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=0, subset=15,
                                 test_subset=5, download=False, data_seed=3))
    assert torch.equal(again.train.images, bundle.train.images)  # independent of the seeds
    assert bundle.description["train"] == 15 and bundle.description["test"] == 5


def test_subset_of_a_class_sorted_image_folder_keeps_every_class(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets", n_train=20, n_test=10)
    bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_size=0, subset=10,
                                  test_subset=6))
    assert set(bundle.train.labels.tolist()) == {0, 1}
    assert set(bundle.test.labels.tolist()) == {0, 1}


def test_fake_mnist_found_in_data_dir_itself_and_uncompressed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {"train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 12, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 4, dtype=np.uint8)}
    for key, array in arrays.items():
        write_idx(tmp_path / MNIST_NAMES[key], array)  # no .gz, no mnist/ subfolder
    bundle = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=0,
                                  download=False))
    assert np.array_equal(bundle.train.labels.numpy(), arrays["train_labels"].astype(np.int64))


def test_mnist_missing_files_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="mnist", data_dir=str(empty), download=False))
    assert str(exc.value) == (
        "mnist: files not found (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); "
        f"looked in: {empty}, {empty}/mnist, {empty}/MNIST/raw, {empty}/MNIST; "
        "download is off (data.download: false). Put the four official IDX files in a folder "
        "and pass --data-dir <folder> (or set DISTILL_DATA_DIR)")


def test_mnist_missing_files_when_the_download_fails(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: torchvision's download raises; the error says why, and where it looked."""
    import urllib.error

    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz") from (
            urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tvd, "MNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="mnist", data_dir=str(empty)))
    assert str(exc.value) == (
        "mnist: files not found (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); "
        f"looked in: {empty}, {empty}/mnist, {empty}/MNIST/raw, {empty}/MNIST; "
        "download failed: Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno "
        "-3] Temporary failure in name resolution>. Put the four official IDX files in a "
        "folder and pass --data-dir <folder> (or set DISTILL_DATA_DIR)")


def test_mnist_missing_files_without_data_dir_looks_in_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="fashion-mnist", download=False))
    assert ("looked in: data, data/fashion-mnist, data/fashion_mnist, data/FashionMNIST/raw, "
            "data/FashionMNIST; download is off") in str(exc.value)


def test_mnist_env_data_dir_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mnist(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    bundle = load_data(DataConfig(name="mnist", val_size=0, download=False))
    assert len(bundle.train) == 50


def test_mnist_label_out_of_range(tmp_path: Path) -> None:
    test_labels = np.zeros(20, np.uint8)
    test_labels[7] = 12
    fake_mnist(tmp_path, test_labels=test_labels)
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=0, download=False))
    assert str(exc.value) == "dataset 'mnist': test labels must lie in [0, 9], found 12"


def test_mnist_train_label_out_of_range(tmp_path: Path) -> None:
    train_labels = np.full(50, 3, np.uint8)
    train_labels[0] = 12
    fake_mnist(tmp_path, train_labels=train_labels)
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path), val_size=0, download=False))
    assert str(exc.value) == "dataset 'mnist': train labels must lie in [0, 9], found 12"


def test_mnist_images_and_labels_differ_in_number(tmp_path: Path) -> None:
    fake_mnist(tmp_path, train_labels=np.zeros(49, np.uint8))
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path), download=False))
    assert str(exc.value) == ("mnist: train images (50) and labels (49) differ in number; "
                              "a file is from another dataset")


# ----------------------------------------------------------------------------- ImageFolder

def test_imagefolder_loads(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_size=0))
    assert bundle.info.class_names == ["ant", "cat"]
    assert bundle.info.num_classes == 2
    assert bundle.info.in_shape == (3, 10, 10)
    assert bundle.val is None
    assert (len(bundle.train), len(bundle.test)) == (12, 6)
    assert bundle.train.labels.tolist() == [0] * 6 + [1] * 6
    assert bundle.test.labels.tolist() == [0] * 3 + [1] * 3
    assert bundle.train.images.dtype == torch.uint8
    # PNG is lossless: every 'ant' pixel is ant's colour, every 'cat' pixel cat's
    for label, cls in enumerate(["ant", "cat"]):
        imgs = bundle.train.images[bundle.train.labels == label]
        colour = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8).view(1, 3, 1, 1)
        assert torch.equal(imgs, colour.expand_as(imgs))


def test_content_fingerprint_follows_the_images_not_their_folder(tmp_path: Path) -> None:
    """What a resume with data read from elsewhere compares (distill/checkpoint.py)."""
    def fingerprint(root: Path, **kw) -> str:
        return load_data(DataConfig(name=f"imagefolder:{root}", val_size=2, **kw)
                         ).content_fingerprint()

    a = image_folder(tmp_path / "a")
    shutil.copytree(a, tmp_path / "b")
    assert fingerprint(a) == fingerprint(tmp_path / "b")
    write_png(tmp_path / "b" / "test" / "cat" / "002.png", (10, 10), (10, 20, 201))
    assert fingerprint(tmp_path / "b") != fingerprint(a)  # one test image, blue 200 -> 201
    assert fingerprint(a, data_seed=1) != fingerprint(a)  # another validation split
    # the normalisation constants count too: they come from every training image, also
    # those a `subset` leaves out
    bundle = load_data(DataConfig(name=f"imagefolder:{a}", val_size=2))
    before = bundle.content_fingerprint()
    bundle.info = dataclasses.replace(bundle.info, mean=(0.5, 0.5, 0.5))
    assert bundle.content_fingerprint() != before


def test_fingerprints_follow_the_labels_too(tmp_path: Path) -> None:
    """The same images with other labels (a relabelled test set, say) are other data: for a
    resume (content fingerprint) and for the teacher-logits cache (cache fingerprint)."""
    def bundle(root: Path) -> DataBundle:
        return load_data(DataConfig(name="mnist", data_dir=str(root), val_size=10,
                                    download=False))

    train_labels, test_labels = np.arange(50, dtype=np.uint8) % 10, np.zeros(20, np.uint8)
    fake_mnist(tmp_path / "a", train_labels=train_labels, test_labels=test_labels)
    a = bundle(tmp_path / "a")
    other_test, other_train = test_labels.copy(), train_labels.copy()
    other_test[3] = 1  # one test label
    other_train[0] = 1  # one training label
    fake_mnist(tmp_path / "b", train_labels=train_labels, test_labels=other_test)
    fake_mnist(tmp_path / "c", train_labels=other_train, test_labels=test_labels)
    for relabelled in (bundle(tmp_path / "b"), bundle(tmp_path / "c")):
        for split in ("train", "val", "test"):  # the same seed: the same pixels
            assert torch.equal(getattr(relabelled, split).images, getattr(a, split).images)
        assert relabelled.content_fingerprint() != a.content_fingerprint()
        assert relabelled.cache_fingerprint() != a.cache_fingerprint()
    assert bundle(tmp_path / "a").content_fingerprint() == a.content_fingerprint()


def test_files_left_on_disk_are_fingerprinted_by_their_listing(tmp_path: Path) -> None:
    """Files left on disk are not decoded to be hashed (a pass over the data): their class
    folders, names, sizes and labels stand for the pixels, wherever they are and whatever
    their modification times (a copy changes them); another file, name or size changes it."""
    def fingerprint(root: Path, **kw) -> str:
        return load_data(DataConfig(name=f"imagefolder:{root}", val_size=2, in_memory=False,
                                    **kw)).content_fingerprint()

    a = image_folder(tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "b")
    os.utime(b / "train" / "cat" / "000.png", (0, 0))  # a copy that kept no times
    on_disk = fingerprint(a)
    assert on_disk.startswith("files:") and len(on_disk) == len("files:") + 16
    assert fingerprint(b) == on_disk
    assert fingerprint(a, data_seed=1) != on_disk  # another validation split
    write_png(b / "train" / "cat" / "006.png", (10, 10), CLASS_COLOURS["cat"])  # one more
    one_more = fingerprint(b)
    assert one_more != on_disk
    (b / "train" / "cat" / "006.png").rename(b / "train" / "cat" / "007.png")  # renamed
    assert fingerprint(b) not in (on_disk, one_more)
    (b / "train" / "cat" / "007.png").unlink()
    assert fingerprint(b) == on_disk
    write_png(b / "test" / "ant" / "000.png", (12, 12), CLASS_COLOURS["ant"])  # resized
    assert fingerprint(b, image_size=10) != fingerprint(a, image_size=10)


def test_imagefolder_val_carved_from_train(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_size=4))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 4, 6)


def test_imagefolder_mismatched_sizes(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    write_png(root / "train" / "cat" / "big.png", (12, 12), (1, 2, 3))
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name=f"imagefolder:{root}"))
    msg = str(exc.value)
    assert msg.startswith(f"{root / 'train'}: images differ in size (")
    assert "data.image_size" in msg
    assert msg.endswith("; set data.image_size to resize them all")


def test_imagefolder_image_size_resizes(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    write_png(root / "train" / "cat" / "big.png", (12, 12), CLASS_COLOURS["cat"])
    bundle = load_data(DataConfig(name=f"imagefolder:{root}", image_size=8, val_size=0))
    assert bundle.info.in_shape == (3, 8, 8)
    assert tuple(bundle.train.images.shape) == (13, 3, 8, 8)
    assert tuple(bundle.test.images.shape) == (6, 3, 8, 8)


def test_imagefolder_missing_train(tmp_path: Path) -> None:
    root = tmp_path / "nothing"
    (root / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name=f"imagefolder:{root}"))
    assert str(exc.value) == (f"imagefolder: {root / 'train'} is not a folder; expected "
                              "<path>/train/<class>/*.jpg (optional val/ and test/)")


def test_imagefolder_test_classes_must_match(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    write_png(root / "test" / "dog" / "000.png", (10, 10), (0, 0, 0))
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name=f"imagefolder:{root}"))
    assert str(exc.value) == (f"{root / 'test'}: class folders ['ant', 'cat', 'dog'] differ "
                              "from train/'s ['ant', 'cat']")


# ----------------------------------------------------------------------------- names

def test_unknown_dataset() -> None:
    with pytest.raises(RecipeError) as exc:
        load_data(DataConfig(name="nope"))
    assert str(exc.value) == ("unknown dataset 'nope'; known datasets: cifar10, cifar100, "
                              "digits, fashion-mnist, mnist, imagefolder:<path>")


# ----------------------------------------------------------------------------- real MNIST

def test_real_mnist_from_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = SHARED_DATA_DIR
    official = Path(data_dir) / "mnist" / "train-images-idx3-ubyte.gz" if data_dir else None
    if official is None or not official.is_file():
        pytest.skip(f"shared data folder absent: set {DATA_DIR_ENV} to a folder holding "
                    "mnist/train-images-idx3-ubyte.gz (e.g. ../shared/data)")
    monkeypatch.setenv(DATA_DIR_ENV, data_dir)
    labels = read_idx(official.parent / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    bundle = load_data(DataConfig(name="mnist", subset=500, test_subset=200, val_size=0,
                                  download=False))
    assert bundle.info.in_shape == (1, 28, 28)
    assert tuple(bundle.train.images.shape) == (500, 1, 28, 28)
    assert tuple(bundle.test.images.shape) == (200, 1, 28, 28)
    assert set(bundle.train.labels.tolist()) == set(range(10))
    assert bundle.info.mean[0] == pytest.approx(0.1307, abs=1e-3)  # the well-known MNIST stats
    assert bundle.info.std[0] == pytest.approx(0.3081, abs=1e-3)


def test_imagefolder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    import distill.data as data_module

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "imgs")
    decoded: list[int] = []
    original = data_module._decode_images

    def counting(folder, items, size):
        decoded.append(len(items))
        return original(folder, items, size)

    monkeypatch.setattr(data_module, "_decode_images", counting)
    cfg = DataConfig(name=f"imagefolder:{root}", val_size=0)
    first = load_data(cfg)
    assert len(decoded) == 2 and len(list((tmp_path / "cache" / "imagefolder").iterdir())) == 2
    again = load_data(cfg)
    assert len(decoded) == 2  # both splits came from the cache
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.labels, first.test.labels)
    changed = sorted((root / "train").rglob("*.png"))[0]
    write_png(changed, (10, 10), (1, 2, 3))  # one image changed: its split is decoded again
    os.utime(changed, ns=(1, 1))
    third = load_data(cfg)
    assert len(decoded) == 3
    assert not torch.equal(third.train.images, first.train.images)


def test_a_cache_file_is_replaced_whole_or_not_at_all(tmp_path) -> None:
    """A failed write (full disk, read-only folder) leaves the old file and no temporary."""
    from distill.data import store_cache_file

    path = tmp_path / "c" / "x.json"
    assert store_cache_file(path, lambda tmp: tmp.write_text("old"))

    def full_disk(tmp) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    assert store_cache_file(path, full_disk) is False
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_decoded_data_are_cached_under_home_unless_distill_cache_dir_says_where(
        tmp_path, monkeypatch) -> None:
    """The README's default (~/.cache/distill), which the test session's own cache folder
    (conftest) otherwise hides."""
    from distill.data import cache_dir

    monkeypatch.delenv("DISTILL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "distill"
    monkeypatch.setenv("DISTILL_CACHE_DIR", "~/elsewhere")
    assert cache_dir() == tmp_path / "elsewhere"
