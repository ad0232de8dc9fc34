"""Share or Split: which is more efficient? (Chen, Liu, Wang & Zhang, ICLR 2018 workshop).

Both nets read a Transformed-MNIST canvas through the same backbone (two conv + two max-pool)
and differ in the head (paper Sec. 2, Fig. 1):

- **Share**: FC -> K_h features shared by all classes -> FC decoders to 10 class logits and to
  the 3 box numbers. Loss: cross-entropy + L2 box + reconstruction.
- **Split**: FC -> 10 capsules of K_p features, each squashed (Sabour et al. 2017); class score =
  capsule length. Loss: margin loss + L2 box + reconstruction; the box and the reconstruction
  read the masked capsules (true class in training, predicted class at test).

**Data** (Sec. 3.1): a 28x28 digit scaled by s ~ U[0.5, 2.0] (14 to 56 px) and placed uniformly
at random fully inside a 56x56 canvas. Box label = (s, cx, cy): the digit's 28x28 frame after the
transform, a square of side 28*s px centred at (cx, cy), in canvas pixels (the canvas spans
[0, 56]). Each transform is a pure function of (data_seed, split, image index, copy index), so a
test image is the same in every trial and the training set is never materialised.

**The training-set knob and the paper's two sets.** ``train_images`` source images (default:
55,000, the paper's Train55K, capped at the split size) times ``copies`` transforms of each.
One epoch = one pass over the ``train_images`` source images, each in one of its copies; epoch
e (0-based) uses copy ``e % copies``. So with the paper's schedule (80 epochs, lr x 0.1 at 60):

- ``copies: 1`` is **Train55K**: 80 epochs over the same 55K images, lr x 0.1 at epoch 60;
- ``copies: 80`` is **Train4.4M**: every one of the 4.4M images seen exactly once, in the same
  number of mini-batches as Train55K, lr x 0.1 after 60 x 55K = 3.3M images: the paper's
  one-pass schedule, reported every 55K images. Same ``epochs`` and ``lr_milestones``; only
  ``copies`` changes, so both sets sit on one grid axis.

The copy cycle is indexed by the model's ``epochs_trained`` buffer (like BatchNorm's
``num_batches_tracked``), which is checkpointed with the weights, so a resumed trial goes on
where it stopped.

**Feature size: one knob for both heads.** ``features`` is K_h for Share and 5 x K_p for Split
(K_p = features / 5), so the paper's Table 1 rows pair up on one grid axis: features 40, 80, 120,
160 = Share K_h 40..160 and Split K_p 8..32. Split's FC layer then has 10 x K_p = 2 x features
outputs.

**Choices** (the paper is silent):

- backbone conv 5x5 (32) -> ReLU -> max-pool 2 -> conv 5x5 (64) -> ReLU -> max-pool 2, padding 2
  (``conv_channels``); ReLU on Share's K_h features; class and box decoders are linear layers;
- Split's box is a linear map of the flattened masked capsules (so each class has its own
  regressor, as the paper's discussion assumes); Share's reconstruction decoder reads the K_h
  features; the reconstruction target is the input canvas (``recon_size`` 56) or its 2x2
  average (28);
- the box is regressed in canvas fractions (side/56, cx/56, cy/56), the decoder's bias starting
  at the mean box; loss = squared error summed over the 3 numbers, mean over the batch, x
  ``box_weight`` = 10. A pilot (2,500 mnist-5k digits, 8-12 epochs, both heads) chose it: with
  1 Share's box stayed near the mean-box baseline (IoU ~0.5), with 100 classification stalled;
- s ~ uniform; bilinear rendering with 2x2 supersampling; subsets are the first ``train_images``
  / ``test_images`` of a fixed permutation (from ``data_seed``), so smaller sets are nested in
  larger ones; the training transforms depend on ``data_seed`` only (a fixed data set, as in the
  paper): repeats over ``seed`` vary the init and the batch order.

Metrics per epoch: ``train_loss``/``test_loss`` and their weighted parts ``*_cls_loss``
(cross-entropy for Share, margin loss for Split: not comparable across heads), ``*_box_loss``
(task cls_box only) and ``*_recon_loss``; ``train_acc``, ``test_acc`` (fractions); ``test_iou``
(mean IoU of the square boxes, task cls_box only). The recon parts are absent when
``recon_weight`` is 0.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from core.errors import UserError
from core.metrics import Metric
from trainables.capsules import capsule_length, margin_loss, squash
from trainables.common import ConfigError, Family, backward, check_finite, iterate_batches
from trainables.data import MNIST_SOURCES, ImageSet, load_mnist

NUM_CLASSES = 10
DIGIT = 28  # MNIST side, px
CANVAS = 56  # transformed canvas side, px
SCALE_RANGE = (0.5, 2.0)  # digit scale s: 14 to 56 px
PAPER_TRAIN_IMAGES = 55_000  # Train55K
PAPER_TEST_IMAGES = 5_000  # test set
K_H_PER_K_P = 5  # features = K_h (share) = 5 * K_p (split): pairs the paper's Table 1 rows
SUPERSAMPLE = 2  # render at 2x then average 2x2: every source pixel contributes at s >= 0.5
EVAL_BATCH = 500  # test images per forward pass
HEADS = ("share", "split")
TASKS = ("cls", "cls_box")
RECON_SIZES = (28, 56)
_TRAIN_STREAM, _TEST_STREAM = 1, 2  # separate random streams for the train and test transforms

DEFAULTS: dict[str, Any] = {
    # -- net
    "head": "share",  # share (K_h shared features, FC decoders) | split (10 capsules of K_p, score = length)
    "features": 40,  # K_h for share; 5 * K_p for split (K_p = features / 5, must divide): 40..160 = K_p 8..32
    "conv_channels": [32, 64],  # backbone channels: conv 5x5 -> ReLU -> max-pool 2, twice
    "task": "cls",  # cls (classification alone) | cls_box (classification + square box regression)
    # -- losses
    "box_weight": 10.0,  # weight of the L2 box loss (squared error summed over side, cx, cy in canvas fractions)
    "recon_weight": 0.0005,  # weight of the reconstruction loss (SUM of squared pixel errors); 0 = no decoder
    "recon_size": 56,  # reconstruction target side, px: 56 (the input canvas) | 28 (its 2x2 average)
    # -- data
    "train_images": None,  # source training images; null = 55,000 (Train55K) capped at the split size
    "copies": 1,  # transforms per source image: 1 = Train55K, 80 = Train4.4M (epoch e uses copy e % copies)
    "test_images": None,  # transformed test images; null = 5,000 capped at the split size
    "data_seed": 0,  # seed of the transforms and subsets (not the training `seed`): same test set in every trial
    # -- common keys, with the paper's recipe (Sec. 3.2) as defaults
    "optimizer": "adam",  # Adam (Sec. 3.2)
    "lr": 1e-3,  # Adam step size
    "batch_size": 64,  # images per step
    "epochs": 80,  # passes over the train_images source images (one copy of each per pass)
    "lr_milestones": [60],  # lr x lr_gamma after epoch 60 (= after 3.3M images for Train4.4M)
}


# ---------------------------------------------------------------------------------------------
# Transformed MNIST


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def transform_params(data_seed: int, stream: int, index: np.ndarray, copy: np.ndarray | int) -> torch.Tensor:
    """Per-sample transforms (s, cx, cy), float64 (N, 3), from hash(data_seed, stream, index, copy).

    s ~ U[0.5, 2.0]; the centre is uniform over the positions that keep the 28*s px square inside
    the canvas. Pure function of its arguments: no generator state.
    """
    index = np.asarray(index, dtype=np.int64).astype(np.uint64)
    copy = np.broadcast_to(np.asarray(copy, dtype=np.int64), index.shape).astype(np.uint64)
    h = _splitmix64(_splitmix64(np.full(index.shape, data_seed, dtype=np.int64).astype(np.uint64)) ^ np.uint64(stream))
    h = _splitmix64(_splitmix64(h ^ index) ^ copy)
    u = [(_splitmix64(h ^ np.uint64(j + 1)) >> np.uint64(11)).astype(np.float64) * 2.0**-53 for j in range(3)]
    lo, hi = SCALE_RANGE
    s = lo + (hi - lo) * u[0]
    half = DIGIT * s / 2
    cx = half + u[1] * (CANVAS - 2 * half)
    cy = half + u[2] * (CANVAS - 2 * half)
    return torch.from_numpy(np.stack([s, cx, cy], axis=1))


def render(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Transformed canvases (B, 1, 56, 56), float in [0, 1], from digits (B, 28, 28) uint8 and (s, cx, cy) (B, 3).

    Inverse-maps each canvas point to the digit (affine_grid + bilinear grid_sample) at 2x
    resolution, zeroes points outside the digit's frame (so the ink stays inside the box), then
    averages 2x2 and quantises to 1/255 like a stored uint8 image.
    """
    x = images.to(torch.float32).unsqueeze(1) / 255  # (B, 1, 28, 28)
    s, cx, cy = params.to(device=x.device, dtype=torch.float32).unbind(-1)  # (B,) each
    theta = torch.zeros(len(s), 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = CANVAS / (DIGIT * s)  # canvas [-1, 1] -> digit [-1, 1]
    theta[:, 0, 2] = (CANVAS - 2 * cx) / (DIGIT * s)
    theta[:, 1, 2] = (CANVAS - 2 * cy) / (DIGIT * s)
    side = CANVAS * SUPERSAMPLE
    grid = F.affine_grid(theta, [len(s), 1, side, side], align_corners=False)  # (B, 112, 112, 2)
    inside = (grid.abs() <= 1).all(-1).unsqueeze(1)  # (B, 1, 112, 112)
    fine = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * inside
    out = F.avg_pool2d(fine, SUPERSAMPLE)  # (B, 1, 56, 56)
    return torch.round(out * 255) / 255


def square_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of axis-aligned squares given as (side, cx, cy) (..., 3); a negative side counts as 0.

    intersection = overlap-in-x * overlap-in-y (each clipped at 0); IoU = inter / (w1^2 + w2^2 - inter).
    """
    wa, xa, ya = a.unbind(-1)
    wb, xb, yb = b.unbind(-1)
    wa, wb = wa.clamp(min=0), wb.clamp(min=0)

    def overlap(ca: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        return (torch.minimum(ca + wa / 2, cb + wb / 2) - torch.maximum(ca - wa / 2, cb - wb / 2)).clamp(min=0)

    inter = overlap(xa, xb) * overlap(ya, yb)
    union = wa**2 + wb**2 - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def box_from_params(params: torch.Tensor) -> torch.Tensor:
    """(s, cx, cy) in px -> (side, cx, cy) in px, side = 28 * s."""
    return torch.stack([DIGIT * params[:, 0], params[:, 1], params[:, 2]], dim=1)


# ---------------------------------------------------------------------------------------------
# Blocks (squash, capsule_length, margin_loss: trainables/capsules.py, shared with EncapNet)


class Backbone(nn.Module):
    """Two conv + two max-pool (Fig. 1): (B, 1, 56, 56) -> (B, c2 * 14 * 14)."""

    def __init__(self, channels: tuple[int, int] = (32, 64)):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.out_features = c2 * (CANVAS // 4) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, c1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, c2, 14, 14)
        return x.flatten(1)  # (B, c2 * 196)


def box_decoder(in_features: int) -> nn.Linear:
    """FC -> (side, cx, cy) / 56, its bias starting at the mean box (0.625, 0.5, 0.5) for both heads."""
    fc = nn.Linear(in_features, 3)
    with torch.no_grad():
        fc.bias.copy_(torch.tensor([DIGIT * sum(SCALE_RANGE) / 2 / CANVAS, 0.5, 0.5]))
    return fc


class HeadOutput(NamedTuple):
    scores: torch.Tensor  # (B, 10): logits (share) or capsule lengths (split)
    box: torch.Tensor | None  # (B, 3): (side, cx, cy) / 56, or None for task cls
    code: torch.Tensor  # (B, code_size): what the reconstruction decoder reads


class ShareHead(nn.Module):
    """Share (Sec. 2): FC -> K_h features (ReLU), then FC decoders to 10 logits and 3 box numbers."""

    def __init__(self, in_features: int, k_h: int, with_box: bool):
        super().__init__()
        self.fc = nn.Linear(in_features, k_h)
        self.cls = nn.Linear(k_h, NUM_CLASSES)
        self.box = box_decoder(k_h) if with_box else None
        self.code_size = k_h

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> HeadOutput:
        h = F.relu(self.fc(f))  # (B, K_h)
        return HeadOutput(self.cls(h), self.box(h) if self.box is not None else None, h)


class SplitHead(nn.Module):
    """Split (Sec. 2): FC -> 10 capsules of K_p, squashed; score = length; box and code from the
    capsules masked to one class (`y` in training, the longest capsule at test)."""

    def __init__(self, in_features: int, k_p: int, with_box: bool):
        super().__init__()
        self.k_p = k_p
        self.fc = nn.Linear(in_features, NUM_CLASSES * k_p)
        self.box = box_decoder(NUM_CLASSES * k_p) if with_box else None
        self.code_size = NUM_CLASSES * k_p

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> HeadOutput:
        v = squash(self.fc(f).view(-1, NUM_CLASSES, self.k_p))  # (B, 10, K_p)
        lengths = capsule_length(v)  # (B, 10)
        chosen = y if y is not None else lengths.argmax(-1)  # (B,)
        masked = (v * F.one_hot(chosen, NUM_CLASSES).unsqueeze(-1).to(v.dtype)).flatten(1)  # (B, 10 * K_p)
        return HeadOutput(lengths, self.box(masked) if self.box is not None else None, masked)


class ReconstructionDecoder(nn.Module):
    """Sabour et al. (2017) decoder: FC 512 -> ReLU -> FC 1024 -> ReLU -> FC pixels -> sigmoid."""

    def __init__(self, code_size: int, side: int):
        super().__init__()
        self.side = side
        self.net = nn.Sequential(
            nn.Linear(code_size, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, side * side)
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(code))  # (B, side * side)


# ---------------------------------------------------------------------------------------------
# Model


class Outputs(NamedTuple):
    scores: torch.Tensor  # (B, 10)
    box: torch.Tensor | None  # (B, 3), canvas fractions
    recon: torch.Tensor | None  # (B, recon_size^2)


class ShareOrSplitNet(nn.Module):
    """Backbone + Share or Split head (+ box decoder for cls_box) + reconstruction decoder (Fig. 1)."""

    def __init__(
        self,
        head: str,
        features: int,
        *,
        with_box: bool,
        conv_channels: tuple[int, int] = (32, 64),
        recon_size: int | None = 56,
    ):
        super().__init__()
        self.backbone = Backbone(conv_channels)
        n = self.backbone.out_features
        if head == "share":
            self.head: ShareHead | SplitHead = ShareHead(n, features, with_box)
        else:
            self.head = SplitHead(n, features // K_H_PER_K_P, with_box)
        self.decoder = ReconstructionDecoder(self.head.code_size, recon_size) if recon_size else None
        # training epochs done: picks the copy of each image (epoch e uses copy e % copies); checkpointed
        self.register_buffer("epochs_trained", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Outputs:
        """x (B, 1, 56, 56) in [0, 1]; y (B,) masks Split's capsules in training (None: predicted class)."""
        out = self.head(self.backbone(x), y)
        recon = self.decoder(out.code) if self.decoder is not None else None
        return Outputs(out.scores, out.box, recon)


# ---------------------------------------------------------------------------------------------
# Builder and training


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy ints too (tune.randint)


def _check(cfg: dict) -> None:
    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError("share_split", key, f"{rule} (got {cfg[key]!r})")

    if cfg["head"] not in HEADS:
        raise bad("head", f"must be one of {', '.join(HEADS)}")
    if cfg["task"] not in TASKS:
        raise bad("task", f"must be one of {', '.join(TASKS)}")
    if not _is_int(cfg["features"]) or cfg["features"] < 1:
        raise bad("features", "must be a positive integer")
    if cfg["head"] == "split" and (cfg["features"] % K_H_PER_K_P or cfg["features"] < K_H_PER_K_P):
        raise UserError(  # a rule of two keys: the spec checker adds the grid point
            f"trainable share_split: features must be a multiple of {K_H_PER_K_P} for head=split "
            f"(K_p = features / {K_H_PER_K_P}), got {cfg['features']!r}"
        )
    ch = cfg["conv_channels"]
    if not (isinstance(ch, (list, tuple)) and len(ch) == 2 and all(_is_int(c) and c > 0 for c in ch)):
        raise bad("conv_channels", "must be two positive integers")
    if cfg["recon_size"] not in RECON_SIZES:
        raise bad("recon_size", f"must be one of {', '.join(map(str, RECON_SIZES))}")
    for key in ("recon_weight", "box_weight"):
        if not float(cfg[key]) >= 0:
            raise bad(key, "must be >= 0")
    if not _is_int(cfg["copies"]) or cfg["copies"] < 1:
        raise bad("copies", "must be an integer >= 1")
    if not _is_int(cfg["data_seed"]) or cfg["data_seed"] < 0:
        raise bad("data_seed", "must be an integer >= 0")
    for key in ("train_images", "test_images"):
        if cfg[key] is not None and (not _is_int(cfg[key]) or cfg[key] < 1):
            raise bad(key, "must be null or a positive integer")


def build(config: dict) -> ShareOrSplitNet:
    """The net for `config` (keys as in `DEFAULTS`)."""
    _check(config)
    return ShareOrSplitNet(
        config["head"],
        int(config["features"]),
        with_box=config["task"] == "cls_box",
        conv_channels=tuple(int(c) for c in config["conv_channels"]),
        recon_size=int(config["recon_size"]) if float(config["recon_weight"]) > 0 else None,
    )


@dataclass(frozen=True)
class TrialData:
    """Training digits (rendered per batch) and the rendered test set."""

    train_x: torch.Tensor  # (N, 28, 28) uint8 source digits
    train_y: torch.Tensor  # (N,) int64
    train_index: np.ndarray  # (N,) index of each digit in the source's train split (keys its transforms)
    test_x: torch.Tensor  # (T, 56, 56) uint8 transformed canvases
    test_y: torch.Tensor  # (T,) int64
    test_params: torch.Tensor  # (T, 3) float64 (s, cx, cy) px


def _subset(config: dict, split: str, n_split: int, source: str) -> np.ndarray:
    """Indices of the first n digits of a fixed permutation of the split (so smaller sets are nested);
    n = config[f"{split}_images"], by default the paper's size capped at the split size."""
    key, paper, stream = (
        ("train_images", PAPER_TRAIN_IMAGES, _TRAIN_STREAM)
        if split == "train"
        else ("test_images", PAPER_TEST_IMAGES, _TEST_STREAM)
    )
    n = min(paper, n_split) if config[key] is None else int(config[key])
    if n > n_split:
        raise ConfigError(
            "share_split", key, f"must be at most the {split} split size of {source} ({n_split}) (got {n})"
        )
    return np.random.default_rng([int(config["data_seed"]), stream]).permutation(n_split)[:n]


def check(config: dict, data: ImageSet | None = None) -> None:
    """Validate a config cheaply (no model, no rendering); with `data`, also the image counts."""
    _check(config)
    n_train = config["train_images"]
    if data is not None:
        n_train = len(_subset(config, "train", len(data.train_y), data.source))
        _subset(config, "test", len(data.test_y), data.source)
    if n_train is not None and int(config["batch_size"]) > int(n_train):  # one short batch per epoch
        raise ConfigError(
            "share_split",
            "batch_size",
            f"{config['batch_size']} is larger than the training set ({n_train} images, train_images); "
            "batch_size <= train_images must hold",
        )


def prepare(config: dict, data: ImageSet) -> TrialData:
    """Pick the train/test subsets and render the test set once (same in every trial for a data_seed)."""
    _check(config)
    tr = _subset(config, "train", len(data.train_y), data.source)
    te = _subset(config, "test", len(data.test_y), data.source)
    test_params = transform_params(int(config["data_seed"]), _TEST_STREAM, te, 0)
    src = data.test_x[torch.from_numpy(te)]
    canvases = [
        (render(src[i : i + EVAL_BATCH], test_params[i : i + EVAL_BATCH]) * 255).round().to(torch.uint8)[:, 0]
        for i in range(0, len(te), EVAL_BATCH)
    ]
    return TrialData(
        train_x=data.train_x[torch.from_numpy(tr)],
        train_y=data.train_y[torch.from_numpy(tr)],
        train_index=tr,
        test_x=torch.cat(canvases),
        test_y=data.test_y[torch.from_numpy(te)],
        test_params=test_params,
    )


def train_params(data: TrialData, config: dict, epoch: int) -> torch.Tensor:
    """Transforms (s, cx, cy) (N, 3) of the training images in 0-based `epoch`: copy `epoch % copies`."""
    copy = epoch % int(config["copies"])
    return transform_params(int(config["data_seed"]), _TRAIN_STREAM, data.train_index, copy)


def _losses(
    model: ShareOrSplitNet, out: Outputs, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor, cfg: dict
) -> dict[str, torch.Tensor]:
    """Weighted loss parts (they sum to the loss): cls (CE or margin), box (L2), recon (summed SE)."""
    if cfg["head"] == "share":
        parts = {"cls": F.cross_entropy(out.scores, y)}
    else:
        parts = {"cls": margin_loss(out.scores, y)}
    if out.box is not None:
        target = box_from_params(params).to(out.box) / CANVAS  # (B, 3) canvas fractions
        parts["box"] = float(cfg["box_weight"]) * ((out.box - target) ** 2).sum(-1).mean()
    if out.recon is not None:
        target = x if model.decoder.side == CANVAS else F.avg_pool2d(x, CANVAS // model.decoder.side)
        parts["recon"] = float(cfg["recon_weight"]) * ((out.recon - target.flatten(1)) ** 2).sum(-1).mean()
    return parts


def _summary(prefix: str, sums: dict[str, float], correct: int, n: int) -> dict[str, float]:
    metrics = {f"{prefix}_loss": sum(sums.values()) / n, f"{prefix}_acc": correct / n}
    metrics.update({f"{prefix}_{k}_loss": v / n for k, v in sums.items()})
    return metrics


def train_epoch(
    model: ShareOrSplitNet,
    optimizer: torch.optim.Optimizer,
    data: TrialData,
    config: dict,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """One pass over the source images, each in copy `epochs_trained % copies`, rendered per batch."""
    params = train_params(data, config, int(model.epochs_trained))  # (N, 3)
    sums: dict[str, float] = {}
    correct = n = 0
    for idx in iterate_batches(len(data.train_y), config["batch_size"], generator):
        x = render(data.train_x[idx].to(device), params[idx])  # (B, 1, 56, 56)
        y = data.train_y[idx].to(device)
        out = model(x, y)
        parts = _losses(model, out, x, y, params[idx], config)
        loss = sum(parts.values())
        check_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        optimizer.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
        correct += int((out.scores.argmax(-1) == y).sum())
        n += len(idx)
    model.epochs_trained += 1
    return _summary("train", sums, correct, n)


def evaluate(model: ShareOrSplitNet, data: TrialData, config: dict, device: torch.device) -> dict[str, float]:
    """Test loss (and parts), accuracy and, for task cls_box, mean IoU of the square boxes."""
    sums: dict[str, float] = {}
    correct, iou = 0, 0.0
    for i in range(0, len(data.test_y), EVAL_BATCH):
        x = data.test_x[i : i + EVAL_BATCH].to(device).unsqueeze(1).float() / 255  # (B, 1, 56, 56)
        y = data.test_y[i : i + EVAL_BATCH].to(device)
        params = data.test_params[i : i + EVAL_BATCH]
        with torch.no_grad():
            out = model(x)  # split: masks with the predicted class
            for k, v in _losses(model, out, x, y, params, config).items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(y)
            correct += int((out.scores.argmax(-1) == y).sum())
            if out.box is not None:
                iou += square_iou(out.box.float() * CANVAS, box_from_params(params).to(out.box)).sum().item()
    n = len(data.test_y)
    metrics = _summary("test", sums, correct, n)
    if config["task"] == "cls_box":
        metrics["test_iou"] = iou / n
    return metrics


def inert_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """Keys without effect: the box loss's weight in the classification task; the reconstruction
    size without a reconstruction loss (no decoder)."""
    inert = set()
    if cfg["task"] == "cls":
        inert.add("box_weight")
    if float(cfg["recon_weight"]) == 0:
        inert.add("recon_size")
    return frozenset(inert)


FAMILY = Family(
    name="share_split",
    defaults=DEFAULTS,
    load_data=load_mnist,
    sources=MNIST_SOURCES,
    prepare=prepare,
    build=build,
    train_epoch=train_epoch,
    evaluate=evaluate,
    check=check,
    inert_keys=inert_keys,
    metrics={
        **{f"{split}_{part}": M.LOSS for split in ("train", "test") for part in ("loss", "cls_loss", "box_loss")},
        **{f"{split}_recon_loss": M.LOSS for split in ("train", "test")},
        "train_acc": M.ACCURACY,
        "test_acc": M.ACCURACY,
        "test_iou": Metric("max", "fraction"),  # mean IoU of the predicted and true squares (cls_box)
    },
    smoke={"train_images": 128, "copies": 1, "test_images": 128, "epochs": 1, "lr_milestones": []},
    model_keys=("head", "features", "conv_channels", "task", "recon_weight", "recon_size"),
    input_shape=lambda cfg: (1, CANVAS, CANVAS),
    variants={
        "share_cls": {"head": "share", "features": 40, "task": "cls"},
        "share_cls_box": {"head": "share", "features": 40, "task": "cls_box"},
        "split_cls": {"head": "split", "features": 40, "task": "cls"},
        "split_cls_box": {"head": "split", "features": 40, "task": "cls_box"},
    },
    doc="Share or Split (Chen et al., ICLR 2018 workshop): shared K_h features vs 10 capsules of K_p on Transformed MNIST",
)
