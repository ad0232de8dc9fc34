"""Many trials per device: ``pack: N`` trains up to N trials of the same model shape
in one process as one vectorised model.

The members of a pack differ only in `MEMBER_KEYS` (seed, lr, momentum, weight decay, lr
schedule); every other config key, hence the architecture, the batch size and the number of
epochs, is shared (`study.shapes` groups a grid's trials so). One Tune trial trains the pack:

- the members' models are built exactly as `run_trial` builds them (``torch.manual_seed(seed)``,
  then ``family.prepare`` and ``family.build``), then stacked (``torch.func.stack_module_state``)
  and run as one model through ``torch.func.vmap`` over ``functional_call``; BatchNorm running
  statistics are stacked buffers, updated per member;
- each member keeps its own data (its pairs, drawn from its seed), its own data order (its own
  generator), its own optimiser state and lr schedule (`PackedOptimizer`: SGD / Adam / AdamW as
  ``torch.optim`` computes them, with per-member hyperparameters), and its own metrics;
- a member whose loss turns NaN/inf is frozen (its update masked) and reports its last finite
  epoch with ``diverged=1`` once, as a one-worker trial does; the others go on;
- every epoch the pack reports ``{"members": {"0": metrics, "1": ...}}`` with one checkpoint of
  the whole pack; `study.shapes.expand_packs` turns each member back into its own trial for the
  tables (trial id ``<pack trial id>-m<i>``).

Precision: ``amp`` bf16 autocasts the packed forward and loss (``auto``: bf16 on a GPU that has
it, else full precision: fp16 needs a grad scaler per member, which packs do not have, and an
explicit ``amp: fp16`` with ``pack`` > 1 is refused by the spec check); ``channels_last`` is not
applied to packs.

A family opts in with a ``pack_support()`` function in its module returning a `PackSupport`
(the per-batch pieces of its ``train_epoch`` and ``evaluate``); digit_pairs does.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables import runtime
from trainables.common import (
    Family,
    count_params,
    peak_memory_mb,
    reset_peak_memory,
    resolve_config,
    resolve_device,
)
from trainables.keys import MEMBER_KEYS  # noqa: F401 (the keys members differ in; re-exported)


@dataclass(frozen=True)
class PackSupport:
    """The per-batch pieces of a family's training and evaluation, vmappable over members.

    - ``tensors(trial_data, split)``: the split's example-aligned tensors, input first.
    - ``train_batches(trial_data, cfg, generator)``: the epoch's index batches (as train_epoch).
    - ``loss(out, batch, cfg)``: the training loss of one batch (``batch``: the tensors after input).
    - ``train_stats(out, batch, cfg)`` / ``eval_stats``: sums over one batch (dict of 0-d tensors).
    - ``train_metrics(loss_sum, n_batches, sums, seen)`` / ``eval_metrics(sums, n)``: the metrics.
    - ``auto_members(shared_config, on_gpu)`` (optional): the pack size ``pack: auto`` takes.
    """

    tensors: Callable[[Any, str], tuple[torch.Tensor, ...]]
    train_batches: Callable[[Any, dict, torch.Generator], list[torch.Tensor]]
    loss: Callable[[Any, tuple, dict], torch.Tensor]
    train_stats: Callable[[Any, tuple, dict], dict[str, torch.Tensor]]
    train_metrics: Callable[[float, int, dict[str, float], int], dict[str, float]]
    eval_stats: Callable[[Any, tuple, dict], dict[str, torch.Tensor]]
    eval_metrics: Callable[[dict[str, float], int], dict[str, float]]
    eval_batch_size: int = 1000
    # ``pack: auto``: members per pack for a config (its shared keys) on a GPU or not; 1 = no packing
    auto_members: Callable[[dict, bool], int] | None = None


def support(family: Family) -> PackSupport | None:
    """The family's `PackSupport` (its module's ``pack_support()``), None if it cannot be packed."""
    import importlib

    module = importlib.import_module(family.build.__module__)
    make = getattr(module, "pack_support", None)
    return make() if make is not None else None


class PackedModel:
    """M models of one architecture as stacked parameters and buffers, run with vmap."""

    def __init__(self, models: list[nn.Module], device: torch.device) -> None:
        from torch.func import stack_module_state

        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.members = len(models)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def __call__(self, x: torch.Tensor) -> Any:  # x (M, B, ...)
        from torch.func import functional_call, vmap

        def one(p: dict, b: dict, xi: torch.Tensor) -> Any:
            return functional_call(self.base, (p, b), (xi,))

        return vmap(one, randomness="different")(self.params, self.buffers, x)

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach() for k, v in self.params.items()}, "buffers": dict(self.buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["buffers"].items():
                self.buffers[k].copy_(v)


class PackedOptimizer:
    """SGD (momentum, weight decay), Adam or AdamW over stacked parameters, one member per row,
    each with its own lr (MultiStepLR schedule), momentum and weight decay; formulas as
    ``torch.optim``'s single-tensor implementations. Members not `active` are left unchanged."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: list[dict], device: torch.device) -> None:
        self.kind = cfgs[0]["optimizer"]
        self.params = params
        f = lambda key: torch.tensor([float(c[key]) for c in cfgs], device=device)  # noqa: E731
        self.lr0, self.momentum, self.wd, self.gamma = f("lr"), f("momentum"), f("weight_decay"), f("lr_gamma")
        self.milestones = [[int(m) for m in c["lr_milestones"]] for c in cfgs]
        self.steps = 0
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        self.state: dict[str, dict[str, torch.Tensor]] = (
            {"buf": zeros} if self.kind == "sgd" else {"exp_avg": zeros, "exp_avg_sq": copy.deepcopy(zeros)}
        )

    def lr_at(self, epochs_done: int) -> torch.Tensor:
        """Each member's lr for the epoch after `epochs_done` (MultiStepLR: lr x gamma per milestone passed)."""
        passed = torch.tensor([sum(m <= epochs_done for m in ms) for ms in self.milestones], device=self.lr0.device)
        return self.lr0 * self.gamma**passed

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: torch.Tensor) -> None:
        """One step of every active member (in place, a few passes over the parameters; the masked
        path, with frozen members, only while some member is frozen)."""
        self.steps += 1
        all_on = bool(active.all())
        has_wd = bool((self.wd != 0).any())
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            on, lr_, wd = active.view(shape), lr.view(shape), self.wd.view(shape)
            if not all_on:
                g = torch.where(on, g, 0.0)  # a frozen member's NaN gradient must not reach its state
            if self.kind == "sgd":
                if has_wd:
                    g = g.addcmul(p, wd)
                buf = self.state["buf"][name]
                if all_on:
                    buf.mul_(self.momentum.view(shape)).add_(g)
                    p.addcmul_(buf, lr_, value=-1.0)
                else:
                    buf.copy_(torch.where(on, buf * self.momentum.view(shape) + g, buf))
                    p.copy_(torch.where(on, p - lr_ * buf, p))
                continue
            b1, b2, eps = 0.9, 0.999, 1e-8
            m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
            if self.kind == "adam" and has_wd:
                g = g.addcmul(p, wd)
            step_size = lr_ / (1 - b1**self.steps)
            if all_on:
                if self.kind == "adamw" and has_wd:
                    p.mul_(1 - lr_ * wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(eps)
                p.addcmul_(m / denom, step_size, value=-1.0)
                continue
            base = p * (1 - lr_ * wd) if self.kind == "adamw" else p
            m.copy_(torch.where(on, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(on, v * b2 + (1 - b2) * g * g, v))
            denom = v.sqrt() / math.sqrt(1 - b2**self.steps) + eps
            p.copy_(torch.where(on, base - step_size * (m / denom), p))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for kind, tensors in state["state"].items():
            for k, v in tensors.items():
                self.state[kind][k].copy_(v)


def member_configs(config: dict) -> list[dict]:
    """The members' configs of a pack trial's config (``__pack__``: shared keys and members)."""
    pack = config["__pack__"]
    return [{**pack["shared"], **m} for m in pack["members"]]


def run_pack_trial(config: dict, data: Any = None, *, family: Family) -> None:
    """Ray Tune function trainable of a pack; see the module docstring."""
    from ray import tune

    sup = support(family)
    if sup is None:  # the spec check refuses this before any trial; kept as a guard
        raise RuntimeError(f"trainable {family.name} cannot be packed (no pack_support)")
    pack = config["__pack__"]
    metric, mode = pack.get("metric"), pack.get("mode", "max")
    cfgs = [resolve_config(family, c) for c in member_configs(config)]
    cfg0, n = cfgs[0], len(cfgs)
    torch.set_num_threads(max(1, int(cfg0["threads"])))
    device = resolve_device(cfg0["device"])
    reset_peak_memory(device)
    amp = runtime.resolve_amp(str(cfg0["amp"]), device)
    if amp == torch.float16:  # no per-member grad scaler: fp16 only when asked for (refused by the spec check)
        amp = None
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext

    datas, models, gens = [], [], []
    for cfg in cfgs:  # as run_trial: seed, then the trial's data, then its model
        seed = int(cfg["seed"])
        torch.manual_seed(seed)
        gens.append(torch.Generator().manual_seed(seed))
        td = family.prepare(cfg, data)
        if cfg.get("num_classes") == 0 and getattr(td, "num_classes", None):
            cfg["num_classes"] = int(td.num_classes)
        datas.append(td)
        models.append(family.build(cfg).to(device))
    params = count_params(models[0])
    model = PackedModel(models, device)
    del models
    opt = PackedOptimizer(model.params, cfgs, device)
    train_t = [torch.stack(ts) for ts in zip(*(sup.tensors(td, "train") for td in datas))]  # each (M, N, ...)
    test_t = [torch.stack(ts).to(device) for ts in zip(*(sup.tensors(td, "test") for td in datas))]
    active = torch.ones(n, dtype=torch.bool, device=device)
    last_finite: list[dict] = [{} for _ in range(n)]
    start = 0

    note: dict[str, str] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        state, note = _load_pack_checkpoint(checkpoint, device, model, opt, gens)
        if state is not None:
            active = state["active"].to(device)
            start, last_finite = int(state["epoch"]), state["last_finite"]
            if start >= int(cfg0["epochs"]) or not bool(active.any()):  # finished, not yet recorded: say so again
                tune.report({**state["report"], **note})
                return

    vstats = _vmapped(sup.train_stats, cfg0)
    vloss = _vmapped(lambda out, batch, cfg: sup.loss(out, batch, cfg), cfg0)
    vevals = _vmapped(sup.eval_stats, cfg0)
    every_s = float(cfg0["checkpoint_every_s"])  # checkpoint cadence (trainables.common.COMMON_DEFAULTS)
    last_save = time.monotonic()
    for epoch in range(start + 1, int(cfg0["epochs"]) + 1):
        lr = opt.lr_at(epoch - 1)
        members: dict[str, dict] = {}

        def diverge(i: int, error: str, members: dict = members, epoch: int = epoch, lr: torch.Tensor = lr) -> None:
            """Freeze member i; it reports its last finished epoch once, as a one-worker trial does."""
            active[i] = False
            members[str(i)] = {**last_finite[i], "epoch": epoch - 1, "params": params, "lr": float(lr[i]),
                               "diverged": 1, "error": error}  # fmt: skip

        batches = [sup.train_batches(td, cfg, g) for td, cfg, g in zip(datas, cfgs, gens)]
        sizes = [len(b) for b in batches[0]]
        order = torch.stack([torch.cat(b) for b in batches])  # (M, seen)
        xs = [torch.stack([t[m][order[m]] for m in range(n)]).to(device) for t in train_t]
        model.train(True)
        loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
        sums: dict[str, torch.Tensor] = {}
        t0, off = time.perf_counter(), 0
        for size in sizes:
            batch = [x[:, off : off + size] for x in xs]
            off += size
            with autocast():
                out = model(batch[0])
                losses = vloss(out, *batch[1:])  # (M,)
            finite = torch.isfinite(losses.detach())
            for i in torch.nonzero(active & ~finite).flatten().tolist():
                diverge(i, f"non-finite loss {float(losses[i].detach())}")
            if not bool(active.any()):
                break
            for p in model.params.values():
                p.grad = None
            torch.where(active, losses, 0.0).sum().backward()
            opt.step(active, lr)
            loss_sum += torch.where(active, losses.detach(), 0.0).double()
            with torch.no_grad():
                for k, v in vstats(_detach(out), *batch[1:]).items():
                    sums[k] = sums.get(k, 0) + v.double()
        step_time = (time.perf_counter() - t0) / max(len(sizes), 1)
        if bool(active.any()):
            model.train(False)
            with torch.no_grad(), autocast():
                esums: dict[str, torch.Tensor] = {}
                n_test = test_t[0].shape[1]
                for lo in range(0, n_test, sup.eval_batch_size):
                    tb = [t[:, lo : lo + sup.eval_batch_size] for t in test_t]
                    for k, v in vevals(model(tb[0]), *tb[1:]).items():
                        esums[k] = esums.get(k, 0) + v.double()
            cost = {"step_time_s": step_time, "peak_mem_mb": peak_memory_mb(device)}
            for i in torch.nonzero(active).flatten().tolist():
                train = sup.train_metrics(float(loss_sum[i]), len(sizes), {k: float(v[i]) for k, v in sums.items()},
                                          int(order.shape[1]))  # fmt: skip
                evals = sup.eval_metrics({k: float(v[i]) for k, v in esums.items()}, n_test)
                metrics = {"epoch": epoch, "params": params, "lr": float(lr[i]), "diverged": 0, **train, **evals, **cost}
                if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
                    diverge(i, "non-finite metric")
                    continue
                members[str(i)] = last_finite[i] = metrics
        report: dict[str, Any] = {"epoch": epoch, "members": members, **note}
        note = {}  # a checkpoint fallback is said once
        values = [m[metric] for m in members.values() if not m.get("diverged") and metric in m]
        if values:  # the pack's best member: what Tune's progress and best-trial logic see
            report[metric] = max(values) if mode == "max" else min(values)
        final = epoch == int(cfg0["epochs"]) or not bool(active.any())
        if every_s > 0 and not final and time.monotonic() - last_save < every_s:
            tune.report(report)  # inside the window: no checkpoint (a kill redoes these epochs)
            continue
        with tempfile.TemporaryDirectory() as d:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generators": [g.get_state() for g in gens],
                "active": active.cpu(),
                "epoch": epoch,
                "last_finite": last_finite,
                "report": report,
            }
            torch.save(state, os.path.join(d, "pack.pt"))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
        last_save = time.monotonic()
        if not bool(active.any()):
            return


def _load_pack_checkpoint(
    checkpoint: Any, device: torch.device, model: nn.Module, opt: Any, gens: list[torch.Generator]
) -> tuple[dict | None, dict[str, str]]:
    """Restore a pack from the newest readable of its trial's checkpoints (Tune's own first), as
    `trainables.common.load_checkpoint` does for one trial: (state, note), state None when none is
    readable (the pack starts again from epoch 1, its initial weights untouched)."""
    from trainables.common import restore_first_readable

    initial = copy.deepcopy((model.state_dict(), opt.state_dict(), [g.get_state() for g in gens]))

    def restore(d: str) -> dict:
        state = torch.load(os.path.join(d, "pack.pt"), map_location=device, weights_only=True)
        missing = {"model", "optimizer", "generators", "active", "epoch", "last_finite", "report"} - set(state)
        if missing:
            raise ValueError(f"not a pack checkpoint (missing {', '.join(sorted(missing))})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for g, gs in zip(gens, state["generators"], strict=True):
            g.set_state(gs.cpu())  # CPU generators: their state never lives on the device
        return state

    state, note = restore_first_readable(checkpoint, restore)
    if state is None:  # a partly loaded damaged checkpoint leaves nothing behind
        model.load_state_dict(initial[0])
        opt.load_state_dict(initial[1])
        for g, gs in zip(gens, initial[2]):
            g.set_state(gs)
    return state, note


def _detach(out: Any) -> Any:
    return torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, out)


def _vmapped(fn: Callable, cfg: dict) -> Callable:
    from torch.func import vmap

    return vmap(lambda out, *batch: fn(out, batch, cfg))
