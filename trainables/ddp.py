"""Many devices per trial: a trial with ``resources.workers`` > 1 trains data-parallel
on that many Ray Train workers (``TorchTrainer``), inside the Tune study.

How Ray 2.60 combines Train and Tune (Train V2, on by default; ``ray/train/v2``): passing a
Trainer to the Tuner is deprecated, the supported way is a Tune *function trainable* that builds
a ``TorchTrainer`` and calls ``fit()`` ("train driver"); the Train controller is a 0-CPU actor on
the driver's node and the workers take the ``ScalingConfig``'s resources. That is
`run_ddp_trial`, the Tune trainable of such a study.

What stays as in a one-worker trial:

- every worker runs the same contract loop, `trainables.common.run_trial`, with a
  `trainables.runtime.Runtime` that knows its rank (sharded global batches, gradients averaged
  before each step, divergence agreed, metrics reduced; see that module);
- the trial's metrics and checkpoints are Tune's, one report per epoch: rank 0 hands each
  epoch's metrics and checkpoint files to the driver through a Ray queue (one item at a time)
  and the driver calls ``tune.report`` with a ``tune.Checkpoint`` in the trial directory,
  exactly as a one-worker trial does (Train's own reports carry the metrics only, so Train
  stores no second copy of the checkpoints);
- resume: the driver reads ``tune.get_checkpoint()`` and gives its files to every worker, which
  load it where `run_trial` would. A failed or killed run is retried by Tune (``max_failures``)
  or by rerunning the study, from the last checkpoint; the Train run itself does not retry
  (``FailureConfig(max_failures=0)``), so there is one retry policy.

The global batch is the spec's ``batch_size``: each step, worker r trains on slice r of the
batch a one-worker trial would use (`trainables.runtime.shard_batches`), and the averaged
gradient is that of the whole batch (up to rounding; BatchNorm statistics are per worker, as in
``DistributedDataParallel`` without SyncBatchNorm).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from trainables import runtime

POLL_S = 0.5  # how often the driver looks for a report while the workers train


@dataclass
class WorkerSession:
    """A Ray Train worker's side of the trial (`trainables.runtime.Runtime.worker`)."""

    rank: int
    world: int
    queue: Any  # ray.util.queue.Queue to the driver (rank 0 puts)
    checkpoint_files: dict[str, bytes] | None

    def get_checkpoint(self) -> Any:
        if not self.checkpoint_files:
            return None
        from ray import tune

        return tune.Checkpoint.from_directory(runtime.write_checkpoint(self.checkpoint_files))

    def report(self, metrics: dict, checkpoint: Any = None) -> None:
        import ray.train

        if self.rank == 0:
            files = None
            if checkpoint is not None:
                with checkpoint.as_directory() as d:
                    files = runtime.checkpoint_bytes(d)
            self.queue.put((metrics, files))
        ray.train.report(metrics)


def worker_loop(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: the contract loop with this worker's runtime."""
    import ray
    import ray.train
    import torch

    from trainables import get_family
    from trainables.common import run_trial

    ctx = ray.train.get_context()
    if torch.cuda.is_available():  # Train gives each worker its own GPU: make it the default one
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    worker = WorkerSession(
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        queue=loop_config["queue"],
        checkpoint_files=loop_config["checkpoint"],
    )
    with runtime.worker_session(worker):
        data = ray.get(loop_config["data"])
        family = get_family(loop_config["family"])
        run_trial(dict(loop_config["config"]), data, family=family, seeds=loop_config["seeds"])


def readable_checkpoint_files(checkpoint: Any) -> tuple[dict[str, bytes] | None, dict[str, str]]:
    """(files, note) of the newest readable of a trial's checkpoints, Tune's own first (what
    `trainables.common.load_checkpoint` does in a one-worker trial): files None when none is
    readable (the trial starts from scratch); note the restore note for the driver's output."""
    from trainables.common import read_checkpoint, restore_first_readable

    def restore(d: str) -> dict:
        return {**read_checkpoint(d, torch.device("cpu")), "files": runtime.checkpoint_bytes(d)}

    state, note = restore_first_readable(checkpoint, restore)
    return (state["files"] if state is not None else None), note


def run_ddp_trial(
    config: dict,
    data: Any = None,
    *,
    family_name: str,
    seeds: list[int] | None,
    workers: int,
    cpu: float,
    gpu: float,
) -> None:
    """Tune function trainable ("train driver") of a multi-worker trial; see the module docstring."""
    import ray
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    files, note = None, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # the newest readable of the trial's checkpoints, as a 1-worker trial
        files, note = readable_checkpoint_files(checkpoint)
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    scratch = tempfile.mkdtemp(prefix="ddp-train-")  # Train's run state (no checkpoints): removed after
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": dict(config),
            "family": family_name,
            "seeds": seeds,
            "data": ray.put(data),
            "queue": queue,
            "checkpoint": files,
        },
        torch_config=TorchConfig(backend="nccl" if gpu > 0 else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(workers), use_gpu=gpu > 0, resources_per_worker={"CPU": float(cpu), "GPU": float(gpu)}
        ),
        run_config=RunConfig(
            name=f"ddp-{tune.get_context().get_trial_id()}-{uuid.uuid4().hex[:8]}",
            storage_path=scratch,
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread below
            failure.append(e)

    thread = threading.Thread(target=fit, name="ddp-fit", daemon=True)
    thread.start()
    try:
        while True:
            try:
                metrics, ckpt_files = queue.get(timeout=POLL_S)
            except Empty:
                if thread.is_alive():
                    continue
                if queue.empty():
                    break
                continue
            metrics, note = {**metrics, **note}, {}  # a checkpoint fallback is said once, with the first report
            if ckpt_files is None:
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as d:
                runtime.write_checkpoint(ckpt_files, d)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        thread.join()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            ray.kill(queue.actor)
        except Exception:  # noqa: BLE001 - the queue actor is gone with the trial anyway
            pass
    if failure:
        err = failure[0]
        cause = getattr(err, "worker_failures", None) or {}
        first = next(iter(cause.values()), None) if isinstance(cause, dict) else None
        raise RuntimeError(f"data-parallel run failed: {first or err}") from err
