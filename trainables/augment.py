"""Shapes and augmentation recipes of the image families, vectorised on a batch on its device.

- **Shapes** (`adapt`): every batch is brought to the family's input shape (channels, side):
  grey -> 3 channels by replication (3 -> 1 by the mean), a side up to 1/4 larger by zero padding
  (MNIST 28 -> 32 for the CIFAR nets: the digit keeps its pixel scale), a larger or smaller side
  by bilinear resizing (MNIST 28 -> 64 or 224 for the ImageNet nets). `rescale` makes the scaled
  test sets of WSMS-Net (shrink and zero-pad, or enlarge and centre-crop).
- **Recipes** (config key ``augment``), each from its paper, drawn from the trial's generator
  (deterministic per seed, on CPU or GPU): ``cifar`` (pad 4, random crop, horizontal flip: He et
  al. 2016, used by SSM/WSMS on CIFAR), ``encapnet`` (resize to 34/32 of the side, random crop,
  flip; EncapNet's logged runs), ``imagenet`` (random resized crop, scale 0.08-1, ratio 3/4-4/3,
  + flip), ``none``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "cifar", "encapnet", "imagenet")


# ----------------------------------------------------------------------------- shapes


def adapt(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """A float batch (B, C, H, W) in [0, 1] at `channels` x `size` x `size` (see module docstring)."""
    c = x.shape[1]
    if c != channels:
        if c == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot adapt {c}-channel images to {channels} channels")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h == w and size > h and (size - h) * 4 <= h:  # a little larger: pad, keep the pixel scale
        lo = (size - h) // 2
        return F.pad(x, (lo, size - h - lo, lo, size - h - lo))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h)


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The batch with its content scaled by `factor` at the same size: shrink and zero-pad (factor < 1)
    or enlarge and centre-crop (factor > 1). The scale-robustness test set of WSMS-Net (PAPERS.md 4)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    if (nh, nw) == (h, w):
        return x
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)
    if factor < 1:
        top, left = (h - nh) // 2, (w - nw) // 2
        return F.pad(y, (left, w - nw - left, top, h - nh - top))
    top, left = (nh - h) // 2, (nw - w) // 2
    return y[..., top : top + h, left : left + w]


# ----------------------------------------------------------------------------- recipes


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def _random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random size x size window of each image (x at least that large), by gather."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=g).to(x.device)
    ox = torch.randint(0, w - size + 1, (b,), generator=g).to(x.device)
    ar = torch.arange(size, device=x.device)
    rows, cols = (oy[:, None] + ar)[:, None, :, None], (ox[:, None] + ar)[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[bi, ci, rows, cols]


def _random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop back to the input size, as one affine grid sample."""
    b = x.shape[0]
    area = _uniform(b, *scale, g)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    cw, ch = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)  # fractions of the side
    cx, cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - cw), (torch.rand(b, generator=g) * 2 - 1) * (1 - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, recipe: str, g: torch.Generator) -> torch.Tensor:
    """Apply a named recipe to a float batch (B, C, S, S); random numbers from `g` (CPU generator)."""
    if recipe == "none":
        return x
    s = x.shape[-1]
    if recipe == "cifar":  # pad 4, random crop, flip (He et al. 2016, CIFAR)
        pad = max(1, round(4 * s / 32))
        return _flip(_random_crop(F.pad(x, (pad, pad, pad, pad)), s, g), g)
    if recipe == "encapnet":  # resize 34, random crop 32, flip (EncapNet's logged runs)
        big = max(s + 1, round(34 * s / 32))
        x = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False)
        return _flip(_random_crop(x, s, g), g)
    if recipe == "imagenet":  # random resized crop + flip
        return _flip(_random_resized_crop(x, g), g)
    raise ValueError(f"augment: unknown recipe {recipe!r}; known: {', '.join(AUGMENTATIONS)}")
