"""The trial runtime's state is explicit: a training pass (shard, grad scaler) and a worker session
are context variables, set for a block and gone after it; fp16 loss scaling is `backward`'s."""

from __future__ import annotations

import torch

from trainables import runtime
from trainables.common import check_finite


def _grad(step) -> torch.Tensor:
    w = torch.ones(3, requires_grad=True)
    step((w * torch.tensor([1.0, 2.0, 3.0])).sum())
    return w.grad


def test_backward_scales_the_loss_only_under_a_pass_with_a_scaler() -> None:
    plain = _grad(runtime.backward)
    assert torch.equal(plain, torch.tensor([1.0, 2.0, 3.0]))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    with runtime.training_pass(scaler=scaler) as p:
        assert runtime.current_pass() is p and p.scaler is scaler and p.shard is None
        assert torch.equal(_grad(runtime.backward), 8.0 * plain)
        # check_finite only checks: a plain backward after it is not scaled
        assert torch.equal(_grad(lambda loss: (check_finite(loss), loss.backward())), plain)
    assert runtime.current_pass().scaler is None
    assert torch.equal(_grad(runtime.backward), plain)


def test_a_one_worker_shard_is_no_shard_and_passes_nest() -> None:
    with runtime.training_pass(runtime.Shard(0, 1)):
        assert runtime.current_pass().shard is None
        with runtime.training_pass(runtime.Shard(1, 2)):
            assert runtime.current_pass().shard == runtime.Shard(1, 2)
        assert runtime.current_pass().shard is None


def test_worker_session_is_set_for_the_block_only() -> None:
    class Worker:
        rank, world = 1, 3

    assert runtime.current_worker() is None
    with runtime.worker_session(Worker()):
        rt = runtime.for_trial({"amp": "off"}, torch.device("cpu"))
        assert (rt.rank, rt.world) == (1, 3)
    assert runtime.current_worker() is None
    rt = runtime.for_trial({"amp": "off"}, torch.device("cpu"))
    assert (rt.rank, rt.world, rt.worker) == (0, 1, None)
