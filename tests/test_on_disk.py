"""ImageFolder data left on disk (the DataLoader path for data that do not fit in memory)
serve exactly the batches the in-memory path serves, and train exactly the same model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import distill.data as data_module
from distill import api
from distill.augment import BatchAugment
from distill.data import eval_batches, indexed_train_batches, load_data
from distill.errors import DataError, RecipeError
from distill.imagefiles import ImageFiles, close_pools
from distill.recipe import AugmentConfig, DataConfig


def noisy_image_folder(root: Path, per_class: int = 12, test: int = 4, size: int = 8) -> Path:
    """3 classes of random RGB PNGs, each class with its own colour cue."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, n in (("train", per_class), ("test", test)):
        for c in range(3):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., c] = 200 + c
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def both(root: Path, **kw):
    name = f"imagefolder:{root}"
    return (load_data(DataConfig(name=name, in_memory=True, **kw)),
            load_data(DataConfig(name=name, in_memory=False, **kw)))


def test_on_disk_batches_equal_in_memory_batches(tmp_path: Path, capfd) -> None:
    memory, disk = both(noisy_image_folder(tmp_path / "f"), val_size=5, data_seed=3)
    assert disk.train.on_disk and disk.val.on_disk and disk.test.on_disk
    assert not memory.train.on_disk
    assert disk.info == memory.info  # same exact normalisation constants
    assert disk.description == memory.description
    for a, b in ((memory.train, disk.train), (memory.val, disk.val), (memory.test, disk.test)):
        assert torch.equal(a.labels, b.labels)
        for (xa, ya), (xb, yb) in zip(eval_batches(a, memory.info, 4),
                                      eval_batches(b, disk.info, 4), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    augment = BatchAugment(AugmentConfig(jitter=2, flip=True))
    for shard in (None, (1, 2)):
        kw = dict(batch_size=7, data_seed=3, epoch=2, start=1, augment=augment, shard=shard)
        got = list(indexed_train_batches(disk.train, disk.info, **kw))
        want = list(indexed_train_batches(memory.train, memory.info, **kw))
        assert len(got) == len(want) == 4  # 31 images in 7, 7, 7, 7, 3; the first skipped
        for (xa, ya, ia), (xb, yb, ib) in zip(want, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert "Warning" not in capfd.readouterr().err  # workers print nothing either


def test_teacher_and_student_trained_from_disk_equal_in_memory_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = noisy_image_folder(tmp_path / "f")
    weights, served = {}, []

    def spy(cfg: DataConfig) -> data_module.DataBundle:  # which path each run really took
        bundle = load_data(cfg)
        served.append(bundle.train.on_disk)
        return bundle

    monkeypatch.setattr(api, "load_data", spy)
    for in_memory in (True, False):
        common = {"data.name": f"imagefolder:{root}", "data.in_memory": in_memory,
                  "data.val_size": 5, "output_dir": str(tmp_path / f"out-{in_memory}"),
                  "teacher.epochs": 2, "student.epochs": 2, "teacher.batch_size": 8,
                  "student.batch_size": 8, "teacher.augment.flip": True,
                  "teacher.model.hidden_sizes": [16], "student.model.hidden_sizes": [8]}
        t = api.teach(None, common, name="t", quiet=True, wandb="disabled")
        s = api.student(None, {**common, "student.teacher": str(t.run_dir)}, name="s",
                        quiet=True, wandb="disabled")
        weights[in_memory] = [load_file(str(r.run_dir / "model.safetensors")) for r in (t, s)]
        summary = json.loads((s.run_dir / "summary.json").read_text())
        assert summary["test"]["n"] == 12
    assert served == [False, False, True, True]  # teacher, student in memory; then from disk
    for mem, disk in zip(weights[True], weights[False]):
        assert mem.keys() == disk.keys()
        for k in mem:
            torch.testing.assert_close(disk[k], mem[k], rtol=0, atol=1e-6)


def test_auto_leaves_data_on_disk_only_when_over_the_memory_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = noisy_image_folder(tmp_path / "f")
    cfg = DataConfig(name=f"imagefolder:{root}", val_size=0)
    cache = data_module.cache_dir() / "imagefolder"
    before = set(cache.glob("*")) if cache.is_dir() else set()
    monkeypatch.setattr(data_module, "memory_budget", lambda: 48 * 8 * 8 * 3 - 1)  # 1 byte short
    disk = load_data(cfg)
    assert disk.train.on_disk and isinstance(disk.train.images, ImageFiles)
    new = {p.name for p in set(cache.glob("*")) - before}
    assert new and all(n.endswith((".stats.json", ".sizes-checked")) for n in new)  # no pixels
    monkeypatch.setattr(data_module, "memory_budget", lambda: 48 * 8 * 8 * 3)
    memory = load_data(cfg)
    assert not memory.train.on_disk and memory.train.images.shape == (36, 3, 8, 8)


def test_on_disk_normalisation_constants_are_read_back_from_their_cache(tmp_path: Path) -> None:
    root = noisy_image_folder(tmp_path / "f")
    cfg = DataConfig(name=f"imagefolder:{root}", val_size=0, in_memory=False)
    first = load_data(cfg)
    stats = data_module.cache_dir() / "imagefolder" / f"{first.train.images.key}.stats.json"
    assert json.loads(stats.read_text())["mean"] == list(first.info.mean)
    stats.write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    assert load_data(cfg).info.mean == (0.5, 0.5, 0.5)  # read, not decoded again


def test_on_disk_image_of_another_size_is_found_when_loading(tmp_path: Path) -> None:
    from PIL import Image

    root = noisy_image_folder(tmp_path / "f")
    Image.new("RGB", (12, 12)).save(root / "test" / "c1" / "zz.png")
    with pytest.raises(DataError) as exc:  # not at the end of training
        load_data(DataConfig(name=f"imagefolder:{root}", val_size=0, in_memory=False))
    assert str(exc.value) == (f"{root / 'test'}: images differ in size ([(8, 8, 3), (12, 12, 3)]"
                              " ...); set data.image_size to resize them all")


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_split_whose_images_all_have_another_size_is_refused_when_loading(
        tmp_path: Path, in_memory: bool) -> None:
    """Each split agrees with itself, but test/ is 12 x 12 where train/ is 8 x 8: a ResNet's
    global pooling would test at the wrong size without any error."""
    from PIL import Image

    root = noisy_image_folder(tmp_path / "f")
    for path in (root / "test").rglob("*.png"):
        Image.new("RGB", (12, 12)).save(path)
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name=f"imagefolder:{root}", val_size=0, in_memory=in_memory))
    assert str(exc.value) == (f"{root / 'test'}: images differ in size ([(8, 8, 3), (12, 12, 3)]"
                              " ...); set data.image_size to resize them all")


def test_an_image_failing_in_a_worker_is_a_one_line_error_and_stops_the_workers(
        tmp_path: Path) -> None:
    import multiprocessing

    root = noisy_image_folder(tmp_path / "f")
    bad = root / "test" / "c2" / "01.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header reads, the pixels do not decode
    bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_size=0, in_memory=False))
    close_pools()  # the workers other tests kept
    with pytest.raises(DataError) as exc:
        list(eval_batches(bundle.test, bundle.info))
    message = str(exc.value)
    assert message.startswith(f"{bad}: cannot be decoded (") and "\n" not in message
    assert multiprocessing.active_children() == []


def test_workers_persist_between_passes_and_an_unfinished_pass_is_drained(
        tmp_path: Path) -> None:
    """Epoch after epoch the same worker processes decode (no start-up cost per epoch); a
    pass abandoned after one batch leaves nothing behind for the next pass to serve."""
    import multiprocessing

    memory, disk = both(noisy_image_folder(tmp_path / "f"), val_size=0, data_seed=3)
    close_pools()
    kw = dict(batch_size=5, data_seed=3, start=0)
    want = [list(indexed_train_batches(memory.train, memory.info, epoch=e, **kw))
            for e in (1, 2)]
    got1 = list(indexed_train_batches(disk.train, disk.info, epoch=1, **kw))
    workers = {p.pid for p in multiprocessing.active_children()}
    assert workers  # kept after the pass
    unfinished = indexed_train_batches(disk.train, disk.info, epoch=2, **kw)
    next(unfinished)
    unfinished.close()  # e.g. a run stopped mid-epoch; its prefetched batches are pending
    got2 = list(indexed_train_batches(disk.train, disk.info, epoch=2, **kw))
    assert {p.pid for p in multiprocessing.active_children()} == workers
    open_pass = indexed_train_batches(disk.train, disk.info, epoch=2, **kw)
    next(open_pass)  # the kept workers are mid-pass: a second reader gets its own, for one pass
    again = list(indexed_train_batches(disk.train, disk.info, epoch=1, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, got1, strict=True))
    assert {p.pid for p in multiprocessing.active_children()} == workers  # those are gone
    open_pass.close()
    for want_epoch, got_epoch in ((want[0], got1), (want[1], got2)):
        assert len(got_epoch) == len(want_epoch) == 7  # 36 images: 7 x 5 (a last 1 is dropped)
        for (xa, ya, ia), (xb, yb, ib) in zip(want_epoch, got_epoch):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    close_pools()
    assert multiprocessing.active_children() == []


def test_in_memory_false_is_refused_for_builtin_datasets() -> None:
    with pytest.raises(RecipeError) as exc:
        load_data(DataConfig(name="digits", in_memory=False))
    assert str(exc.value) == ("data.in_memory: false applies to imagefolder: datasets only; "
                              "'digits' is always held in memory")


def test_teacher_cache_key_of_files_follows_the_files(tmp_path: Path) -> None:
    from PIL import Image

    root = noisy_image_folder(tmp_path / "f")
    cfg = DataConfig(name=f"imagefolder:{root}", val_size=0, in_memory=False)
    key = load_data(cfg).train.images.key
    assert load_data(cfg).train.images.key == key

    def digests(bundle) -> list[str]:
        out = []
        for split in (bundle.train, bundle.val, bundle.test):
            h = hashlib.sha256()
            split.update_hash(h)
            out.append(h.hexdigest())
        return out

    carved = [digests(load_data(DataConfig(name=f"imagefolder:{root}", val_size=5, data_seed=d,
                                           in_memory=False))) for d in (0, 0, 1)]
    assert carved[0] == carved[1]  # the same files and split: the same teacher-cache entry
    assert len(set(carved[0])) == 3  # train, val, test never share one
    assert carved[2][0] != carved[0][0] and carved[2][1] != carved[0][1]  # another val draw
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "train" / "c0" / "00.png")  # changed image
    assert load_data(cfg).train.images.key != key
