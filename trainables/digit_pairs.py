"""Digit-pair comparison: weight sharing and auxiliary losses (PAPERS.md section 1).

Seed: EPFL EE-559 mini-project 1 (Deng & Li), "Classification, weight sharing, auxiliary losses".
Input: two 14x14 MNIST digits as a (2, 14, 14) tensor; target: 1 if the first digit is <= the
second, else 0. Each pair also carries both digit classes, for the auxiliary loss.

Data: pairs as the course helper ``generate_pair_sets`` builds them (see `generate_pairs`); train
pairs from the source's train split, test pairs from its test split. **Choice**, normalisation:
pixels / 255, then standardised with the mean and std (two scalars) of the training pairs, applied
to train and test pairs alike.

Nets (``arch``, the paper's names). The figures with the layer sizes are lost; the sizes below are
those of the authors' public code (``models.py``: basicFcnet, basicConvnet,
parallelConv, siamese) and give all four of the paper's parameter counts exactly:

=============  =========  =========
arch           ours       paper
=============  =========  =========
FconnNet         377,826    377,826
ConvNet           37,005     37,005
parallelConv      69,886     69,886  (2 x 34,922 branch + 42 head)
Siamese           34,964     34,964  (34,922 branch + 42 head)
=============  =========  =========

- FconnNet: flatten 392 -> 512 -> 256 -> 128 -> 64 -> 32 -> 2, BatchNorm1d + ReLU after each hidden.
- Digit branch (34,922): conv 1->8 k5, 8->16 k3, 16->32 k4, 32->32 k4, unpadded, ReLU after each
  (14 -> 10 -> 8 -> 5 -> 2), flatten 128 -> Linear 64 -> ReLU -> Linear 10 (digit logits).
- parallelConv / Siamese: one branch per digit (Siamese: the same branch twice); head Linear(20 -> 2)
  on the ReLU of the concatenated digit logits (as in the authors' code).
- ConvNet: the branch's conv stack with 2 input channels and BatchNorm2d after each conv, then
  Linear 128 -> 81 -> ReLU -> 2. Deviation from the paper's prose ("3 linear layers", "same
  structure ... except for the input and output size"): no such pair with plausible sizes gives
  both counts: ConvNet - branch = k1^2 c1 - 8 (h + 1) = 2,083 (first kernel k1, its channels c1,
  last hidden width h) needs odd k1 and c1 with k1^2 c1 >= 2,091 (e.g. 7x7, 43 channels, h = 2).
- **Choice**: BatchNorm before ReLU (the authors' code applies it after).

Training: SGD with momentum 0.9 (**choice**: the paper names no optimiser; its authors' code uses
this). One seed on mnist-5k, 25 epochs, test accuracy: Siamese 90.3% (lr 0.01, batch 100),
parallelConv 87.5% (lr 0.01, batch 100), ConvNet 80.0% (lr 0.05, batch 25); with momentum 0,
Siamese stays at 58.8% (digit accuracy 19%).

Initialisation (``init``; **choice**, the paper names none): ``he`` (default), He (Kaiming)
normal weights (fan-in, ReLU gain) and zero biases on every layer followed by a ReLU, PyTorch's
default on the output layers (digit logits, comparison head, the baselines' last linear);
``torch`` is PyTorch's default everywhere (the platform's earlier setting). Why (Table 2 on
mnist-5k, 20 seeds, lr 0.005, batch 50): with PyTorch's default (uniform, std 1/sqrt(3 fan_in),
so each ReLU layer shrinks the signal about 2.5x), the six layers of a branch start with
near-zero digit logits, and without the auxiliary loss the only gradient comes through the
ReLU'd logits and the 20 -> 2 head: the nets sat at the majority class for 10-15 epochs and ended
20 points below the paper (64.2% and 59.2% for 83.9% and 79.4%). He init keeps the signal's scale
through the hidden layers, and the no-aux arms learn from the first epoch. Kept as the authors'
code has them: the ReLU on the digit logits before the head (dropping it also fixes the no-aux
arms, but costs the aux arms 3-4 points: 86.5% and 84.2% for 90.7% and 88.4%), and one lr and
batch size for all four arms (Siamese's Table 1 setting, see the ablation YAML). Nothing was
tuned on the test set beyond the paper's own Table 1 selection: the candidates (init, the head's
ReLU, parallelConv's Table 1 lr 0.01 / batch 100) were compared on 4-6 seeds of mnist-5k, and the
one that fixes the identified cause (the vanishing start) without touching the loss, the data or
the nets was kept. The grid study (Table 1) was not re-measured with it.

Loss: cross-entropy on the comparison; with ``aux_loss`` (two-branch nets only), plus
``aux_weight`` x (cross-entropy of each branch's digit logits), weight 1 in the paper.
``weight_sharing`` switches a two-branch net between parallelConv (False) and Siamese (True).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from core.errors import UserError
from trainables.common import ConfigError, Family, backward, check_finite, iterate_batches
from trainables.data import MNIST_SOURCES, ImageSet, load_mnist

DEFAULTS: dict[str, Any] = {
    "arch": "Siamese",  # FconnNet | ConvNet | parallelConv | Siamese (the paper's net names)
    "aux_loss": True,  # add cross-entropy on each branch's digit logits (two-branch nets only)
    "aux_weight": 1.0,  # weight of the auxiliary loss (sum over the two digits)
    "weight_sharing": None,  # null = the arch's own (Siamese shares, parallelConv not); true/false overrides
    "init": "he",  # he: He (Kaiming) normal on every conv/linear followed by a ReLU, zero biases | torch: PyTorch's
    "n_train": 1000,  # training pairs, drawn from the source's train split (2 images each)
    "n_test": 1000,  # test pairs, drawn from the source's test split
    # common keys re-declared with the paper's recipe
    "epochs": 25,  # passes over the training pairs
    "batch_size": 100,  # pairs per optimiser step
    "lr": 0.01,  # learning rate
    "optimizer": "sgd",  # the paper does not name it; the authors' code uses SGD
    "momentum": 0.9,  # SGD momentum of the authors' code; with 0, parallelConv/Siamese barely learn in 25 epochs
}
PAPER_PARAMS: dict[str, int] = {"FconnNet": 377_826, "ConvNet": 37_005, "parallelConv": 69_886, "Siamese": 34_964}
ARCHS = tuple(PAPER_PARAMS)
SINGLE_BRANCH = ("FconnNet", "ConvNet")
PAIR_STREAM = 1  # spawn key of the pair-sampling generator, apart from the training-order one
EVAL_BATCH_SIZE = 1000  # pairs per forward pass in `evaluate` (eval mode: results do not depend on it)

# ---------------------------------------------------------------------------------------------
# data: pairs


@dataclass(frozen=True)
class Pairs:
    """Digit pairs of one split.

    Args:
        input: (n, 2, 14, 14) float, the two images as channels.
        target: (n,) int64, 1 if classes[:, 0] <= classes[:, 1].
        classes: (n, 2) int64, the two digit classes.
        indices: (n, 2) int64, positions of the two images in their split (all distinct).
    """

    input: torch.Tensor
    target: torch.Tensor
    classes: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])


@dataclass(frozen=True)
class PairData:
    """A trial's normalised train and test pairs, and the training pairs' pixel mean/std (in 0-1 units)."""

    train: Pairs
    test: Pairs
    mean: float
    std: float


def generate_pairs(
    images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, *, key: str = "n"
) -> Pairs:
    """n disjoint pairs from one split, as the course helper ``generate_pair_sets`` builds them.

    images (N, 28, 28) uint8, labels (N,). A permutation of the split drawn from `generator`, its
    first 2n indices viewed as (n, 2); each image avg-pooled (kernel 2) to 14x14, pixels left at
    0-255. `key` names the config key in the error raised when the split is too small.
    """
    n, n_images = int(n), int(images.shape[0])
    if not 1 <= n <= n_images // 2:
        raise UserError(
            f"{key}: {n} pairs need {2 * n} distinct images but the split has {n_images}; "
            f"1 <= {key} <= {n_images // 2} must hold, got {key}={n}"
        )
    indices = torch.randperm(n_images, generator=generator)[: 2 * n].view(n, 2)  # (n, 2)
    chosen = images[indices.flatten()].reshape(2 * n, 1, *images.shape[-2:]).float()  # (2n, 1, 28, 28)
    pooled = F.avg_pool2d(chosen, kernel_size=2)  # (2n, 1, 14, 14)
    classes = labels[indices].long()  # (n, 2)
    return Pairs(
        input=pooled.view(n, 2, *pooled.shape[-2:]),  # (n, 2, 14, 14)
        target=(classes[:, 0] <= classes[:, 1]).long(),  # (n,)
        classes=classes,
        indices=indices,
    )


def prepare(cfg: dict, data: ImageSet) -> PairData:
    """Train and test pairs for `cfg` (sizes n_train, n_test), sampled deterministically from its seed."""
    generator = torch.Generator().manual_seed(pair_seed(int(cfg["seed"])))
    train = generate_pairs(data.train_x, data.train_y, cfg["n_train"], generator, key="n_train")
    test = generate_pairs(data.test_x, data.test_y, cfg["n_test"], generator, key="n_test")
    scaled = train.input / 255
    mean, std = scaled.mean().item(), scaled.std().item()
    return PairData(
        train=replace(train, input=(scaled - mean) / std),
        test=replace(test, input=(test.input / 255 - mean) / std),
        mean=mean,
        std=std,
    )


def pair_seed(seed: int) -> int:
    """Seed of the pair-sampling generator, derived from the trial seed (independent of the training order)."""
    return int(np.random.SeedSequence(seed % 2**64, spawn_key=(PAIR_STREAM,)).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# blocks

CONV_LAYERS = ((8, 5), (16, 3), (32, 4), (32, 4))  # (out channels, kernel): 14 -> 10 -> 8 -> 5 -> 2
CONV_FEATURES = 32 * 2 * 2  # flattened output of the conv stack


def conv_stack(in_channels: int, *, batch_norm: bool) -> nn.Sequential:
    """Four unpadded convs (CONV_LAYERS), each followed by [BatchNorm2d +] ReLU, then flatten: (B, C, 14, 14) -> (B, 128)."""
    layers: list[nn.Module] = []
    for out_channels, kernel in CONV_LAYERS:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel))
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers.append(nn.ReLU())
        in_channels = out_channels
    return nn.Sequential(*layers, nn.Flatten())


def mlp(widths: tuple[int, ...], *, batch_norm: bool) -> nn.Sequential:
    """Linear layers through `widths`, [BatchNorm1d +] ReLU after each hidden one, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b)] if batch_norm else []
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# models


class FconnNet(nn.Module):
    """Fully connected baseline: 6 linear layers, BatchNorm1d + ReLU after each hidden one (377,826 params)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp((2 * 14 * 14, 512, 256, 128, 64, 32, 2), batch_norm=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, 2, 14, 14)
        return {"logits": self.net(x.flatten(1))}  # (B, 2)


class ConvNet(nn.Module):
    """Convolutional baseline on the 2-channel pair: 4 convs with BatchNorm2d, then 128 -> 81 -> 2 (37,005)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = conv_stack(2, batch_norm=True)
        self.classifier = mlp((CONV_FEATURES, 81, 2), batch_norm=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, 2, 14, 14)
        return {"logits": self.classifier(self.features(x))}  # (B, 2)


class DigitBranch(nn.Module):
    """One sub-network: a single digit (B, 1, 14, 14) -> its 10 class logits (34,922 params)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = conv_stack(1, batch_norm=False)
        self.classifier = mlp((CONV_FEATURES, 64, 10), batch_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 1, 14, 14)
        return self.classifier(self.features(x))  # (B, 10)


class TwoBranchNet(nn.Module):
    """parallelConv (`shared` False: one branch per digit) or Siamese (`shared` True: one branch for both).

    The head Linear(20 -> 2) compares the ReLU of the two branches' concatenated digit logits.
    """

    def __init__(self, *, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        self.branch0 = DigitBranch()
        self.branch1 = self.branch0 if shared else DigitBranch()
        self.head = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, 2, 14, 14)
        d0 = self.branch0(x[:, 0:1])  # (B, 10)
        d1 = self.branch1(x[:, 1:2])  # (B, 10)
        logits = self.head(F.relu(torch.cat([d0, d1], dim=1)))  # (B, 2)
        return {"logits": logits, "digits": torch.stack([d0, d1], dim=1)}  # (B, 2), (B, 2, 10)


# ---------------------------------------------------------------------------------------------
# build


def resolve_net(cfg: dict) -> str:
    """The net `build` makes: `arch`, with `weight_sharing` turning parallelConv and Siamese into each other."""
    arch, sharing = cfg["arch"], cfg["weight_sharing"]
    if arch not in ARCHS:
        raise ConfigError("digit_pairs", "arch", f"unknown net {arch!r}; known: {', '.join(ARCHS)}")
    if sharing not in (None, True, False):
        raise ConfigError("digit_pairs", "weight_sharing", f"must be null, true or false (got {sharing!r})")
    if arch in SINGLE_BRANCH:
        if sharing:
            raise UserError(
                f"weight_sharing=true needs a two-branch net (parallelConv or Siamese), got arch={arch}; "
                "leave weight_sharing null for FconnNet and ConvNet"
            )
        return arch
    if sharing is None:
        return arch
    return "Siamese" if sharing else "parallelConv"


def check(cfg: dict, data: ImageSet | None = None) -> str:
    """Validate a config cheaply (no model, no pairs); with `data`, also the pair counts. Returns the net."""
    net = resolve_net(cfg)
    if cfg["init"] not in INITS:
        raise ConfigError("digit_pairs", "init", f"must be one of {', '.join(INITS)} (got {cfg['init']!r})")
    if float(cfg["aux_weight"]) < 0:
        raise UserError(f"aux_weight >= 0 must hold, got aux_weight={cfg['aux_weight']}")
    if net in SINGLE_BRANCH and int(cfg["batch_size"]) < 2:
        raise UserError(f"batch_size >= 2 must hold for {net} (BatchNorm), got batch_size={cfg['batch_size']}")
    for key in ("n_train", "n_test"):
        if cfg[key] < 1:
            raise ConfigError("digit_pairs", key, f"Input should be greater than or equal to 1 (got {cfg[key]!r})")
    if int(cfg["batch_size"]) > int(cfg["n_train"]):  # one short batch per epoch: not what was asked for
        raise ConfigError(
            "digit_pairs",
            "batch_size",
            f"{cfg['batch_size']} is larger than the training set ({cfg['n_train']} pairs, n_train); "
            "batch_size <= n_train must hold",
        )
    if data is not None:
        for key, n_images in (("n_train", len(data.train_y)), ("n_test", len(data.test_y))):
            if not 1 <= int(cfg[key]) <= n_images // 2:
                raise ConfigError(
                    "digit_pairs",
                    key,
                    f"{cfg[key]} pairs need {2 * int(cfg[key])} distinct images but the {data.source} split "
                    f"has {n_images}; 1 <= {key} <= {n_images // 2} must hold",
                )
    return net


def build(cfg: dict) -> nn.Module:
    """The net named by `cfg` (see `resolve_net`); forward maps (B, 2, 14, 14) to a dict with
    ``logits`` (B, 2) and, for two-branch nets, ``digits`` (B, 2, 10)."""
    net = check(cfg)
    if net == "FconnNet":
        model: nn.Module = FconnNet()
    elif net == "ConvNet":
        model = ConvNet()
    else:
        model = TwoBranchNet(shared=net == "Siamese")
    if cfg["init"] == "he":
        he_init(model)
    return model


INITS = ("he", "torch")


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The convs and linears whose output goes through a ReLU (after an optional BatchNorm): every
    layer but the output layers (digit logits, comparison head, the baselines' last linear)."""
    found: list[nn.Module] = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i, m in enumerate(layers):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            after = [n for n in layers[i + 1 : i + 3] if not isinstance(n, (nn.BatchNorm1d, nn.BatchNorm2d))]
            if after and isinstance(after[0], nn.ReLU):
                found.append(m)
    return found


def he_init(model: nn.Module) -> None:
    """He (Kaiming) normal initialisation (fan-in, ReLU gain) of the hidden layers, zero biases; the
    output layers keep PyTorch's default (small logits at the start). Draws from torch's global
    generator, seeded per trial. See the module docstring (Table 2)."""
    for layer in hidden_layers(model):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------------------------------------
# train_epoch


def pair_loss(out: dict[str, torch.Tensor], target: torch.Tensor, classes: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Cross-entropy on the comparison, plus aux_weight x the digit cross-entropies if aux_loss and the net has digits."""
    loss = F.cross_entropy(out["logits"], target)
    if cfg["aux_loss"] and "digits" in out:
        digits = out["digits"]  # (B, 2, 10)
        aux = F.cross_entropy(digits[:, 0], classes[:, 0]) + F.cross_entropy(digits[:, 1], classes[:, 1])
        loss = loss + float(cfg["aux_weight"]) * aux
    return loss


def train_batches(n: int, config: dict, generator: torch.Generator) -> list[torch.Tensor]:
    """The epoch's index batches (shuffled by `generator`); a last batch of one pair is merged
    into the one before (BatchNorm cannot train on one example)."""
    batches = iterate_batches(n, config["batch_size"], generator)
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trial_data: PairData,
    config: dict,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """One shuffled pass over the training pairs: train_loss (mean over batches), train_acc (0-1)."""
    pairs = trial_data.train
    batches = train_batches(len(pairs), config, generator)
    loss_sum, correct = 0.0, 0
    for idx in batches:
        x, target, classes = (t[idx].to(device) for t in (pairs.input, pairs.target, pairs.classes))
        out = model(x)
        loss = pair_loss(out, target, classes, config)
        check_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        optimizer.step()
        loss_sum += loss.item()
        correct += int((out["logits"].argmax(dim=1) == target).sum())
    seen = sum(len(idx) for idx in batches)  # len(pairs), or a data-parallel worker's share of it
    return {"train_loss": loss_sum / len(batches), "train_acc": correct / seen}


# ---------------------------------------------------------------------------------------------
# evaluate


@torch.no_grad()
def evaluate(model: nn.Module, trial_data: PairData, config: dict, device: torch.device) -> dict[str, float]:
    """test_loss (the training loss, mean over pairs), test_acc (comparison, 0-1) and, for two-branch
    nets, test_digit_acc (accuracy of the digit predictions, both digits pooled, 0-1)."""
    pairs = trial_data.test
    loss_sum, correct, digit_correct, has_digits = 0.0, 0, 0, False
    for idx in iterate_batches(len(pairs), EVAL_BATCH_SIZE, None):
        x, target, classes = (t[idx].to(device) for t in (pairs.input, pairs.target, pairs.classes))
        out = model(x)
        loss_sum += pair_loss(out, target, classes, config).item() * len(idx)
        correct += int((out["logits"].argmax(dim=1) == target).sum())
        if "digits" in out:
            has_digits = True
            digit_correct += int((out["digits"].argmax(dim=2) == classes).sum())  # (B, 2) vs (B, 2)
    metrics = {"test_loss": loss_sum / len(pairs), "test_acc": correct / len(pairs)}
    if has_digits:
        metrics["test_digit_acc"] = digit_correct / (2 * len(pairs))
    return metrics


# ---------------------------------------------------------------------------------------------
# packed training (trainables/packing.py): the per-batch pieces of train_epoch/evaluate


def _pack_tensors(trial_data: PairData, split: str) -> tuple[torch.Tensor, ...]:
    pairs = trial_data.train if split == "train" else trial_data.test
    return pairs.input, pairs.target, pairs.classes


def _pack_train_stats(out: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...], cfg: dict) -> dict:
    return {"correct": (out["logits"].argmax(dim=-1) == batch[0]).sum()}


def _pack_train_metrics(loss_sum: float, n_batches: int, sums: dict[str, float], seen: int) -> dict[str, float]:
    return {"train_loss": loss_sum / n_batches, "train_acc": sums["correct"] / seen}  # as train_epoch


def _pack_eval_stats(out: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...], cfg: dict) -> dict:
    """Sums over one test batch (vmapped over members): loss x examples, correct comparisons and digits."""
    target, classes = batch
    stats = {
        "loss_sum": pair_loss(out, target, classes, cfg) * target.shape[0],
        "correct": (out["logits"].argmax(dim=-1) == target).sum(),
    }
    if "digits" in out:
        stats["digit_correct"] = (out["digits"].argmax(dim=-1) == classes).sum()
    return stats


def _pack_eval_metrics(sums: dict[str, float], n: int) -> dict[str, float]:
    metrics = {"test_loss": sums["loss_sum"] / n, "test_acc": sums["correct"] / n}
    if "digit_correct" in sums:
        metrics["test_digit_acc"] = sums["digit_correct"] / (2 * n)
    return metrics


def pack_support() -> Any:
    """What `trainables.packing` needs to train digit-pair trials packed (same results as train_epoch/evaluate)."""
    from trainables.packing import PackSupport

    return PackSupport(
        tensors=_pack_tensors,
        train_batches=lambda data, cfg, gen: train_batches(len(data.train), cfg, gen),
        loss=lambda out, batch, cfg: pair_loss(out, batch[0], batch[1], cfg),
        train_stats=_pack_train_stats,
        train_metrics=_pack_train_metrics,
        eval_stats=_pack_eval_stats,
        eval_metrics=_pack_eval_metrics,
        eval_batch_size=EVAL_BATCH_SIZE,
        auto_members=auto_pack_members,
    )


# `pack: auto` on CPUs: packs win at small batches, where a step is launch and Python overhead
# (1.6-1.8x less compute per member at batch 25), and every pack saves Tune's per-trial cost (its
# start and result handling: 2.4 s per trial under load, about 2.7 CPU-seconds idle) for all but
# one member; at batch 200, where one net keeps a core busy, packed compute costs about 20% more,
# about 0.4 s per member: less than the trial cost saved (benchmarks/results/grid_levers.json,
# mfu.json: 2 cores, 1 thread per trial). Larger batches were not measured: not packed.
AUTO_PACK_MAX_BATCH = 200  # largest batch size packed on CPUs
AUTO_PACK_MEMBERS = 50  # members per pack when packed (the grid's 5 lr x 10 seeds of one net x batch size)


def auto_pack_members(shared: dict[str, Any], on_gpu: bool) -> int:
    """Members per pack for ``pack: auto``: a whole group on a GPU (one small net uses a few percent
    of it) or at small batch sizes on CPUs; 1 (no packing) where packing does not win."""
    if on_gpu or int(shared.get("batch_size", 0)) <= AUTO_PACK_MAX_BATCH:
        return AUTO_PACK_MEMBERS
    return 1


# ---------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "FconnNet": {"arch": "FconnNet"},
    "ConvNet": {"arch": "ConvNet"},
    "parallelConv": {"arch": "parallelConv"},
    "Siamese": {"arch": "Siamese"},
    "parallelConv-noaux": {"arch": "parallelConv", "aux_loss": False},
    "Siamese-noaux": {"arch": "Siamese", "aux_loss": False},
    "parallelConv-shared": {"arch": "parallelConv", "weight_sharing": True},
    "Siamese-unshared": {"arch": "Siamese", "weight_sharing": False},
}


def inert_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """Keys without effect: the auxiliary loss's weight when it is off; the auxiliary loss and
    weight sharing on the single-branch nets (no digit logits, nothing to share)."""
    inert = set()
    if cfg["arch"] in SINGLE_BRANCH:
        inert |= {"aux_loss", "aux_weight", "weight_sharing"}
    elif not cfg["aux_loss"]:
        inert.add("aux_weight")
    return frozenset(inert)


FAMILY = Family(
    name="digit_pairs",
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
        "train_loss": M.LOSS,
        "train_acc": M.ACCURACY,
        "test_loss": M.LOSS,
        "test_acc": M.ACCURACY,  # the comparison (is digit 1 <= digit 2)
        "test_digit_acc": M.ACCURACY,  # the digit classes of two-branch nets (both digits)
    },
    smoke={"n_train": 200, "n_test": 200, "epochs": 1},
    variants=VARIANTS,
    model_keys=("arch", "weight_sharing"),
    input_shape=lambda cfg: (2, 14, 14),
    doc="Digit-pair comparison (EE-559 project 1): FconnNet, ConvNet, parallelConv, Siamese; aux loss, weight sharing.",
)
