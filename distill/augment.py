"""Training-time augmentation on the device, on whole uint8 batches ``[B, C, H, W]``.

Operations (each off unless the recipe's ``augment`` section turns it on), in this order:

- ``jitter: N`` / ``crop_padding: N``: a random translation by up to N pixels in x and y,
  the uncovered border filled with 0 (black, before normalisation). This is exactly
  torchvision's ``RandomCrop(size, padding=N)`` with its default zero fill; the two names
  exist because papers call it both ways (Hinton et al.'s "jitter", CIFAR's "crop"). When
  both are set, the larger N is used.
- ``flip``: a horizontal flip with probability 1/2.
- ``rotation: D``: a rotation by an angle uniform in [-D, D] degrees about the centre
  (bilinear, zero fill; positive angles turn counter-clockwise, as in torchvision).
- ``color_jitter: s``: brightness, contrast and saturation factors uniform in [1-s, 1+s]
  (saturation for 3-channel images only), applied in that fixed order (torchvision's
  ``ColorJitter`` shuffles the order per image).

Randomness is a function of ``(data_seed, epoch, batch)`` alone, through a generator seeded
per batch, never the global RNG: every student of a sweep, a resumed run and each rank of a
torchrun job see the same augmented images as a single uninterrupted run. Under DDP the
parameters are drawn for the whole global batch and each rank takes its rows.

Returns float32 images still on the 0..255 scale (normalisation follows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.recipe import AugmentConfig


class BatchAugment:
    """``augment(images uint8 [b, C, H, W], seed, start, total) -> float32 [b, C, H, W]``.

    ``seed`` fixes the draws of the global batch of ``total`` images; ``images`` are its rows
    ``start .. start + b``.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.shift = max(cfg.jitter, cfg.crop_padding)
        self.flip, self.rotation, self.color = cfg.flip, cfg.rotation, cfg.color_jitter

    def __call__(self, images: Tensor, seed: int, start: int = 0,
                 total: int | None = None) -> Tensor:
        total = images.shape[0] if total is None else total
        rows = slice(start, start + images.shape[0])
        gen = torch.Generator(device=images.device).manual_seed(seed)

        def uniform(*shape: int) -> Tensor:  # draws for the global batch, then our rows
            return torch.rand(total, *shape, generator=gen, device=images.device)[rows]

        x = images.float()
        if self.shift:
            shifts = (uniform(2) * (2 * self.shift + 1)).floor().long() - self.shift
            x = translate(x, shifts, pad=self.shift)  # the known bound: no GPU sync
        if self.flip:
            x = torch.where((uniform() < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        if self.rotation:
            x = rotate(x, (uniform() * 2 - 1) * self.rotation)
        if self.color:
            factors = 1 + (uniform(3) * 2 - 1) * self.color
            x = color_jitter(x, factors)
        return x


def translate(x: Tensor, shifts: Tensor, pad: int | None = None) -> Tensor:
    """Shift each image by ``shifts [B, 2]`` (dy, dx) pixels, zero-filling the border.

    ``pad``: a bound on ``|shifts|``; any bound gives the same images. Without it the bound
    is read from ``shifts``, which makes the host wait for the device.
    """
    B, C, H, W = x.shape
    if pad is None:
        pad = int(shifts.abs().max()) if shifts.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    ys = torch.arange(H, device=x.device).view(1, H) + pad - shifts[:, :1]  # [B, H]
    xs = torch.arange(W, device=x.device).view(1, W) + pad - shifts[:, 1:]  # [B, W]
    b = torch.arange(B, device=x.device).view(B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[b, ys.view(B, H, 1), xs.view(B, 1, W)]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image by ``degrees [B]`` about its centre (bilinear, zero fill)."""
    theta = degrees * (math.pi / 180.0)
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    H, W = x.shape[-2:]
    # in affine_grid's coordinates (each axis scaled to [-1, 1]) a rotation of pixels is
    # [[cos, -sin H/W], [sin W/H, cos]]; without the ratios a non-square image is sheared
    matrix = torch.stack([torch.stack([cos, -sin * (H / W), zero], 1),
                          torch.stack([sin * (W / H), cos, zero], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast, saturation by ``factors [B, 3]`` (images on the 0..255 scale)."""
    f = factors.view(-1, 3, 1, 1, 1)
    x = (x * f[:, 0]).clamp(0, 255)
    gray = _gray(x)
    x = ((x - gray.mean((1, 2, 3), keepdim=True)) * f[:, 1]
         + gray.mean((1, 2, 3), keepdim=True)).clamp(0, 255)
    if x.shape[1] == 3:
        gray = _gray(x)
        x = ((x - gray) * f[:, 2] + gray).clamp(0, 255)
    return x


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def build_augment(cfg: AugmentConfig) -> BatchAugment | None:
    """The recipe's augmentation, or None when it is all off."""
    return BatchAugment(cfg) if cfg.active() else None


def batch_seed(data_seed: int, epoch: int, batch: int) -> int:
    """The augmentation seed of one global batch (a function of the data order only)."""
    return ((data_seed * 1_000_003 + epoch) * 1_000_033 + batch + 7) % (1 << 62)
