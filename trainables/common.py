"""The one contract every trainable follows, and the training loop that enforces it.

A study family (one module in ``trainables/``) provides a `Family`:

- ``defaults``: every config key it understands, with its default (units in comments there).
  Together with `COMMON_DEFAULTS` this is the whole config; an unknown key is an error.
- ``load_data(source, root)``: the study's raw data (``sources``: the names it reads), loaded once in the driver and shipped to
  trials through the object store (``tune.with_parameters``). Never through the config.
- ``prepare(config, data)``: per-trial tensors derived deterministically from the config
  (pairs, transforms, subsets). Returns any object ``train_epoch``/``evaluate`` understand.
- ``build(config)``: the ``nn.Module``.
- ``train_epoch(model, optimizer, trial_data, config, generator, device)``: one epoch; returns
  metrics (at least ``train_loss``); calls `check_finite` on each loss so a diverging trial
  raises `Diverged`, and `backward(loss)` instead of ``loss.backward()`` (fp16 loss scaling). Batches come from `iterate_batches` and metrics are means over the
  examples the epoch iterated (a data-parallel worker iterates its share; `trainables.runtime`).
- ``evaluate(model, trial_data, config, device)``: test metrics (``test_acc``, ...); the config
  holds ``__epoch__``, the epoch just trained (1-based), for metrics computed only at the end.
- ``check(config, data)`` (optional): cheap validation of one config, before any trial starts
  (``data`` is None in ``study validate``); raises `UserError` (`ConfigError` for one key's rule).
- ``metrics``: every metric ``train_epoch``/``evaluate`` can report, with what it means
  (`core.metrics.Metric`: direction, unit, deterministic); ``metric_patterns``: regular
  expressions for names that depend on the config (the image families' ``test_acc_scale_<factor>``),
  each with its `Metric`. `RUN_METRICS` (what `run_trial` adds: ``epoch``, ``lr``, ``diverged``,
  ``params``, ``step_time_s``, ``peak_mem_mb``) are part of every family's ``metrics``. A spec's
  ``metric`` and its ``paper:`` rows must name one of them (`Family.metric`); the contract test
  checks that every metric a variant reports is declared, with a plausible unit.
- ``inert_keys(config)`` (optional): the config keys that have no effect in that config (WSMS
  ``ms`` with ``stages: 1``): configurations differing only in them are the same experiment, and
  the statistics count them once per seed. `COMMON_INERT` adds the common keys' cases
  (``momentum`` without SGD, ``lr_gamma`` without milestones).
- ``model_keys`` and ``input_shape(config)``: the config keys that shape the model, and one
  example's input shape, for ``study validate --models`` (parameter and FLOP counts, no data).

`run_trial` is the Ray Tune function trainable: it seeds, builds, resumes from
``tune.get_checkpoint()``, and every epoch reports metrics (plus ``epoch``, ``params``, ``lr``,
``diverged``, and the platform's cost metrics ``step_time_s``: mean wall time of one optimiser
step in the epoch's training pass, and ``peak_mem_mb``: peak memory of the trial so far, CUDA's
max allocated on a GPU, the process's resident-set high-water mark on a CPU) with a
``tune.Checkpoint``. A diverging trial reports its last finite metrics
with ``diverged=1`` and stops; the study goes on. Metric names shared across studies:
``train_loss``, ``test_loss``, ``test_acc``, ``epoch``, ``params``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError
from torch import nn

from core import metrics as M
from core.errors import ConfigError, UserError, short  # noqa: F401 (ConfigError re-exported)
from core.metrics import Metric
from trainables import runtime  # precision, channels-last, data-parallel worker side

COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,  # controls init, data order and data sampling (pairs, transforms)
    "epochs": 10,  # number of passes over the training set
    "batch_size": 64,  # examples per optimiser step
    "optimizer": "sgd",  # sgd | adam | adamw
    "lr": 0.01,  # initial learning rate
    "momentum": 0.0,  # SGD momentum (ignored by adam/adamw)
    "weight_decay": 0.0,  # L2 penalty passed to the optimiser
    "lr_milestones": [],  # epochs after which lr is multiplied by lr_gamma
    "lr_gamma": 0.1,  # lr factor at each milestone
    "device": "auto",  # auto (cuda if available) | cpu | cuda | cuda:N
    "threads": 1,  # torch intra-op threads per trial (the runner sets it from resources.cpu)
    # trainables/runtime.py: precision and memory format, off on a CPU unless asked for
    "amp": "auto",  # auto (bf16 on CUDA, else fp16 + grad scaler; off on CPU) | off | bf16 | fp16
    "channels_last": "auto",  # auto (on for CUDA) | true | false: NHWC model and 4-D inputs
    # checkpoint cadence: 0 = every epoch; N > 0 = at most every N seconds and at the last epoch
    # (tiny trials: a kill redoes at most N seconds of training; every epoch is still reported)
    "checkpoint_every_s": 0.0,
}
OPTIMIZERS = ("sgd", "adam", "adamw")
PLATFORM_METRICS = tuple(M.PLATFORM_METRICS)  # names of the cost metrics run_trial reports for every family

# What run_trial reports beside the family's own metrics, for every family.
RUN_METRICS: dict[str, Metric] = {
    **M.PLATFORM_METRICS,  # step_time_s (seconds), peak_mem_mb (MiB), params (count)
    "epoch": M.EPOCH,  # epochs finished
    "lr": Metric("min", "ratio", deterministic=True),  # the learning rate of the epoch (set by the schedule)
    "diverged": Metric("min", "fraction"),  # 1 when the trial's loss became NaN/inf, else 0
}

# Types and rules of the common keys; every other key must have the type of its family default
# (bool, int, float, str, list; null defaults are checked by the family's `check`). Strict: no
# string is taken for a number, no 2.5 for an int, no "yes" for a bool.
_PosInt = Annotated[StrictInt, Field(ge=1)]
_Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int is fine; nan/inf are not
COMMON_TYPES: dict[str, Any] = {
    "seed": Annotated[StrictInt, Field(ge=0)],
    "epochs": _PosInt,
    "batch_size": _PosInt,
    "optimizer": Literal[OPTIMIZERS],
    "lr": Annotated[_Float, Field(gt=0)],
    "momentum": Annotated[_Float, Field(ge=0, lt=1)],
    "weight_decay": Annotated[_Float, Field(ge=0)],
    "lr_milestones": list[_PosInt],
    "lr_gamma": Annotated[_Float, Field(gt=0)],
    "device": Annotated[StrictStr, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")],
    "threads": _PosInt,
    "amp": Literal["auto", "off", "bf16", "fp16"],
    "channels_last": Literal["auto"] | StrictBool,
    "checkpoint_every_s": Annotated[_Float, Field(ge=0)],
}
_TYPE_OF_DEFAULT = {bool: StrictBool, int: StrictInt, float: _Float, str: StrictStr, list: list}




class Diverged(Exception):
    """Raised inside an epoch when the loss is NaN or infinite."""


def check_finite(loss: torch.Tensor) -> None:
    """Raise `Diverged` if a loss is NaN or inf (call once per batch); data-parallel workers agree,
    so every worker stops at the same step."""
    bad = not torch.isfinite(loss.detach()).all()
    if runtime.any_worker(bad):
        raise Diverged(f"non-finite loss {loss.item()}" if bad else "non-finite loss on another worker")


backward = runtime.backward  # a family's ``loss.backward()``: scaled by the fp16 grad scaler when there is one


def common_inert_keys(cfg: Mapping[str, Any]) -> frozenset[str]:
    """The `COMMON_DEFAULTS` keys without effect in `cfg`: ``momentum`` unless the optimizer is SGD;
    ``lr_gamma`` and ``lr_milestones`` when no milestone falls before the trial's last epoch (the
    lr changes after epoch m, so a milestone m >= epochs never applies)."""
    inert = set()
    if cfg.get("optimizer", COMMON_DEFAULTS["optimizer"]) != "sgd":
        inert.add("momentum")
    epochs = int(cfg.get("epochs", COMMON_DEFAULTS["epochs"]))
    if not any(int(m) < epochs for m in cfg.get("lr_milestones", ())):
        inert |= {"lr_gamma", "lr_milestones"}
    return frozenset(inert)


def no_inert_keys(cfg: Mapping[str, Any]) -> frozenset[str]:
    """The default `Family.inert_keys` of a family: every key of its own has an effect."""
    return frozenset()


class _InertKeys:
    """`Family.inert_keys` as callers see it: the config completed with the family's defaults, then
    the family's own inert keys and `common_inert_keys`."""

    def __init__(self, own: Callable[[Mapping[str, Any]], frozenset[str]], defaults: Mapping[str, Any]) -> None:
        self.own, self.defaults = own, dict(defaults)
        self.__doc__ = own.__doc__

    def __call__(self, config: Mapping[str, Any]) -> frozenset[str]:
        cfg = {**self.defaults, **{k: v for k, v in config.items() if not k.startswith("__")}}
        return frozenset(self.own(cfg)) | common_inert_keys(cfg)


@dataclass(frozen=True)
class Family:
    """A study family: see the module docstring for the contract of each field."""

    name: str
    defaults: Mapping[str, Any]
    load_data: Callable[..., Any]  # load_data(source, root, **options); options: data.classes_file if set
    prepare: Callable[[dict, Any], Any]
    build: Callable[[dict], nn.Module]
    train_epoch: Callable[..., dict]
    evaluate: Callable[..., dict]
    check: Callable[[dict, Any], Any] | None = None  # check(config, data or None): raise UserError early
    # every metric some config reports -> its meaning; RUN_METRICS are added by __post_init__
    metrics: Mapping[str, Metric] = field(
        default_factory=lambda: {"train_loss": M.LOSS, "test_loss": M.LOSS, "test_acc": M.ACCURACY}
    )
    smoke: Mapping[str, Any] = field(default_factory=dict)  # config overrides for `study run --smoke` (small data)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # named configs, one per net, for tests
    doc: str = ""
    sources: tuple[str, ...] | None = None  # data.source values `load_data` reads (None: every source)
    # regexes of config-dependent metric names (test_acc_scale_0.5) -> their meaning
    metric_patterns: Mapping[str, Metric] = field(default_factory=dict)
    model_keys: tuple[str, ...] = ()  # config keys that shape the model (`study validate --models`)
    input_shape: Callable[[dict], tuple[int, ...]] | None = None  # one example's input shape, e.g. (3, 32, 32)
    # inert_keys(config): the keys without effect in that config (the family's and `common_inert_keys`)
    inert_keys: Callable[[Mapping[str, Any]], frozenset[str]] = no_inert_keys

    def __post_init__(self) -> None:
        declared = {**RUN_METRICS, **self.metrics}
        for name, m in (*declared.items(), *self.metric_patterns.items()):
            if not isinstance(m, Metric):
                raise TypeError(f"family {self.name}: metric {name!r} must be declared as a core.metrics.Metric")
        object.__setattr__(self, "metrics", declared)
        object.__setattr__(self, "metric_patterns", dict(self.metric_patterns))
        if not isinstance(self.inert_keys, _InertKeys):
            object.__setattr__(self, "inert_keys", _InertKeys(self.inert_keys, self.all_defaults))

    @property
    def all_defaults(self) -> dict[str, Any]:
        return {**COMMON_DEFAULTS, **self.defaults}

    def metric(self, name: str) -> Metric | None:
        """What the metric `name` means: its declaration by exact name, else by the first pattern
        it matches; None when no config of this family reports it."""
        if name in self.metrics:
            return self.metrics[name]
        for pattern, m in self.metric_patterns.items():
            if re.fullmatch(pattern, name):
                return m
        return None

    def knows_metric(self, name: str) -> bool:
        """True if some config of this family reports `name` (`metrics` or `metric_patterns`)."""
        return self.metric(name) is not None

    def semantics(self, names: Iterable[str]) -> dict[str, Metric]:
        """The meaning of each of `names` (e.g. the metrics a trial reported) that the family
        declares; other names (``error``, notes) are left out."""
        out = {}
        for name in names:
            m = self.metric(name)
            if m is not None:
                out[name] = m
        return out


@cache
def _adapter(key: str, default_type: type) -> TypeAdapter | None:
    """The validator of a key: its `COMMON_TYPES` entry, else the type of its default."""
    kind = COMMON_TYPES.get(key, _TYPE_OF_DEFAULT.get(default_type))
    return TypeAdapter(kind) if kind is not None else None


def resolve_config(family: Family, config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown keys rejected with the list of known ones; every value checked
    against `COMMON_TYPES` or the type of its default (`ConfigError`, one line)."""
    known = family.all_defaults
    unknown = sorted(k for k in config if k not in known and not k.startswith("__"))
    if unknown:
        raise UserError(
            f"trainable {family.name}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    # numpy scalars (Tune's samplers return them) as plain Python values
    given = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items() if not k.startswith("__")}
    cfg = {**known, **given}
    for key, value in cfg.items():
        adapter = _adapter(key, type(known[key]))
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            err = e.errors()[0]
            where = "".join(f"[{i}]" for i in err["loc"])  # the item of a list, if any
            raise ConfigError(family.name, key + where, f"{err['msg']} (got {short(value)})") from None
    return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), float(cfg["lr"]), float(cfg["weight_decay"])
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd)
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over n examples, shuffled by `generator` (None keeps the order)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return runtime.shard_batches(list(order.split(int(batch_size))))  # a data-parallel worker's slices


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (`peak_memory_mb`) for this trial."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the resident-set high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: CUDA max allocated on a GPU, else the process's peak
    resident set (VmHWM; getrusage's lifetime peak where /proc is missing), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer:
    """Mean wall time of an optimiser step over one training pass: counts ``optimizer.step`` calls
    (a post-step hook) and divides the pass's wall time (CUDA synchronised) by them."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.steps, self.device = 0, device
        self._handle = optimizer.register_step_post_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.steps += 1

    def __enter__(self) -> StepTimer:
        import time

        self.steps, self._t0 = 0, time.perf_counter()
        return self

    def __exit__(self, *_: Any) -> None:
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0

    @property
    def step_time_s(self) -> float:
        return self.seconds / self.steps if self.steps else math.nan


def run_trial(config: dict, data: Any = None, *, family: Family, seeds: list[int] | None = None) -> None:
    """Ray Tune function trainable implementing the contract (see module docstring).

    `seeds` maps Ray's ``__trial_index__`` (set by ``tune.search.Repeater``) to a seed.
    """

    config = dict(config)
    if seeds is not None and "__trial_index__" in config:
        config["seed"] = seeds[int(config["__trial_index__"])]
    cfg = resolve_config(family, config)
    torch.set_num_threads(max(1, int(cfg["threads"])))
    device = resolve_device(cfg["device"])
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    reset_peak_memory(device)
    trial_data = family.prepare(cfg, data)
    if cfg.get("num_classes") == 0 and getattr(trial_data, "num_classes", None):  # 0: the data's own
        cfg["num_classes"] = int(trial_data.num_classes)
    rt = runtime.for_trial(cfg, device)  # precision, channels-last, data-parallel worker
    model = rt.prepare_model(family.build(cfg).to(device))
    params = count_params(model)
    optimizer = make_optimizer(model, cfg)
    timer = StepTimer(optimizer, device)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[int(m) for m in cfg["lr_milestones"]], gamma=float(cfg["lr_gamma"])
    )

    start, last_finite, note = 0, {}, {}
    checkpoint = rt.get_checkpoint()
    if checkpoint is not None:
        start, last_finite, note = load_checkpoint(
            checkpoint, device, model, optimizer, scheduler, generator, extra=rt.load_state_dict
        )
        if start >= int(cfg["epochs"]):  # finished but not yet recorded as finished: say so again
            rt.report({**last_finite, **note})
            return

    every_s = float(cfg["checkpoint_every_s"]) if rt.world == 1 else 0.0  # data-parallel: every epoch
    last_save = time.monotonic()
    for epoch in range(start + 1, int(cfg["epochs"]) + 1):
        lr = optimizer.param_groups[0]["lr"]
        # what this epoch reports if it diverges: the last finished epoch, with its (finite) metrics
        diverged = {**last_finite, "epoch": epoch - 1, "params": params, "lr": lr, "diverged": 1}
        model.train()
        try:
            with timer, rt.train():
                train_metrics = family.train_epoch(model, rt.optimizer(optimizer), trial_data, cfg, generator, device)
            train_metrics = rt.reduce_train(train_metrics)
            check_finite(torch.tensor(float(train_metrics["train_loss"])))
        except Diverged as e:
            rt.report({**diverged, "error": str(e), **note})
            return
        scheduler.step()
        model.eval()
        with torch.no_grad(), rt.eval():
            eval_metrics = rt.from_rank0(family.evaluate(model, trial_data, {**cfg, "__epoch__": epoch}, device))
        cost = {"step_time_s": timer.step_time_s, "peak_mem_mb": peak_memory_mb(device)}
        if not math.isfinite(cost["step_time_s"]):  # an epoch without an optimiser step
            del cost["step_time_s"]
        metrics = {"epoch": epoch, "params": params, "lr": lr, "diverged": 0, **train_metrics, **eval_metrics, **cost}
        metrics = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
            rt.report({**diverged, "error": "non-finite metric", **note})
            return
        last_finite = metrics
        if every_s > 0 and epoch < int(cfg["epochs"]) and time.monotonic() - last_save < every_s:
            rt.report({**metrics, **note})  # inside the window: no checkpoint (a kill redoes these epochs)
            note = {}
            continue
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "metrics": metrics,
            **rt.state_dict(),
        }
        save_checkpoint(state, {**metrics, **note}, report=rt.report)
        last_save = time.monotonic()
        note = {}


# Checkpoints: one `state.pt` per epoch holding tensors and plain values only (state dicts, RNG
# states as uint8 tensors, the epoch, the metrics), read with torch.load(weights_only=True): a file
# in the study directory can never run code in a trial (the README's trust boundary).
CHECKPOINT_FILE = "state.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "generator", "torch_rng", "epoch", "metrics")
RESTORE_NOTE = "restore_note"  # result key: the trial's one line about an unreadable checkpoint
DISK_WAIT_S = float(os.environ.get("STUDY_DISK_WAIT_S", "120"))  # how long a trial waits for space


def save_checkpoint(state: dict, metrics: dict, report: Callable[..., None] | None = None) -> None:
    """Report `metrics` with a checkpoint of `state`. When the disk is full the trial waits (up to
    `DISK_WAIT_S`, retrying every 2 s) instead of failing: the driver sees the full storage, stops
    the study and says so, and the trial resumes from its last checkpoint when the study is rerun."""
    from ray import tune

    from core.errors import is_disk_full

    deadline = time.monotonic() + DISK_WAIT_S
    while True:
        try:
            with tempfile.TemporaryDirectory() as d:
                torch.save(state, os.path.join(d, CHECKPOINT_FILE))
                (report or tune.report)(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            return
        except Exception as e:
            if not is_disk_full(e) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def read_checkpoint(path: str, device: torch.device) -> dict:
    """`state.pt` of a checkpoint directory, with weights_only=True; raises on anything unreadable
    (truncated, not a torch file, code in the pickle, keys missing)."""
    state = torch.load(os.path.join(path, CHECKPOINT_FILE), map_location=device, weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"not a trial checkpoint (missing {', '.join(missing)})")
    if not isinstance(state["epoch"], int) or state["epoch"] < 0 or not isinstance(state["metrics"], dict):
        raise ValueError("not a trial checkpoint (bad epoch or metrics)")
    return state


def _checkpoint_candidates(checkpoint: Any) -> list[str]:
    """The checkpoint Tune restores from first, then the trial's other checkpoints, newest first."""
    import pyarrow.fs

    path = checkpoint.path.rstrip("/")
    parent = path.rsplit("/", 1)[0]
    if not parent.rsplit("/", 1)[-1].startswith("trial_"):
        # not in a trial directory (a data-parallel worker's copy under /tmp): its siblings are
        # other processes' files, never candidates (the trial's driver chose among the trial's own)
        return [path]
    try:
        infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return [path]
    others = [
        i.path for i in infos
        if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_") and i.path != path
    ]  # fmt: skip
    return [path, *sorted(others, reverse=True)]


def load_checkpoint(
    checkpoint: Any,
    device: torch.device,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    generator: Any,
    extra: Callable[[dict], None] | None = None,
) -> tuple[int, dict, dict]:
    """Restore the trial's state from `checkpoint` or, when that one cannot be read, from the newest
    readable of its other checkpoints, or else start again from scratch. Returns (epoch, metrics,
    note): `note` is ``{RESTORE_NOTE: one line}`` when a fallback was taken (the driver prints it)."""
    initial = copy.deepcopy(
        (model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), generator.get_state(),
         torch.get_rng_state())
    )  # fmt: skip

    def restore(d: str) -> dict:
        state = read_checkpoint(d, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"].cpu())  # map_location moved it to the device
        torch.set_rng_state(state["torch_rng"].cpu())
        if extra is not None:  # entries beyond the contract's (the grad scaler)
            extra(state)
        return state

    state, note = restore_first_readable(checkpoint, restore)
    if state is not None:
        return int(state["epoch"]), dict(state["metrics"]), note
    model.load_state_dict(initial[0])
    optimizer.load_state_dict(initial[1])
    scheduler.load_state_dict(initial[2])
    generator.set_state(initial[3])
    torch.set_rng_state(initial[4])
    return 0, {}, note


def restore_first_readable(checkpoint: Any, restore: Callable[[str], dict]) -> tuple[dict | None, dict]:
    """`restore(local directory)` on the trial's checkpoints, Tune's own first, then the older ones
    newest first, until one does not raise. Returns (its state, note), or (None, note) when none
    could be read; `note` is ``{RESTORE_NOTE: one line}`` whenever a fallback was taken. One
    mechanism for single, packed and data-parallel trials."""
    from ray import tune

    failed: list[str] = []
    for path in _checkpoint_candidates(checkpoint):
        name = path.rsplit("/", 1)[-1]
        try:
            with tune.Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as d:
                state = restore(d)
        except Exception as e:  # noqa: BLE001 - any unreadable file: try the next one
            reason = " ".join(str(e).split())[:120] or "unreadable"
            failed.append(f"{name} ({type(e).__name__}: {reason})")
            continue
        if not failed:
            return state, {}
        return state, {RESTORE_NOTE: f"checkpoint {failed[0]} cannot be read; resumed from {name} (epoch {state['epoch']})"}
    return None, {RESTORE_NOTE: f"checkpoint {failed[0]} cannot be read and no other is readable; restarted from epoch 1"}
