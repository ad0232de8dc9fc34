"""EncapNet: neural network encapsulation (Li et al., ECCV 2018; seed 004, PAPERS.md section 5).

Nets (config key ``arch``), all on 3 x 32 x 32 inputs (MNIST: grey replicated, padded 28 -> 32):

- ``encapnet`` (Table 2, Table 3): stem Conv(3 -> w, 3x3) -> BN -> ReLU; four capsule modules of
  w capsule types (w = ``width``, 32 in the paper) with capsule dims 2/4/8/16 (2w..16w channels)
  at 32/16/8/4 pixels; capFC (16w capsules of dim 16 -> one capsule per class); prediction =
  capsule length; margin loss. A module is a main capConv (3x3, stride 2; stride 1 in module 1;
  raises the capsule dim: the paper's "Type I") and ``sub_layers`` sub capConvs (1x1, same dim:
  "Type II"; 2 in the authors' code).
- ``encapnet6_master`` / ``encapnet6_aide`` (Table 1 e/f, the authors' dev-branch
  ``encapnet_table1``): Conv 3 -> w, w -> 2w, 2w -> 4w s2, 4w -> 8w s2 (each BN + ReLU), one capConv
  8w -> 16w (3x3, s2, main skip; master only, or master/aide v3), capFC.
- ``cnn6`` / ``cnn6_wide`` (Table 1 c/d, dev branch ``resnet_same_shape`` / ``resnet_similar_param``):
  the same six layers as plain convolutions (w, 2w, 4w s2, 8w s2, 16w) or wider (w, 8w, 16w s2,
  16w s2, 1300 w / 32), global average pool, linear; cross-entropy.
- ``capnet_dynamic`` / ``capnet_em`` (Table 1 a/b, the authors' ``capnet_default``): the first four
  convolutions, then a convolutional capsule layer (w types of dim 8 at 8x8 -> 16w capsules of dim
  16, laid out as w types at 4x4; one 1x1 transform per type, shared over positions) and a class
  capsule layer, with dynamic routing (3 iterations; class score = length) or EM routing (input
  activations from a 3x3 conv + sigmoid; class score = activation).
  Memory: the prediction tensor alone holds 16 w^2 x 16 x 64 floats per example (67 MB at w = 32,
  the paper's batch 8 on a 12 GB GPU; 4 MB at w = 8), routing keeps a few copies of it.
- ``resnet18`` (Table 3 right): `trainables.backbones.ResNet("resnet18", width=2w, cifar_stem=True)`
  (torchvision's ResNet-18 at w = 32: stages of 64..512 channels, EncapNet's module widths).

capConv (``core``; PAPERS.md "capConv"): ``master``: grouped conv (groups = w) -> [+ skip] -> BN ->
ReLU -> squash. ``v3`` (the paper's best): master (grouped k) and aide (dense, kernel k + 4) branches,
each -> BN -> ReLU -> squash; an X-shaped coefficient exchange (a grouped 3x3 conv on the master
output gives the aide's coefficient, one on the aide output the master's; one raw scalar per
capsule and position); out = master c_m + aide c_a, then [+ skip] -> BN -> ReLU -> squash. ``v1``:
aide kernel k, c from a grouped 3x3 conv on the master output, the aide gets 1 - c. ``v2``: c from
the layer input (grouped conv with the master's kernel and stride). ``aide_modules`` lists the
modules that use the core (others: master only; the released ``withCapRoute`` is [3, 4]).
``skip``: ``main`` adds A(x) (dense 3x3 conv, bias, no BN) to the main capConv's core output,
``sub`` adds the sub block's input after the last sub layer's core, ``both``, ``none``.

Regulariser (``reg``; section 3.2, Table 3 right), train-time only: ``none``; ``ot`` the feedback
agreement unit(s); ``kl`` the same units with a KL loss instead of OT (**choice**: the code has no
KL option; KL between softmax-normalised critic features, `optimal_transport.kl_loss`); and the
ablations d1-d5 as ``reg`` values that change one key of ``ot``: ``ot_no_bias_fix`` (bias_fix
false), ``ot_grad_iterates`` (sinkhorn_grad true), ``ot_no_extractor`` (critic false),
``ot_vanilla_generator`` (generator vanilla), ``ot_l2_cost`` (cost l2). One axis holds Table 3
right's rows this way. An OT unit: generator G (ConvTranspose2d 3x3, stride = y's size / z's;
groups = w and a squash for ``generator: capsule``, groups 1 for ``vanilla``; -> BN -> ReLU),
critic (Conv(C -> C/4, 3x3, s2) -> BN -> ReLU -> Conv(-> 1, 3x3, s2) -> BN -> ReLU, shared by
both inputs, trained by the same loss), cost (``cost``: l2 or cosine) between the batch's critic
features, Sinkhorn (``sinkhorn_eps``, ``sinkhorn_iters``, log domain), loss = Sinkhorn divergence
(``bias_fix``) or W alone; total loss = margin + ``ot_lambda`` x sum over units.
``ot_units`` (where the units sit): ``m<k>_same`` (module k: y = main capConv output, z = module
output, stride-1 generator), ``m<k>_half`` (y = module input, z = after the first sub layer, a
stride-2 generator from module 2 on), comma-separated, or a preset: ``two`` = m3_same,m4_half (the
authors' code; 2,067,462 parameters at CIFAR-10), ``one`` = m4_half (Fig. 3a's connectivity),
``each`` = m1..m4_half (one per module, Fig. 4), ``each2`` = both kinds in every module (the
paper's words for "two OTs"). For ``resnet18`` the modules are the four stages (y/z: the stage's
input, first block output, output) and the generator is always vanilla.

The OT units are part of the model (its state_dict, checkpoints and optimiser hold them) but
train-time only: eval-mode forwards never run them, and their parameters have requires_grad
false until the first training step, so ``params`` (and ``study validate --models``) count the
inference net alone; the metric ``ot_params`` reports their size. ``model_part: ot`` builds the
OT units alone, for ``study validate SPACE --models --set fixed.model_part=ot``.

Training (the authors' code and logs): Adam, lr 1e-4, weight decay 5e-4, lr x 0.1 at epochs
200/300/400, 600 epochs, batch 128; augmentation ``encapnet`` (resize 34, random crop 32, flip)
on CIFAR, none on the digit sources (**choice**: flips change digits); no normalisation.
Init: xavier-normal conv weights (**choice**: zero biases; the code draws them from N(0, 1)).
Paper's lambda 10 (code default 1, logged runs 20): ``ot_lambda``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from core.metrics import Metric
from trainables.backbones import ResNet
from trainables.capsules import (
    capsule_length,
    capsules_of,
    channels_of,
    dynamic_routing,
    em_routing,
    margin_loss,
    squash,
    squash_channels,
)
from trainables.common import ConfigError, Family
from trainables.images import (
    IMAGE_DEFAULTS,
    IMAGE_METRIC_PATTERNS,
    IMAGE_SOURCES,
    check_batches_for_batchnorm,
    check_image_config,
    evaluate_images,
    image_inert_keys,
    image_metrics,
    load_images,
    main_logits,
    prepare_images,
    train_epoch_images,
)
from trainables.optimal_transport import COSTS, kl_loss, sinkhorn_loss

ARCHS = (
    "encapnet",
    "encapnet6_master",
    "encapnet6_aide",
    "cnn6",
    "cnn6_wide",
    "capnet_dynamic",
    "capnet_em",
    "resnet18",
)
CAPSULE_ARCHS = ("encapnet", "encapnet6_master", "encapnet6_aide", "capnet_dynamic", "capnet_em")  # margin loss
OT_ARCHS = ("encapnet", "resnet18")
CORES = ("master", "v1", "v2", "v3")
SKIPS = ("none", "main", "sub", "both")
REGS = (
    "none",
    "kl",
    "ot",
    "ot_no_bias_fix",
    "ot_grad_iterates",
    "ot_no_extractor",
    "ot_vanilla_generator",
    "ot_l2_cost",
)
ABLATIONS = {  # Table 3 right (d1-d5): the one key each row changes in ``ot``
    "ot_no_bias_fix": ("bias_fix", False),
    "ot_grad_iterates": ("sinkhorn_grad", True),
    "ot_no_extractor": ("critic", False),
    "ot_vanilla_generator": ("generator", "vanilla"),
    "ot_l2_cost": ("cost", "l2"),
}
OT_PRESETS = {
    "one": "m4_half",
    "two": "m3_same,m4_half",
    "each": "m1_half,m2_half,m3_half,m4_half",
    "each2": "m1_same,m1_half,m2_same,m2_half,m3_same,m3_half,m4_same,m4_half",
}
CAPSULE_DIMS = (2, 4, 8, 16)  # capsule dimension of modules 1-4 (and capFC's 16)
UNIT_PATTERN = r"m([1-4])_(same|half)"

DEFAULTS: dict[str, Any] = {
    **IMAGE_DEFAULTS,
    "normalize": False,  # the authors feed raw [0, 1] pixels
    "optimizer": "adam",  # the authors' Adam
    "lr": 1e-4,  # initial learning rate
    "weight_decay": 5e-4,  # Adam's L2 penalty
    "batch_size": 128,  # examples per step
    "epochs": 600,  # the paper's maximum epoch
    "lr_milestones": [200, 300, 400],  # lr x 0.1 after these epochs (the OT runs: 350/450/550)
    "arch": "encapnet",  # encapnet | encapnet6_master | encapnet6_aide | cnn6 | cnn6_wide | capnet_dynamic | capnet_em | resnet18
    "width": 32,  # capsule types w (= stem channels; modules have w x capsule dim channels; ResNet-18 width 2w)
    "core": "master",  # capConv core of `encapnet`: master | v1 | v2 | v3 (master/aide versions)
    "aide_modules": [1, 2, 3, 4],  # modules (1-4) whose capConvs use `core`; the others are master only
    "skip": "both",  # skip connections of `encapnet`: none | main | sub | both
    "sub_layers": 2,  # N: sub capConvs (1x1) per module after the main one
    "routing_iters": 3,  # CapNet routing iterations (dynamic and EM)
    "reg": "none",  # train-time regulariser: none | kl | ot | ot_no_bias_fix | ot_grad_iterates | ot_no_extractor | ot_vanilla_generator | ot_l2_cost
    "ot_units": "two",  # where the units sit: one | two | each | each2 | comma list of m<k>_same / m<k>_half
    "generator": "capsule",  # OT generator: capsule (grouped, squashed) | vanilla
    "critic": True,  # OT feature extractor on (false: the cost compares raw flattened features)
    "cost": "cosine",  # ground cost between critic features: cosine (1 - cos) | l2 (unsquared distance)
    "bias_fix": True,  # Sinkhorn divergence 2W(x,y) - W(x,x) - W(y,y); false: W(x,y) alone
    "sinkhorn_grad": False,  # back-propagate through the Sinkhorn iterates (false: plan detached)
    "sinkhorn_eps": 1.0,  # entropic regularisation eps (> 0; K = exp(-C / eps))
    "sinkhorn_iters": 10,  # Sinkhorn iterations L
    "ot_lambda": 10.0,  # weight of the regulariser (paper 10; code default 1, logged runs 20)
    "model_part": "net",  # net (what trials train) | ot (the OT units alone, for study validate --models)
}


# ----------------------------------------------------------------------------- capConv


def xavier_init(module: nn.Module) -> None:
    """The authors' init (PAPERS.md section 5): xavier-normal conv weights (zero biases: choice)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def bn_relu_squash(channels: int, types: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), SquashChannels(types))


class SquashChannels(nn.Module):
    """Squash each capsule (channels g * D + d) at every position."""

    def __init__(self, types: int) -> None:
        super().__init__()
        self.types = types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash_channels(x, self.types)


class MasterCore(nn.Module):
    """The master branch alone: a grouped conv (one group per capsule type)."""

    def __init__(self, c_in: int, c_out: int, types: int, k: int, stride: int, pad: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, groups=types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AideCore(nn.Module):
    """Master/aide (section 3.1, eq. 6): two branches, each conv -> BN -> ReLU -> squash, mixed by
    coefficients (one scalar per capsule and position, repeated over the capsule's D channels).
    v1: c = grouped 3x3 conv of the master output, out = m c + a (1 - c), aide kernel k.
    v2: c = grouped conv (k, stride) of the layer input, out = m c + a (1 - c), aide kernel k.
    v3: aide kernel k + 4; c_a from the master output, c_m from the aide output ("X-shaped"),
    out = m c_m + a c_a (raw coefficients, no sigmoid, as in the authors' capConvRoute3)."""

    def __init__(self, c_in: int, c_out: int, types: int, k: int, stride: int, pad: int, version: str) -> None:
        super().__init__()
        self.version, self.dim = version, c_out // types
        grow = 2 if version == "v3" else 0
        self.master = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad, groups=types), bn_relu_squash(c_out, types))
        self.aide = nn.Sequential(
            nn.Conv2d(c_in, c_out, k + 2 * grow, stride, pad + grow), bn_relu_squash(c_out, types)
        )
        if version == "v2":
            self.coeff = nn.Conv2d(c_in, types, k, stride, pad, groups=types)
        else:
            self.coeff = nn.Conv2d(c_out, types, 3, 1, 1, groups=types)  # v1: c; v3: the aide's c from the master
        if version == "v3":
            self.coeff_master = nn.Conv2d(c_out, types, 3, 1, 1, groups=types)  # the master's c from the aide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, a = self.master(x), self.aide(x)
        if self.version == "v3":
            c_a = self.coeff(m).repeat_interleave(self.dim, dim=1)
            c_m = self.coeff_master(a).repeat_interleave(self.dim, dim=1)
            return m * c_m + a * c_a
        c = self.coeff(x if self.version == "v2" else m).repeat_interleave(self.dim, dim=1)
        return m * c + a * (1 - c)


class CapConv(nn.Module):
    """One capConv layer: core(x) [+ A(x) main skip] [+ residual] -> BN -> ReLU -> squash."""

    def __init__(
        self, c_in: int, c_out: int, types: int, k: int, stride: int, pad: int, core: str, main_skip: bool = False
    ) -> None:
        super().__init__()
        if core == "master":
            self.core = MasterCore(c_in, c_out, types, k, stride, pad)
        else:
            self.core = AideCore(c_in, c_out, types, k, stride, pad, core)
        self.adjust = nn.Conv2d(c_in, c_out, 3, stride, 1) if main_skip else None
        self.post = bn_relu_squash(c_out, types)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = self.core(x)
        if self.adjust is not None:
            out = out + self.adjust(x)
        if residual is not None:
            out = out + residual
        return self.post(out)


class CapModule(nn.Module):
    """Main capConv (3x3, `stride`) + N sub capConvs (1x1); returns the output and the taps the
    OT units read: input, main (main capConv output), sub1 (after the first sub layer), out."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        types: int,
        stride: int,
        core: str,
        sub_layers: int,
        skip_main: bool,
        skip_sub: bool,
    ) -> None:
        super().__init__()
        self.main = CapConv(c_in, c_out, types, 3, stride, 1, core, main_skip=skip_main)
        self.subs = nn.ModuleList(CapConv(c_out, c_out, types, 1, 1, 0, core) for _ in range(sub_layers))
        self.skip_sub = skip_sub

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps = {"input": x}
        out = taps["main"] = self.main(x)
        block_input = out
        for i, sub in enumerate(self.subs):
            last = i == len(self.subs) - 1
            out = sub(out, residual=block_input if (last and self.skip_sub) else None)
            if i == 0:
                taps["sub1"] = out
        taps.setdefault("sub1", out)
        taps["out"] = out
        return out, taps


class CapFC(nn.Module):
    """capFC: per capsule dimension d, out[j, d] = sum_i W[d, i, j] x[i, d] (no bias, no routing),
    then squash; (B, types * D, H, W) -> (B, classes, D)."""

    def __init__(self, in_caps: int, classes: int, dim: int, types: int) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.weight = nn.Parameter(torch.empty(dim, in_caps, classes))
        bound = 1 / math.sqrt(in_caps)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        caps = capsules_of(x, self.types)  # (B, I, D)
        return squash(torch.einsum("bid,dij->bjd", caps, self.weight))


# ----------------------------------------------------------------------------- OT unit


class OTUnit(nn.Module):
    """Feedback agreement (section 3.2, Fig. 3b): generator G(z) -> x, critic f on x and y,
    cost, Sinkhorn divergence (or KL); train-time only."""

    def __init__(self, c_z: int, c_y: int, stride: int, groups: int, critic: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(c_z, c_y, 3, stride, 1, output_padding=stride - 1, groups=groups),
            nn.BatchNorm2d(c_y),
            nn.ReLU(),
        ]
        if groups > 1:
            layers.append(SquashChannels(groups))
        self.generator = nn.Sequential(*layers)
        mid = max(c_y // 4, 1)
        self.critic = (
            nn.Sequential(
                nn.Conv2d(c_y, mid, 3, 2, 1),
                nn.BatchNorm2d(mid),
                nn.ReLU(),
                nn.Conv2d(mid, 1, 3, 2, 1),
                nn.BatchNorm2d(1),
                nn.ReLU(),
            )
            if critic
            else None
        )

    def features(self, t: torch.Tensor) -> torch.Tensor:
        return (self.critic(t) if self.critic is not None else t).flatten(1)

    def forward(self, z: torch.Tensor, y: torch.Tensor, opts: dict[str, Any]) -> torch.Tensor:
        fx, fy = self.features(self.generator(z)), self.features(y)
        if opts["loss"] == "kl":
            return kl_loss(fx, fy)
        return sinkhorn_loss(
            fx,
            fy,
            eps=opts["eps"],
            iterations=opts["iters"],
            cost=opts["cost"],
            bias_fix=opts["bias_fix"],
            grad_through_iterations=opts["grad"],
        )


def parse_units(spec: str) -> list[tuple[int, str]]:
    """``two`` or ``m3_same,m4_half`` -> [(3, "same"), (4, "half")] (ValueError naming the bad part)."""
    spec = OT_PRESETS.get(spec, spec)
    units = []
    for part in spec.split(","):
        m = re.fullmatch(UNIT_PATTERN, part.strip())
        if m is None:
            raise ValueError(f"{part.strip()!r} is neither a preset ({', '.join(OT_PRESETS)}) nor m<1-4>_<same|half>")
        units.append((int(m.group(1)), m.group(2)))
    if len(set(units)) != len(units):
        raise ValueError("a unit is listed twice")
    return units


def ot_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The regulariser's settings after the Table-3 row in ``reg`` is applied."""
    keys = {k: cfg[k] for k in ("bias_fix", "sinkhorn_grad", "critic", "generator", "cost")}
    if cfg["reg"] in ABLATIONS:
        key, value = ABLATIONS[cfg["reg"]]
        keys[key] = value
    return {
        "loss": "kl" if cfg["reg"] == "kl" else "ot",
        "eps": float(cfg["sinkhorn_eps"]),
        "iters": int(cfg["sinkhorn_iters"]),
        "cost": keys["cost"],
        "bias_fix": bool(keys["bias_fix"]),
        "grad": bool(keys["sinkhorn_grad"]),
        "critic": bool(keys["critic"]),
        "generator": keys["generator"],
        "lambda": float(cfg["ot_lambda"]),
    }


class Regulariser(nn.Module):
    """The net's OT (or KL) units, keyed ``m<k>_<kind>``; `geometry` gives each module's
    (input channels, output channels, stride) and the stem's spatial size."""

    def __init__(self, cfg: dict[str, Any], geometry: list[tuple[int, int, int]], groups: int) -> None:
        super().__init__()
        self.opts = ot_options(cfg)
        self.units = nn.ModuleDict()
        self.shapes: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {}  # (z, y) at 32 x 32
        size = 32
        sizes = []
        for _, _, stride in geometry:
            sizes.append((size, size // stride))
            size //= stride
        for k, kind in parse_units(cfg["ot_units"]):
            c_in, c_out, stride = geometry[k - 1]
            s_in, s_out = sizes[k - 1]
            if kind == "same":  # y = main output, z = module output: same shape
                c_z, c_y, g_stride, zs, ys = c_out, c_out, 1, s_out, s_out
            else:  # y = module input, z = after the first sub layer
                c_z, c_y, g_stride, zs, ys = c_out, c_in, stride, s_out, s_in
            g = groups if (self.opts["generator"] == "capsule" and groups > 1) else 1
            self.units[f"m{k}_{kind}"] = OTUnit(c_z, c_y, g_stride, g, self.opts["critic"])
            self.shapes[f"m{k}_{kind}"] = ((c_z, zs, zs), (c_y, ys, ys))
        xavier_init(self)

    def forward(self, taps: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        total = taps[0]["out"].new_zeros(())
        for name, unit in self.units.items():
            k, kind = int(name[1]), name.split("_")[1]
            t = taps[k - 1]
            z, y = (t["out"], t["main"]) if kind == "same" else (t["sub1"], t["input"])
            total = total + unit(z, y, self.opts)
        return total


class OTOnly(nn.Module):
    """``model_part: ot``: the OT units alone (parameters and FLOPs for `study validate --models`);
    forward runs every unit on zero features of its shapes for the batch of `x`."""

    def __init__(self, reg: Regulariser | None) -> None:
        super().__init__()
        self.reg = reg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        if self.reg is None:
            return total
        for name, unit in self.reg.units.items():
            zs, ys = self.reg.shapes[name]
            z, y = x.new_zeros((x.shape[0], *zs)), x.new_zeros((x.shape[0], *ys))
            total = total + unit(z, y, self.reg.opts)
        return total


# ----------------------------------------------------------------------------- nets


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class EncapNet(nn.Module):
    """The 18-layer EncapNet (Table 2): stem, four capsule modules, capFC; forward -> capsule
    lengths (B, classes), plus the regulariser's loss in training mode ({"logits", "reg"})."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        w, classes = int(cfg["width"]), int(cfg["num_classes"])
        skip_main, skip_sub = cfg["skip"] in ("main", "both"), cfg["skip"] in ("sub", "both")
        self.stem = conv_bn_relu(3, w)
        self.geometry = []
        c_in = w
        modules = []
        for k, dim in enumerate(CAPSULE_DIMS, start=1):
            c_out, stride = w * dim, 1 if k == 1 else 2
            core = cfg["core"] if k in cfg["aide_modules"] else "master"
            modules.append(CapModule(c_in, c_out, w, stride, core, int(cfg["sub_layers"]), skip_main, skip_sub))
            self.geometry.append((c_in, c_out, stride))
            c_in = c_out
        self.capsule_modules = nn.ModuleList(modules)
        self.capfc = CapFC(w * 16, classes, 16, w)  # 4 x 4 positions x w types, dim 16
        xavier_init(self)
        self.reg = Regulariser(cfg, self.geometry, w) if cfg["reg"] != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        x = self.stem(x)
        taps = []
        for module in self.capsule_modules:
            x, t = module(x)
            taps.append(t)
        lengths = capsule_length(self.capfc(x))
        if self.training and self.reg is not None:
            return {"logits": lengths, "reg": self.reg(taps)}
        return lengths


class ResNet18(nn.Module):
    """ResNet-18 (CIFAR stem, width 2w) with the OT units on its stages (Table 3 right)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        w = int(cfg["width"])
        self.net = ResNet("resnet18", int(cfg["num_classes"]), width=2 * w, cifar_stem=True)
        chans = self.net.group_channels
        self.geometry = [
            (2 * w, chans[0], 1),
            (chans[0], chans[1], 2),
            (chans[1], chans[2], 2),
            (chans[2], chans[3], 2),
        ]
        self.reg = Regulariser(cfg, self.geometry, 1) if cfg["reg"] != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        x = self.net.stem(x)
        taps = []
        for stage in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
            t = {"input": x}
            x = t["main"] = t["sub1"] = stage[0](x)
            for block in stage[1:]:
                x = block(x)
            t["out"] = x
            taps.append(t)
        logits = self.net.fc(torch.flatten(self.net.avgpool(x), 1))
        if self.training and self.reg is not None:
            return {"logits": logits, "reg": self.reg(taps)}
        return logits


def six_layer_trunk(w: int) -> nn.Sequential:
    """Table 1's first four layers: Conv 3 -> w, w -> 2w, 2w -> 4w (s2), 4w -> 8w (s2)."""
    return nn.Sequential(
        conv_bn_relu(3, w), conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 4 * w, 2), conv_bn_relu(4 * w, 8 * w, 2)
    )


class EncapNet6(nn.Module):
    """Table 1 (e, f): the trunk, one capConv 8w -> 16w (3x3, s2, main skip), capFC."""

    def __init__(self, cfg: dict[str, Any], core: str) -> None:
        super().__init__()
        w = int(cfg["width"])
        self.trunk = six_layer_trunk(w)
        self.capconv = CapConv(8 * w, 16 * w, w, 3, 2, 1, core, main_skip=True)
        self.capfc = CapFC(w * 16, int(cfg["num_classes"]), 16, w)
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return capsule_length(self.capfc(self.capconv(self.trunk(x))))


class CNN6(nn.Module):
    """Table 1 (c, d): six plain layers, global average pool, linear (logits)."""

    def __init__(self, cfg: dict[str, Any], wide: bool) -> None:
        super().__init__()
        w = int(cfg["width"])
        chans = [w, 8 * w, 16 * w, 16 * w, round(1300 * w / 32)] if wide else [w, 2 * w, 4 * w, 8 * w, 16 * w]
        strides = [1, 1, 2, 2, 1]
        layers, c_in = [], 3
        for c, s in zip(chans, strides):
            layers.append(conv_bn_relu(c_in, c, s))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, int(cfg["num_classes"]))
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class CapsuleLayer(nn.Module):
    """Convolutional capsule layer of the authors' CapNet: one 1x1 transform per input capsule
    type (shared over positions) predicts every output capsule; routing by `route`.
    (B, types * d_in, H, W) -> poses (B, J, d_out) and activations (B, J) (EM) or None."""

    def __init__(self, types: int, d_in: int, out_caps: int, d_out: int, route: str, iterations: int) -> None:
        super().__init__()
        self.types, self.out_caps, self.d_out, self.route, self.iterations = types, out_caps, d_out, route, iterations
        self.transform = nn.Conv2d(types * d_in, types * out_caps * d_out, 1, groups=types)
        if route == "em":
            self.beta_v = nn.Parameter(torch.zeros(out_caps))
            self.beta_a = nn.Parameter(torch.zeros(out_caps))

    def forward(self, x: torch.Tensor, a_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, _, h, w = x.shape
        pred = self.transform(x).reshape(b, self.types, self.out_caps, self.d_out, h, w)
        u_hat = pred.permute(0, 2, 1, 4, 5, 3).reshape(b, self.out_caps, self.types * h * w, self.d_out)
        if self.route == "dynamic":
            return dynamic_routing(u_hat, self.iterations), None
        return em_routing(u_hat, a_in, self.beta_v, self.beta_a, self.iterations)


class CapNet(nn.Module):
    """Table 1 (a, b): the trunk (8w channels at 8x8 = w types of dim 8), a capsule layer to w
    types x 4 x 4 capsules of dim 16, a class capsule layer. Score: length (dynamic) or
    activation (EM)."""

    def __init__(self, cfg: dict[str, Any], route: str) -> None:
        super().__init__()
        w, it = int(cfg["width"]), int(cfg["routing_iters"])
        self.types, self.route = w, route
        self.trunk = six_layer_trunk(w)
        self.primary_activation = nn.Conv2d(8 * w, w, 3, 1, 1) if route == "em" else None
        self.caps = CapsuleLayer(w, 8, w * 16, 16, route, it)
        self.classes = CapsuleLayer(w, 16, int(cfg["num_classes"]), 16, route, it)
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)  # (B, 8w, 8, 8)
        a = torch.sigmoid(self.primary_activation(x)).flatten(1) if self.primary_activation is not None else None
        v, a = self.caps(x, a)
        v, a = self.classes(channels_of(v, self.types, 4, 4), a)
        return capsule_length(v) if self.route == "dynamic" else a


def freeze_train_only(model: nn.Module) -> nn.Module:
    """The OT units' parameters start with requires_grad false: `params` counts the inference net."""
    reg = getattr(model, "reg", None)
    if reg is not None:
        for p in reg.parameters():
            p.requires_grad_(False)
    return model


def enable_train_only(model: nn.Module) -> None:
    reg = getattr(model, "reg", None)
    if reg is not None:
        for p in reg.parameters():
            p.requires_grad_(True)


def ot_param_count(model: nn.Module) -> int:
    reg = getattr(model, "reg", None)
    return sum(p.numel() for p in reg.parameters()) if reg is not None else 0


def build(config: dict) -> nn.Module:
    arch = config["arch"]
    if config.get("model_part", "net") == "ot":
        net = build({**config, "model_part": "net"})
        enable_train_only(net)
        return OTOnly(getattr(net, "reg", None))
    if arch == "encapnet":
        return freeze_train_only(EncapNet(config))
    if arch == "resnet18":
        return freeze_train_only(ResNet18(config))
    if arch.startswith("encapnet6"):
        return EncapNet6(config, "master" if arch == "encapnet6_master" else "v3")
    if arch.startswith("cnn6"):
        return CNN6(config, wide=arch == "cnn6_wide")
    return CapNet(config, "dynamic" if arch == "capnet_dynamic" else "em")


# ----------------------------------------------------------------------------- family


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError("encapnet", key, f"must be one of {', '.join(allowed)} (got {value!r})")


def check(cfg: dict, data: Any = None) -> None:
    check_image_config("encapnet", cfg, data)
    check_batches_for_batchnorm("encapnet", cfg, data)  # every net here has BatchNorm (the OT critic too)
    _one_of("arch", cfg["arch"], ARCHS)
    _one_of("core", cfg["core"], CORES)
    _one_of("skip", cfg["skip"], SKIPS)
    _one_of("reg", cfg["reg"], REGS)
    _one_of("generator", cfg["generator"], ("capsule", "vanilla"))
    _one_of("cost", cfg["cost"], COSTS)
    _one_of("model_part", cfg["model_part"], ("net", "ot"))
    if not 1 <= cfg["width"] <= 1024:
        raise ConfigError("encapnet", "width", f"must be in 1..1024 (got {cfg['width']})")
    if not 0 <= cfg["sub_layers"] <= 16:
        raise ConfigError("encapnet", "sub_layers", f"must be in 0..16 (got {cfg['sub_layers']})")
    if not 1 <= cfg["routing_iters"] <= 20:
        raise ConfigError("encapnet", "routing_iters", f"must be in 1..20 (got {cfg['routing_iters']})")
    mods = cfg["aide_modules"]
    if any(isinstance(m, bool) or m not in (1, 2, 3, 4) for m in mods) or len(set(mods)) != len(mods):
        raise ConfigError("encapnet", "aide_modules", f"must be distinct modules among 1, 2, 3, 4 (got {mods!r})")
    if not 1e-6 <= cfg["sinkhorn_eps"] <= 1e6:
        raise ConfigError("encapnet", "sinkhorn_eps", f"must be in [1e-6, 1e6] (got {cfg['sinkhorn_eps']})")
    if not 1 <= cfg["sinkhorn_iters"] <= 10_000:
        raise ConfigError("encapnet", "sinkhorn_iters", f"must be in 1..10000 (got {cfg['sinkhorn_iters']})")
    if not 0 <= cfg["ot_lambda"] <= 1e6:
        raise ConfigError("encapnet", "ot_lambda", f"must be in [0, 1e6] (got {cfg['ot_lambda']})")
    try:
        parse_units(cfg["ot_units"])
    except ValueError as e:
        raise ConfigError("encapnet", "ot_units", str(e)) from None
    if cfg["reg"] != "none" and cfg["arch"] not in OT_ARCHS:
        raise ConfigError(
            "encapnet",
            "reg",
            f"the OT/KL units attach to {', '.join(OT_ARCHS)} only (arch {cfg['arch']!r} has reg {cfg['reg']!r})",
        )
    if data is not None and cfg["model_part"] != "net":
        raise ConfigError(
            "encapnet",
            "model_part",
            "ot builds the OT units alone, for study validate --models; trials train model_part: net",
        )


def recipe_for(source: str) -> str:
    return "encapnet" if source.startswith("cifar") else "none"


def prepare(cfg: dict, data: Any) -> Any:
    return prepare_images(cfg, data, channels=3, size=32, recipe=recipe_for(data.source))


def base_loss(cfg: dict):
    """Margin loss on capsule lengths (activations for EM) for the capsule nets, else cross-entropy."""
    if cfg["arch"] in CAPSULE_ARCHS:
        return lambda out, y: margin_loss(main_logits(out), y)
    return lambda out, y: F.cross_entropy(main_logits(out), y)


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, cfg: dict, g: torch.Generator, device: torch.device
) -> dict:
    enable_train_only(model)
    base, lam = base_loss(cfg), float(cfg["ot_lambda"])
    reg_sum = [0.0, 0]

    def loss_fn(out: Any, y: torch.Tensor) -> torch.Tensor:
        loss = base(out, y)
        if isinstance(out, dict) and "reg" in out:
            reg_sum[0] += float(out["reg"].detach()) * len(y)
            reg_sum[1] += len(y)
            loss = loss + lam * out["reg"]
        return loss

    metrics = train_epoch_images(model, optimizer, data, cfg, g, device, loss_fn=loss_fn)
    if reg_sum[1]:
        metrics["train_reg_loss"] = reg_sum[0] / reg_sum[1]
    metrics["ot_params"] = ot_param_count(model)
    return metrics


def evaluate(model: nn.Module, data: Any, cfg: dict, device: torch.device) -> dict:
    return evaluate_images(model, data, cfg, device, loss_fn=base_loss(cfg))


TINY = {
    "num_classes": 10,
    "width": 4,
    "n_train": 48,
    "n_test": 32,
    "batch_size": 16,
    "eval_batch_size": 32,
    "epochs": 1,
    "lr_milestones": [],
}


OT_KEYS = ("ot_units", "generator", "critic", "cost", "bias_fix", "sinkhorn_grad", "sinkhorn_eps", "sinkhorn_iters", "ot_lambda")
SINKHORN_KEYS = ("cost", "bias_fix", "sinkhorn_grad", "sinkhorn_eps", "sinkhorn_iters")  # not read by the KL units


def inert_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """Keys without effect: the OT keys without a regulariser (the Sinkhorn ones with KL, the key a
    Table-3 ablation row fixes); the capsule generator's grouping on ResNet-18 (one group); the
    capConv keys outside ``arch: encapnet`` (``aide_modules`` with the master core); the routing
    iterations outside CapNet; the image keys' (`image_inert_keys`)."""
    inert = set(image_inert_keys(cfg))
    if cfg["reg"] == "none":
        inert |= set(OT_KEYS)
    elif cfg["reg"] == "kl":
        inert |= set(SINKHORN_KEYS)
    elif cfg["reg"] in ABLATIONS:
        inert.add(ABLATIONS[cfg["reg"]][0])
    if cfg["arch"] == "resnet18":
        inert.add("generator")
    if cfg["arch"] != "encapnet":
        inert |= {"core", "aide_modules", "skip", "sub_layers"}
    elif cfg["core"] == "master":
        inert.add("aide_modules")
    if not cfg["arch"].startswith("capnet"):
        inert.add("routing_iters")
    return frozenset(inert)


FAMILY = Family(
    name="encapnet",
    defaults=DEFAULTS,
    load_data=load_images,
    sources=IMAGE_SOURCES,
    prepare=prepare,
    build=build,
    train_epoch=train_epoch,
    evaluate=evaluate,
    check=check,
    inert_keys=inert_keys,
    metrics=image_metrics(
        10,
        extra={
            "train_reg_loss": Metric("min", "ratio"),  # the OT/KL regulariser's mean (a divergence: may round below 0)
            "ot_params": M.COUNT,  # parameters of the OT units (train-time only)
        },
    ),
    metric_patterns=IMAGE_METRIC_PATTERNS,  # scaled test sets, top-5 on > 10 classes
    model_keys=(
        "arch",
        "width",
        "core",
        "aide_modules",
        "skip",
        "sub_layers",
        "routing_iters",
        "num_classes",
        "reg",
        "ot_units",
        "generator",
        "critic",
        "model_part",
    ),
    input_shape=lambda cfg: (3, 32, 32),
    smoke={"width": 4, "n_train": 128, "n_test": 128, "batch_size": 32, "epochs": 1, "lr_milestones": [], "lr": 1e-3},
    variants={
        "master_both": {**TINY, "core": "master", "skip": "both"},
        "v1_none": {**TINY, "core": "v1", "skip": "none", "sub_layers": 1},
        "v2_main": {**TINY, "core": "v2", "skip": "main", "aide_modules": [2, 4]},
        "v3_sub_two_ots": {**TINY, "core": "v3", "skip": "sub", "reg": "ot", "ot_units": "two", "sub_layers": 3},
        "master_kl_each": {**TINY, "reg": "kl", "ot_units": "each"},
        "ot_l2_grad_nobias": {
            **TINY,
            "reg": "ot_grad_iterates",
            "cost": "l2",
            "bias_fix": False,
            "ot_units": "m2_same,m4_half",
        },
        "ot_vanilla_nocritic": {
            **TINY,
            "reg": "ot_no_extractor",
            "generator": "vanilla",
            "ot_units": "one",
            "sinkhorn_eps": 0.01,
        },
        "encapnet6_master": {**TINY, "arch": "encapnet6_master"},
        "encapnet6_aide": {**TINY, "arch": "encapnet6_aide"},
        "cnn6": {**TINY, "arch": "cnn6"},
        "cnn6_wide": {**TINY, "arch": "cnn6_wide"},
        "capnet_dynamic": {**TINY, "arch": "capnet_dynamic"},
        "capnet_em": {**TINY, "arch": "capnet_em"},
        "resnet18": {**TINY, "arch": "resnet18"},
        "resnet18_ot": {**TINY, "arch": "resnet18", "reg": "ot", "ot_units": "m1_same,m2_half,m3_same,m4_half"},
    },
    doc="EncapNet (Li et al., ECCV 2018): capConv master/aide, capFC, the Sinkhorn OT regulariser; CapNet and CNN baselines",
)
