"""How one trial runs on its devices (issue 13): mixed precision, channels-last, and the
data-parallel worker side of a multi-worker trial. Family code never sees any of it.

`run_trial` asks `for_trial(cfg, device)` for a `Runtime` and routes five things through it:
the model (channels-last), the optimizer handed to ``train_epoch`` (fp16 grad scaler, DDP
gradient averaging), the train/eval contexts (autocast, batch sharding), the checkpoint it
resumes from and the reports it makes (Tune's session, or Ray Train's inside a DDP worker).

Config keys (every family, `COMMON_DEFAULTS`):

- ``amp``: ``auto`` (bf16 autocast on a CUDA device that supports it, else fp16 with a grad
  scaler; off on a CPU), ``off``, ``bf16`` (autocast to bfloat16, no scaler needed) or ``fp16``
  (autocast to float16 with `torch.amp.GradScaler`: the loss is scaled through a hook that
  `check_finite` registers on it, steps with inf/NaN gradients are skipped, the scale adapts).
- ``channels_last``: ``auto`` (on for CUDA), ``true`` or ``false``: model and 4-D inputs in
  NHWC memory format (faster convolutions on tensor cores; results equal up to rounding).

Data parallel (`trainables.ddp`): inside a Ray Train worker, `Runtime.shard` makes
`iterate_batches` hand every worker its slice of each global batch (so the spec's batch size is
the global batch), `check_finite` agrees across workers (every worker stops at the same step),
the optimizer proxy averages gradients over the workers before each step (what
``DistributedDataParallel`` does, without wrapping the family's model, whose attributes the
families use), training metrics are averaged over workers, test metrics are rank 0's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class Shard:
    """This worker's place among `world` data-parallel workers (set while ``train_epoch`` runs)."""

    rank: int
    world: int


_SHARD: Shard | None = None  # read by trainables.common.iterate_batches / check_finite
_SCALER: torch.amp.GradScaler | None = None  # read by trainables.common.check_finite (fp16 loss scaling)


def shard_batches(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """This worker's slices of the global batches (`iterate_batches` under a `Shard`): batch b gives
    ``b.tensor_split(world)[rank]``; a batch with fewer examples than workers is dropped by all."""
    s = _SHARD
    if s is None:
        return batches
    return [b.tensor_split(s.world)[s.rank] for b in batches if len(b) >= s.world]


def any_worker(flag: bool) -> bool:
    """True if `flag` is True on any data-parallel worker (a collective; `flag` itself otherwise)."""
    if _SHARD is None:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def scale_loss(loss: torch.Tensor) -> None:
    """fp16: multiply the gradient leaving `loss` by the grad scaler's scale (loss scaling)."""
    if _SCALER is not None and loss.requires_grad:
        loss.register_hook(_SCALER.scale)


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
        """Around ``train_epoch``: autocast, loss scaling, this worker's shard of every batch."""
        global _SHARD, _SCALER
        saved = _SHARD, _SCALER
        _SHARD = Shard(self.rank, self.world) if self.world > 1 else None
        _SCALER = self.scaler
        try:
            with self._autocast():
                yield
        finally:
            _SHARD, _SCALER = saved

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


_WORKER: Any = None  # set by trainables.ddp in a Ray Train worker process


def for_trial(cfg: Mapping[str, Any], device: torch.device) -> Runtime:
    """The runtime of a trial with config `cfg` on `device` (a DDP worker's when inside one)."""
    worker = _WORKER
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
