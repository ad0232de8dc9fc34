"""How one trial runs on its devices: mixed precision, channels-last, and the data-parallel
worker side of a multi-worker trial. Family code sees only `backward` (and `iterate_batches`).

`run_trial` asks `for_trial(cfg, device)` for a `Runtime` and routes five things through it:
the model (channels-last), the optimizer handed to ``train_epoch`` (fp16 grad scaler, DDP
gradient averaging), the train/eval contexts (autocast, batch sharding), the checkpoint it
resumes from and the reports it makes (Tune's session, or Ray Train's inside a DDP worker).

Config keys (every family, `COMMON_DEFAULTS`):

- ``amp``: ``auto`` (bf16 autocast on a CUDA device that supports it, else fp16 with a grad
  scaler; off on a CPU), ``off``, ``bf16`` (autocast to bfloat16, no scaler needed) or ``fp16``
  (autocast to float16 with `torch.amp.GradScaler`: a family's training step calls
  ``backward(loss)``, which scales the loss by the current scale before back-propagating; steps
  with inf/NaN gradients are skipped, the scale adapts).
- ``channels_last``: ``auto`` (on for CUDA), ``true`` or ``false``: model and 4-D inputs in
  NHWC memory format (faster convolutions on tensor cores; results equal up to rounding).

Data parallel (`trainables.ddp`): inside a Ray Train worker, the runtime's `Shard` makes
`iterate_batches` hand every worker its slice of each global batch (so the spec's batch size is
the global batch), `check_finite` agrees across workers (every worker stops at the same step),
the optimizer proxy averages gradients over the workers before each step (what
``DistributedDataParallel`` does, without wrapping the family's model, whose attributes the
families use), training metrics are averaged over workers, test metrics are rank 0's.

State: nothing is a module global. What the training pass in progress needs (this worker's
`Shard`, the fp16 grad scaler) is a `contextvars.ContextVar` set by `Runtime.train` for the
duration of ``train_epoch`` and read through `current_pass`; the Ray Train worker session is
another, set by `trainables.ddp` through `worker_session` and read by `for_trial`
(`current_worker`). Outside those contexts both read as "one worker, full precision".
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class Shard:
    """This worker's place among `world` data-parallel workers (set while ``train_epoch`` runs)."""

    rank: int
    world: int


@dataclass(frozen=True)
class Pass:
    """What the training pass in progress needs: this worker's shard (None: one worker) and the
    fp16 grad scaler (None: no loss scaling)."""

    shard: Shard | None = None
    scaler: torch.amp.GradScaler | None = None


_PASS: ContextVar[Pass | None] = ContextVar("trainables.runtime.pass", default=None)
_NO_PASS = Pass()


def current_pass() -> Pass:
    """The training pass running in this context (`Runtime.train`); outside one: one worker, no scaler."""
    return _PASS.get() or _NO_PASS


@contextlib.contextmanager
def training_pass(shard: Shard | None = None, scaler: torch.amp.GradScaler | None = None) -> Iterator[Pass]:
    """Run the body as (part of) a training pass with this shard and scaler (`Runtime.train`; tests)."""
    now = Pass(shard if shard is not None and shard.world > 1 else None, scaler)
    token = _PASS.set(now)
    try:
        yield now
    finally:
        _PASS.reset(token)


def shard_batches(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """This worker's slices of the global batches (`iterate_batches` under a `Shard`): batch b gives
    ``b.tensor_split(world)[rank]``; a batch with fewer examples than workers is dropped by all."""
    s = current_pass().shard
    if s is None:
        return batches
    return [b.tensor_split(s.world)[s.rank] for b in batches if len(b) >= s.world]


def any_worker(flag: bool) -> bool:
    """True if `flag` is True on any data-parallel worker (a collective; `flag` itself otherwise)."""
    if current_pass().shard is None:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, with the loss scaled by the fp16 grad scaler of the pass (if any): the
    one call a family's training step makes instead of ``loss.backward()``."""
    scaler = current_pass().scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` value on `device` (None: full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # auto on CUDA


def resolve_channels_last(value: Any, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


def _to_channels_last(_module: nn.Module, args: tuple) -> tuple:
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4 else a
        for a in args
    )


class _Optimizer:
    """What ``train_epoch`` gets as its optimizer: ``step`` averages gradients over DDP workers,
    then steps through the grad scaler (fp16) or directly; everything else is the optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, runtime: Runtime) -> None:
        self._opt, self._rt = optimizer, runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opt, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        if self._rt.world > 1:
            average_gradients(self._opt, self._rt.world)
        if self._rt.scaler is not None:
            out = self._rt.scaler.step(self._opt)
            self._rt.scaler.update()
            return out
        return self._opt.step(closure) if closure is not None else self._opt.step()


def average_gradients(optimizer: torch.optim.Optimizer, world: int) -> None:
    """All-reduce every gradient (one flat buffer per dtype and device) and divide by `world`."""
    import torch.distributed as dist

    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for same in groups.values():
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@dataclass
class Runtime:
    """One trial's precision, memory format and (in a DDP worker) place among its workers."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world: int = 1
    worker: Any = None  # trainables.ddp.WorkerSession inside a Ray Train worker
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
            self.scaler.scale(torch.ones((), device=self.device))  # creates the scale tensor

    # model and optimizer -----------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            model.register_forward_pre_hook(_to_channels_last)
        return model

    def optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """The optimizer handed to ``train_epoch`` (the real one when nothing is to be done)."""
        return _Optimizer(optimizer, self) if (self.world > 1 or self.scaler is not None) else optimizer

    # contexts ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @contextlib.contextmanager
    def train(self) -> Iterator[None]:
        """Around ``train_epoch``: autocast, loss scaling (`backward`), this worker's shard of every batch."""
        with training_pass(Shard(self.rank, self.world), self.scaler), self._autocast():
            yield

    @contextlib.contextmanager
    def eval(self) -> Iterator[None]:
        """Around ``evaluate``: autocast (every worker evaluates the whole test set)."""
        with self._autocast():
            yield

    # metrics -------------------------------------------------------------------------------
    def reduce_train(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Training metrics (means over the examples a worker saw) averaged over the workers."""
        metrics = dict(metrics)
        if self.world == 1:
            return metrics
        import torch.distributed as dist

        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)))
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {**metrics, **{k: float(v) / self.world for k, v in zip(keys, t.tolist())}}

    def from_rank0(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Test metrics as rank 0 computed them (so every worker takes the same decisions)."""
        if self.world == 1:
            return dict(metrics)
        import torch.distributed as dist

        box = [dict(metrics)]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # checkpoints and reports -------------------------------------------------------------
    def get_checkpoint(self) -> Any:
        if self.worker is not None:
            return self.worker.get_checkpoint()
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint: Any = None) -> None:
        if self.worker is not None:
            self.worker.report(metrics, checkpoint=checkpoint)
            return
        from ray import tune

        tune.report(metrics, checkpoint=checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """Extra checkpoint entries (the grad scaler's scale and growth tracker)."""
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


_WORKER: ContextVar[Any] = ContextVar("trainables.runtime.worker", default=None)


def current_worker() -> Any:
    """The Ray Train worker session this trial runs in (`trainables.ddp.WorkerSession`), else None."""
    return _WORKER.get()


@contextlib.contextmanager
def worker_session(worker: Any) -> Iterator[None]:
    """Run the body (`run_trial`) as data-parallel worker `worker` (`trainables.ddp.worker_loop`)."""
    token = _WORKER.set(worker)
    try:
        yield
    finally:
        _WORKER.reset(token)


def for_trial(cfg: Mapping[str, Any], device: torch.device) -> Runtime:
    """The runtime of a trial with config `cfg` on `device` (a DDP worker's when inside one)."""
    worker = current_worker()
    return Runtime(
        device=device,
        amp_dtype=resolve_amp(str(cfg.get("amp", "off")), device),
        channels_last=resolve_channels_last(cfg.get("channels_last", False), device),
        rank=worker.rank if worker is not None else 0,
        world=worker.world if worker is not None else 1,
        worker=worker,
    )


def checkpoint_bytes(directory: str) -> dict[str, bytes]:
    """Every file of a checkpoint directory (flat), as bytes."""
    out = {}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def write_checkpoint(files: Mapping[str, bytes], directory: str | None = None) -> str:
    """Write `checkpoint_bytes` output into `directory` (a new temporary one if None)."""
    directory = directory or tempfile.mkdtemp(prefix="ckpt-")
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory
