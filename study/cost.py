"""Cost estimates before a run: ``study validate SPACE.yaml --cost``.

The wall time of every trial and of the whole study at the resources the spec asks for:

    trial  = TRIAL_START_S + epochs x (steps per epoch x step + evaluation + EPOCH_S)
    study  = STUDY_START_S + the makespan of the trials (or packs) over the slots that run at once

- **step**: the wall time of one training step (forward, backward, optimiser step) of the
  trial's model at its batch size, measured here by a short calibration (`time_step`: a few real
  steps of each distinct model and batch size on synthetic inputs of the family's input shape, at
  the trial's thread count), or, for a named GPU (``--cost-gpu H200``), read from the per-step
  table `benchmarks/bench_gpu.py` measured on one (``benchmarks/results/gpu.json``); a model the
  table lacks is scaled from the table's nearest model of the family by training FLOPs.
- **evaluation**: a forward pass over the test set, a third of a step's work per example.
- **packs** (``pack: N``): one trial per pack, whose step is the vmapped step of its members
  (calibrated with `trainables.packing` itself).
- **slots**: ``floor(cluster CPUs / resources.cpu)`` (and GPUs / resources.gpu when it asks for
  GPUs); trials go to the first free slot in grid order, as Tune's FIFO does.

The constants were measured with ``benchmarks/bench_cost.py`` on the reference machine
(2 cores), which also checks estimates against real runs (``benchmarks/results/cost.json``).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from study.spec.grid import grid_points
from study.spec.model import Spec

# measured per-trial and per-study overheads (benchmarks/bench_cost.py, 2 cores, local Ray)
STUDY_START_S = 8.0  # Ray start, data load in the driver, Tuner setup, tables at the end (report off)
TRIAL_START_S = 0.6  # a trial's worker start, its data preparation and model build
EPOCH_S = 0.03  # one epoch's report and checkpoint (a small model; larger state adds its save time)
SAVE_BYTES_PER_S = 400e6  # checkpoint write speed, for the state of larger models
EVAL_FRACTION = 1 / 3  # a test example costs a third of a training example (forward only)
GPU_TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu.json"
CALIBRATION_S = 0.6  # wall time spent timing one model (after warm-up), at least one step

# training-set sizes of the sources, for families whose config does not give one (n_train: 0 = all)
SOURCE_TRAIN_EXAMPLES = {
    "mnist": 60_000, "mnist-5k": 2_500, "cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257,
    "imagenet": 1_281_167,
}  # fmt: skip
SOURCE_TEST_EXAMPLES = {
    "mnist": 10_000, "mnist-5k": 2_500, "cifar10": 10_000, "cifar100": 10_000, "svhn": 26_032, "imagenet": 50_000,
}  # fmt: skip


@dataclass
class Group:
    """Trials that cost the same: one model at one batch size, epoch count and set size.

    Args:
        config: a resolved config of one of them (the first in grid order).
        shown: the keys that tell the groups apart, with their values.
        trials: how many trials (pack members) the study has in the group.
        units: Tune trials they make (packs of ``spec.pack``; the trials themselves when 1).
    """

    config: dict[str, Any]
    shown: dict[str, Any]
    trials: int = 0
    units: list[int] = field(default_factory=list)  # members per Tune trial, in grid order


@dataclass
class Estimate:
    """One group's estimate; seconds are wall seconds."""

    model: dict[str, Any]
    trials: int
    epochs: int
    steps_per_epoch: int
    step_s: float | None
    trial_s: float | None
    source: str


def train_examples(cfg: Mapping[str, Any], source: str) -> int | None:
    """Training examples of one epoch of a trial: ``n_train`` when set, share_split's
    ``train_images`` (55,000 capped at the split), else the source's training split."""
    if int(cfg.get("n_train") or 0) > 0:
        return int(cfg["n_train"])
    known = SOURCE_TRAIN_EXAMPLES.get(source)
    if "train_images" in cfg:
        n = int(cfg["train_images"] or 55_000)
        return min(n, known) if known else n
    return known


def test_examples(cfg: Mapping[str, Any], source: str) -> int:
    for key in ("n_test", "test_images"):
        if int(cfg.get(key) or 0) > 0:
            return int(cfg[key])
    return SOURCE_TEST_EXAMPLES.get(source, 0)


def trial_groups(spec: Spec) -> list[Group]:
    """The study's trials grouped by what sets their cost, in grid order, with their packs."""
    from study.models import model_keys
    from study.run.shapes import pack_size
    from trainables import get_family
    from trainables.common import resolve_config

    family = get_family(spec.trainable)
    keys = [*model_keys(spec), "batch_size", "epochs", "n_train", "train_images"]
    if spec.search.algorithm == "grid" and all(hasattr(d, "grid") for d in spec.space.values()):
        configs = [{**spec.base_config(), **p} for p in grid_points(spec)]
        per_config = spec.search.num_samples * spec.n_seeds
    else:  # sampled spaces: the covering configs of `validate`, the trials shared among them equally
        from study.spec.grid import example_configs

        configs = example_configs(spec, limit=1000, shaping=keys)
        per_config = spec.n_trials() / len(configs)
    groups: dict[str, Group] = {}
    for config in configs:
        cfg = resolve_config(family, {**config, "seed": spec.seed_list[0]})
        if cfg.get("num_classes") == 0:  # image families: the data source's number of classes
            from trainables.images import source_classes

            cfg["num_classes"] = source_classes(spec.data.source, spec.data.classes_file)
        shown = {k: cfg[k] for k in keys if cfg.get(k) is not None and (k in spec.space or k in model_keys(spec) or k == "batch_size")}
        ident = repr([(k, cfg.get(k)) for k in keys])
        g = groups.setdefault(ident, Group(cfg, shown))
        g.trials += per_config
    for g in groups.values():
        n = round(g.trials)
        g.trials = n
        # packs group a config's trials with those of every other member-key value (lr, seed): the
        # group (model, batch size) is the pack's shared part
        size = pack_size(spec, g.config) if spec.pack != 1 else 1
        g.units = [min(size, n - i) for i in range(0, n, size)]
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# calibration: real training steps on this machine


def _loss_of(out: Any) -> torch.Tensor:
    """A scalar of every float output (the step's backward reaches every used parameter)."""
    parts = []
    stack = [out]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            if o.is_floating_point():
                parts.append(o.float().mean())
        elif isinstance(o, Mapping):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.extend(v for v in vars(o).values() if isinstance(v, (torch.Tensor, list, tuple, dict)))
    return torch.stack(parts).sum()


def time_step(
    trainable: str,
    cfg: Mapping[str, Any],
    device: torch.device | str = "cpu",
    *,
    members: int = 1,
    budget_s: float = CALIBRATION_S,
    max_steps: int = 50,
    count_flops: bool = False,
) -> dict[str, Any]:
    """Seconds of one training step of `cfg`'s model at its batch size on `device` (synthetic
    inputs of the family's input shape, its precision and memory format from ``amp`` and
    ``channels_last``), after two warm-up steps; with ``members`` > 1 the packed step of that many
    members (`trainables.packing`). Returns ``{"step_s", "steps", "flops"}``; ``flops`` (with
    `count_flops`): the training FLOPs of one step, forward and backward, of every member (one
    model's, as FlopCounterMode counts them, times `members`)."""
    from trainables import get_family

    family = get_family(trainable)
    if family.input_shape is None:
        raise UserError(f"trainable {trainable}: no input_shape, so its steps cannot be timed (--cost)")
    device = torch.device(device)
    torch.manual_seed(0)
    step = _single_step(family, cfg, device) if members == 1 else _packed_step(family, cfg, device, members)
    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        one = step if members == 1 else _single_step(family, cfg, device)
        with FlopCounterMode(display=False) as counter:
            one()
        flops = int(counter.get_total_flops()) * members
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    # blocks of steps (one on a CPU, five on a GPU between synchronisations); their mean is the step
    # time on the machine as it is now, other processes' load included (`estimate` records the load)
    block = 5 if device.type == "cuda" else 1
    times: list[float] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    while len(times) * block < max_steps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(block):
            step()
        sync()
        times.append((time.perf_counter() - t0) / block)
    # the share of its cores the process got (CPU seconds per wall second per thread): < 1 under load
    share = (time.process_time() - cpu0) / max(time.perf_counter() - start, 1e-9) / torch.get_num_threads()
    return {"step_s": statistics.fmean(times), "steps": len(times) * block, "flops": flops,
            "cpu_share": min(1.0, share) if device.type == "cpu" else None}  # fmt: skip


def _single_step(family: Any, cfg: Mapping[str, Any], device: torch.device) -> Any:
    """One trial's training step as `run_trial` runs it (runtime precision and memory format)."""
    from trainables import runtime
    from trainables.common import make_optimizer

    rt = runtime.for_trial(cfg, device)
    model = rt.prepare_model(family.build(dict(cfg)).to(device))
    model.train()
    opt = make_optimizer(model, cfg)
    x = torch.rand((int(cfg["batch_size"]), *family.input_shape(cfg)), device=device)  # (B, ...)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with rt.train():
            loss = _loss_of(model(x))
        loss.backward()
        opt.step()

    return step


def _packed_step(family: Any, cfg: Mapping[str, Any], device: torch.device, members: int) -> Any:
    """A pack's training step (`trainables.packing`: vmapped model, per-member optimiser)."""
    from trainables import runtime
    from trainables.packing import PackedModel, PackedOptimizer

    rt = runtime.for_trial(cfg, device)
    packed = PackedModel([family.build(dict(cfg)) for _ in range(members)], device)
    packed.train(True)
    opt = PackedOptimizer(packed.params, [dict(cfg)] * members, device)
    x = torch.rand((members, int(cfg["batch_size"]), *family.input_shape(cfg)), device=device)  # (M, B, ...)
    active = torch.ones(members, dtype=torch.bool, device=device)
    lr = opt.lr_at(0)

    def step() -> None:
        for p in packed.params.values():
            p.grad = None
        with rt.train():
            loss = _loss_of(packed(x))
        loss.backward()
        opt.step(active, lr)

    return step


# ---------------------------------------------------------------------------------------------
# the GPU table of benchmarks/bench_gpu.py


def load_gpu_table(name: str, path: Path = GPU_TABLE) -> dict[str, Any]:
    """The measured table for GPU `name` (matched case-insensitively in its device name)."""
    if not path.is_file():
        raise UserError(
            f"--cost-gpu {name}: no measured per-step table ({path} does not exist); measure one with "
            "scripts/gpu_check.sh on that GPU"
        )
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable GPU table ({type(e).__name__}: {e})") from None
    device = str(table.get("device", ""))
    if name.lower() not in device.lower() or table.get("dry_run"):
        raise UserError(f"--cost-gpu {name}: no measured table for it ({path} holds {device or 'no device'})")
    return table


def precision_on_cuda(cfg: Mapping[str, Any]) -> str:
    """The precision label (bench_gpu's) a config trains in on a CUDA device."""
    amp = str(cfg.get("amp", "auto"))
    bf16 = amp in ("auto", "bf16")
    cl = cfg.get("channels_last", "auto") in ("auto", True)
    return {(False, False): "fp32", (True, False): "bf16", (False, True): "channels_last"}.get(
        (bf16, cl), "bf16+channels_last"
    )


def gpu_step(table: Mapping[str, Any], trainable: str, shown_model: Mapping[str, Any], cfg: Mapping[str, Any],
             flops: float | None, members: int) -> tuple[float | None, str]:  # fmt: skip
    """(step seconds, how it was found) from a GPU table: the exact model, batch size and precision,
    else scaled by FLOPs from the family's nearest measured row of that precision."""
    want = precision_on_cuda(cfg)
    rows = [r for r in table.get("steps", []) if r.get("family") == trainable]
    rows = [r for r in rows if r.get("members", 1) == members] or rows  # packs of another size: scaled
    rows = [r for r in rows if r.get("precision") == want] or rows
    for r in rows:
        same_model = all(r["config"].get(k) == v for k, v in shown_model.items())
        if same_model and r.get("batch_size") == cfg["batch_size"] and r.get("members", 1) == members:
            return float(r["step_s"]), f"measured on {table['device']}"
    scalable = [r for r in rows if r.get("flops") and flops]
    if not scalable:
        return None, f"no row for this model in the {table['device']} table"
    near = min(scalable, key=lambda r: abs(math.log(r["flops"] / flops)))
    return float(near["step_s"]) * flops / near["flops"], f"scaled by FLOPs from {near['model']} on {table['device']}"


# ---------------------------------------------------------------------------------------------
# the estimate


def slots(spec: Spec, cpus: float, gpus: float | None = None) -> int:
    """Trials (or packs) that run at once: what the cluster's CPUs allow and, with `gpus`, its GPUs
    (a spec asking for no GPU counts as one GPU per trial there)."""
    r = spec.resources
    fits = [math.floor(cpus / (r.cpu * r.workers) + 1e-9)]
    if gpus is not None:
        fits.append(math.floor(gpus / ((r.gpu or 1) * r.workers) + 1e-9))
    n = max(1, min(fits))
    return min(n, spec.search.max_concurrent) if spec.search.max_concurrent else n


def makespan(durations: list[float], n_slots: int) -> float:
    """Wall time of running `durations` in order on `n_slots` slots, each job on the first free one."""
    free = [0.0] * max(1, n_slots)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def estimate(
    spec: Spec,
    *,
    cpus: float | None = None,
    gpu: str | None = None,
    gpus: float = 1,
    table_path: Path = GPU_TABLE,
) -> dict[str, Any]:
    """The study's estimate: ``{"groups": [Estimate...], "study_s", "slots", "where", ...}``.
    `cpus`: the cluster's CPUs (default: this machine's); `gpu`: a GPU name to read the measured
    table of, with `gpus` of them."""
    from study.models import model_keys, model_size

    table = load_gpu_table(gpu, table_path) if gpu else None
    here = (table or {}).get("cpus") or os.cpu_count() or 1
    cpus = float(cpus if cpus is not None else here)
    threads = max(1, math.floor(spec.resources.cpu))
    groups = trial_groups(spec)
    shaping = model_keys(spec)
    n_slots = slots(spec, cpus, gpus if table is not None else None)
    estimates, jobs, shares = [], [], []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for g in groups:
            cfg = {**g.config, "device": "cpu"}
            steps = math.ceil((train_examples(cfg, spec.data.source) or 0) / int(cfg["batch_size"]))
            members = max(g.units) if g.units else 1
            if table is not None:
                model = {k: cfg.get(k) for k in shaping}
                _, fwd = model_size(spec.trainable, cfg)
                flops = 3 * fwd * int(cfg["batch_size"]) * members if fwd else None
                step_s, source = gpu_step(table, spec.trainable, model, cfg, flops, members)
            else:
                timed = time_step(spec.trainable, cfg, "cpu", members=members)
                step_s, source = timed["step_s"], f"calibrated here (cpu, {threads} thread{'s' if threads > 1 else ''})"
                shares.append(timed["cpu_share"])
            estimates.append(Estimate(g.shown, g.trials, int(cfg["epochs"]), steps, step_s, None, source))
    finally:
        torch.set_num_threads(previous)
    # the fixed overheads were measured on an idle machine: slowed as much as the calibration was
    slowdown = min(20.0, 1 / max(0.05, statistics.fmean(shares))) if shares else 1.0
    for g, e in zip(groups, estimates):
        members = max(g.units) if g.units else 1
        unit_s = None
        if e.step_s is not None and e.steps_per_epoch:
            eval_s = test_examples(g.config, spec.data.source) / int(g.config["batch_size"]) * e.step_s * EVAL_FRACTION
            unit_s = TRIAL_START_S * slowdown + e.epochs * (e.steps_per_epoch * e.step_s + eval_s + EPOCH_S * slowdown)
        e.trial_s = unit_s / members if unit_s is not None else None
        jobs += [(unit_s * m / members if unit_s is not None else None) for m in g.units]
    known = [j for j in jobs if j is not None]
    study_s = STUDY_START_S * slowdown + makespan(known, n_slots) if len(known) == len(jobs) and jobs else None
    where = f"{gpus:g} x {table['device']}" if table is not None else f"this machine ({cpus:g} CPUs)"
    return {
        "study": spec.name,
        "where": where,
        "resources": spec.resources.model_dump(),
        "pack": spec.pack,
        "slots": n_slots,
        "trials": sum(g.trials for g in groups),
        "tune_trials": len(jobs),
        "groups": [asdict(e) for e in estimates],
        "study_s": study_s,
        "load_avg_1m": round(os.getloadavg()[0], 1),  # the calibration's conditions
        "slowdown": round(slowdown, 2),  # 1 / the share of a core the calibration got (1: an idle machine)
    }


def format_estimate(est: Mapping[str, Any]) -> list[str]:
    """One line per group and a total."""
    here = "calibrated here" in str(est["groups"])
    load = f", calibrated at load average {est['load_avg_1m']:g} (x{est['slowdown']:g} slower than idle)" if here else ""
    lines = [f"  cost on {est['where']}: {est['slots']} at once, pack {est['pack']}{load}"]
    for g in est["groups"]:
        shown = ", ".join(f"{k}={v}" for k, v in g["model"].items())
        step = f"{g['step_s'] * 1e3:.3g} ms/step" if g["step_s"] is not None else "step n/a"
        each = _duration(g["trial_s"]) if g["trial_s"] is not None else "n/a"
        lines.append(f"  {shown}: {g['trials']} trials x {g['epochs']} epochs x {g['steps_per_epoch']} steps, "
                     f"{step}, {each} per trial ({g['source']})")  # fmt: skip
    total = _duration(est["study_s"]) if est["study_s"] is not None else "unknown (a model has no estimate)"
    lines.append(f"  total: {est['trials']} trials ({est['tune_trials']} Tune trials), about {total} wall time")
    return lines


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
