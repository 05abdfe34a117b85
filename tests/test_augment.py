"""On-device batch augmentation: each operation against a hand-built expectation, draws that
are a function of the seed only (so DDP shards and sweep students agree), and evaluation that
never augments."""

from __future__ import annotations

import pytest
import torch

import distill.api as api
from distill.augment import BatchAugment, build_augment, color_jitter, rotate, translate
from distill.data import load_data, num_batches
from distill.recipe import AugmentConfig, DataConfig


def dots(n: int = 4, size: int = 9) -> torch.Tensor:
    """uint8 [n, 1, size, size] images, each with one bright pixel at the centre."""
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[:, :, size // 2, size // 2] = 200
    return x


def test_translate_moves_pixels_and_zero_fills() -> None:
    x = dots(2).float()
    out = translate(x, torch.tensor([[2, -1], [0, 3]]))
    assert out[0, 0, 6, 3] == 200 and out[0].sum() == 200  # (4, 4) + (2, -1)
    assert out[1, 0, 4, 7] == 200 and out[1].sum() == 200  # (4, 4) + (0, 3)
    edge = torch.full((1, 1, 3, 3), 9.0)
    shifted = translate(edge, torch.tensor([[1, 1]]))
    assert shifted[0, 0, 0].tolist() == [0, 0, 0] and shifted[0, 0, :, 0].tolist() == [0, 0, 0]
    assert shifted[0, 0, 1:, 1:].eq(9).all()
    shifts = torch.tensor([[2, -1], [0, 3]])  # a larger bound on |shifts| changes nothing
    assert torch.equal(translate(x, shifts, pad=5), translate(x, shifts))


@pytest.mark.parametrize("cfg", [{"jitter": 2}, {"crop_padding": 2},
                                 {"jitter": 1, "crop_padding": 2}],
                         ids=["jitter", "crop_padding", "both"])
def test_jitter_draws_every_shift_up_to_n_and_no_more(cfg: dict[str, int]) -> None:
    """``jitter`` and ``crop_padding`` are one translation; set both, the larger N holds."""
    aug = BatchAugment(AugmentConfig(**cfg))
    out = aug(dots(400), seed=0)
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert set(dy.tolist()) == set(range(-2, 3)) and set(dx.tolist()) == set(range(-2, 3))
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25  # drawn apart: every (dy, dx) pair
    assert out.flatten(1).sum(1).eq(200).all()  # nothing lost at a shift of <= 2


def test_flip_mirrors_about_half_the_images() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(1, 2, 3, 4).repeat(200, 1, 1, 1)
    out = BatchAugment(AugmentConfig(flip=True))(x, seed=1)
    flipped = out.eq(x.flip(-1).float()).flatten(1).all(1)
    same = out.eq(x.float()).flatten(1).all(1)
    assert (flipped | same).all() and 70 < int(flipped.sum()) < 130


def test_rotation_by_90_degrees_is_a_quarter_turn() -> None:
    x = torch.rand(3, 3, 8, 8) * 255
    assert torch.allclose(rotate(x, torch.zeros(3)), x, atol=1e-3)
    turned = rotate(x, torch.full((3,), 90.0))
    # positive angles turn counter-clockwise, as in torchvision
    assert torch.allclose(turned, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-2)


def test_color_jitter_factors() -> None:
    x = torch.rand(2, 3, 5, 5) * 255
    assert torch.allclose(color_jitter(x, torch.ones(2, 3)), x, atol=1e-3)
    brighter = color_jitter(x, torch.tensor([[1.5, 1.0, 1.0], [1.5, 1.0, 1.0]]))
    assert torch.allclose(brighter, (x * 1.5).clamp(0, 255), atol=1e-3)
    gray = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))  # saturation 0
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-3)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # ITU-R 601, as torchvision
    assert torch.allclose(gray[:, 0], luma, atol=1e-3)
    # contrast 0.5: halfway to the image's mean luma (no clamping needed on this range)
    flat = color_jitter(x, torch.tensor([[1.0, 0.5, 1.0], [1.0, 0.5, 1.0]]))
    mean = luma.mean((1, 2)).view(2, 1, 1, 1)
    assert torch.allclose(flat, (x - mean) * 0.5 + mean, atol=1e-3)


def test_rotation_draws_angles_both_ways_up_to_d_degrees() -> None:
    """A dot 8 px right of the centre, turned by each drawn angle: the dot's centre of mass
    gives the angle back (to within bilinear blur), and the angles fill [-30, 30]."""
    x = torch.zeros(400, 1, 21, 21, dtype=torch.uint8)
    x[:, 0, 10, 18] = 200
    out = BatchAugment(AugmentConfig(rotation=30))(x, seed=3)[:, 0]
    mass = out.sum((1, 2))
    rows, cols = torch.arange(21.0).view(1, 21, 1), torch.arange(21.0).view(1, 1, 21)
    dy = (out * rows).sum((1, 2)) / mass - 10
    dx = (out * cols).sum((1, 2)) / mass - 10
    angles = torch.rad2deg(torch.atan2(-dy, dx))  # counter-clockwise positive
    assert angles.abs().max() < 31 and angles.min() < -25 and angles.max() > 25


def test_color_jitter_draws_factors_both_ways_up_to_s() -> None:
    """On a two-level grey image (80 and 120) brightness b and contrast c give a mean of
    100 b and a spread of 40 b c, so both drawn factors can be read back: each fills
    [0.7, 1.3] for s = 0.3."""
    x = torch.full((400, 1, 4, 4), 80, dtype=torch.uint8)
    x[:, :, :, 2:] = 120
    out = BatchAugment(AugmentConfig(color_jitter=0.3))(x, seed=4)[:, 0]
    brightness = out.mean((1, 2)) / 100
    contrast = (out[:, :, 2:].mean((1, 2)) - out[:, :, :2].mean((1, 2))) / (40 * brightness)
    for factor in (brightness, contrast):
        assert factor.min() >= 0.7 - 1e-4 and factor.max() <= 1.3 + 1e-4
        assert factor.min() < 0.75 and factor.max() > 1.25


def test_color_jitter_draws_saturation_too_on_colour_images() -> None:
    """Left half the colour (150, 100, 50) (luma 109.25), right half grey 80. Brightness b
    scales the mean luma; contrast c scales the luma gap between the halves; saturation s
    scales only the colour's chroma (R - G = 50 b c s), grey having none. Each of the three
    factors fills [0.7, 1.3] for s = 0.3, and each is drawn apart from the others."""
    x = torch.full((400, 3, 4, 4), 80, dtype=torch.uint8)
    x[:, :, :, :2] = torch.tensor([150, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1)
    out = BatchAugment(AugmentConfig(color_jitter=0.3))(x, seed=4)
    luma = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]  # [400, 4, 4]
    brightness = luma.mean((1, 2)) / ((109.25 + 80) / 2)
    contrast = (luma[:, :, :2].mean((1, 2)) - luma[:, :, 2:].mean((1, 2))) / (
        brightness * (109.25 - 80))
    chroma = (out[:, 0, :, :2] - out[:, 1, :, :2]).mean((1, 2))
    saturation = chroma / (50 * brightness * contrast)
    factors = (brightness, contrast, saturation)
    for factor in factors:
        assert factor.min() >= 0.7 - 1e-3 and factor.max() <= 1.3 + 1e-3
        assert factor.min() < 0.75 and factor.max() > 1.25
    for i in range(3):
        for j in range(i):
            assert (factors[i] - factors[j]).abs().max() > 0.2, (i, j)


def test_draws_depend_on_the_seed_only_and_shards_agree() -> None:
    aug = BatchAugment(AugmentConfig(jitter=2, flip=True, rotation=10, color_jitter=0.3))
    x = (torch.rand(10, 3, 8, 8) * 255).to(torch.uint8)
    torch.manual_seed(0)
    a = aug(x, seed=5)
    torch.manual_seed(1)  # the global generator plays no part
    assert torch.equal(aug(x, seed=5), a)
    assert not torch.equal(aug(x, seed=6), a)
    assert torch.equal(aug(x[4:7], seed=5, start=4, total=10), a[4:7])  # a rank's rows


def test_off_means_none() -> None:
    assert build_augment(AugmentConfig()) is None
    with pytest.raises(Exception, match="less than or equal to 180"):
        AugmentConfig(rotation=200)


def test_training_batches_are_augmented_and_evaluation_never(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    original = BatchAugment.__call__

    def counting(self, images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(BatchAugment, "__call__", counting)
    run = api.teach(overrides={"teacher.epochs": 2, "teacher.augment.jitter": 1,
                               "output_dir": str(tmp_path)}, quiet=True, wandb="disabled")
    train = len(load_data(DataConfig()).train)
    assert len(calls) == 2 * num_batches(train, 64)  # training batches only
    assert sum(calls) == 2 * train
    assert run.summary["test"]["accuracy"] > 0.8
    # and the augmented batch is what the model learns from: an augmentation that blanks
    # every image leaves the same teacher at chance on the (never augmented) test set
    monkeypatch.setattr(BatchAugment, "__call__",
                        lambda self, images, *args, **kwargs: torch.zeros_like(images))
    blind = api.teach(overrides={"teacher.epochs": 2, "teacher.augment.jitter": 1,
                                 "output_dir": str(tmp_path)}, name="blind", quiet=True,
                      wandb="disabled")
    assert blind.summary["test"]["accuracy"] < 0.3


def test_rotation_keeps_non_square_images_unsheared() -> None:
    """A pixel 2 to the right of the centre of a 5 x 9 image, turned 90 degrees counter-
    clockwise, lands 2 above the centre (distances kept in pixels, not in image fractions)."""
    x = torch.zeros(1, 1, 5, 9)
    x[0, 0, 2, 6] = 100.0
    out = rotate(x, torch.tensor([90.0]))
    assert out[0, 0, 0, 4] == pytest.approx(100.0, abs=1e-3)
    assert out.sum() == pytest.approx(100.0, abs=1e-3)


def test_augmentation_seed_never_overflows() -> None:
    from distill.augment import batch_seed

    aug = BatchAugment(AugmentConfig(jitter=1))
    aug(dots(2), seed=batch_seed(20240101, 99, 1000))  # a large data_seed
    assert 0 <= batch_seed(2**40, 10**6, 10**6) < 2**62
