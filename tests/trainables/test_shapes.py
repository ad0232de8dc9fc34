"""Trial shapes without Ray: packed training equals one-trial-at-a-time training,
members diverge and resume on their own; precision and channels-last switches; DDP batch shards."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from trainables import get_family, runtime
from trainables.common import iterate_batches, resolve_config, run_trial
from trainables.packing import run_pack_trial

FAMILY = get_family("digit_pairs")
SHARED = {"n_train": 100, "n_test": 100, "batch_size": 25, "epochs": 2, "momentum": 0.9}
PACK_TOL = 1e-5  # |packed - unpacked| of losses after an epoch with SGD (float32 rounding of batched kernels)
# Adam divides by sqrt(v) + 1e-8: rounding noise in near-zero gradients becomes lr-sized steps, so packed and
# unpacked Adam runs agree to noise, not to rounding (the update formula itself is exact: test below)
ADAM_TOL = 5e-3


@pytest.fixture(scope="module")
def data():
    return FAMILY.load_data("mnist-5k", None)


class FakeTune:
    """ray.tune.report / get_checkpoint for running trainables without Ray: keeps every report and
    a copy of every checkpoint directory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, resume_from: Path | None = None) -> None:
        from ray import tune

        self.reports: list[dict] = []
        self.checkpoints: list[Path] = []
        self.resume_from = resume_from
        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint", self.get_checkpoint)

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(metrics)
        if checkpoint is not None:
            keep = Path(tempfile.mkdtemp(prefix="ckpt-test-"))
            shutil.copytree(checkpoint.path, keep, dirs_exist_ok=True)
            self.checkpoints.append(keep)

    def get_checkpoint(self):
        from ray import tune

        return tune.Checkpoint.from_directory(str(self.resume_from)) if self.resume_from else None


def pack_config(shared: dict, members: list[dict]) -> dict:
    return {"__pack__": {"shared": shared, "members": members, "metric": "test_acc", "mode": "max"}}


def unpacked(monkeypatch, data, shared, members) -> list[list[dict]]:
    out = []
    for m in members:
        fake = FakeTune(monkeypatch)
        run_trial({**shared, **m}, data, family=FAMILY)
        out.append(fake.reports)
    return out


@pytest.mark.parametrize(
    "arch,optimizer",
    [("ConvNet", "sgd"), ("Siamese", "sgd"), ("FconnNet", "sgd"), ("parallelConv", "sgd"), ("ConvNet", "adam")],
)
def test_packed_members_match_unpacked_trials(monkeypatch, data, arch: str, optimizer: str) -> None:
    shared = {**SHARED, "arch": arch, "optimizer": optimizer, "lr_milestones": [1], "lr_gamma": 0.5}
    members = [{"seed": 0, "lr": 0.01, "weight_decay": 1e-3}, {"seed": 1, "lr": 0.05, "weight_decay": 0.0}]
    if optimizer != "sgd":
        members = [{**m, "lr": m["lr"] / 10} for m in members]
    alone = unpacked(monkeypatch, data, shared, members)
    fake = FakeTune(monkeypatch)
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    assert [r["epoch"] for r in fake.reports] == [1, 2]  # one report per epoch, every member in it
    for i in range(len(members)):
        for epoch in (1, 2):
            a, b = alone[i][epoch - 1], fake.reports[epoch - 1]["members"][str(i)]
            assert b["epoch"] == epoch and b["diverged"] == 0 and b["lr"] == pytest.approx(a["lr"])
            for k in ("train_loss", "test_loss"):
                tol = PACK_TOL if optimizer == "sgd" else ADAM_TOL
                assert abs(a[k] - b[k]) < tol, (arch, i, epoch, k, a[k], b[k])
            if optimizer == "sgd":
                assert abs(a["test_acc"] - b["test_acc"]) <= 0.011, (arch, i, epoch)  # one pair of 100 at most
    assert alone[0][0]["train_loss"] != alone[1][0]["train_loss"]  # the members really differ


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_packed_optimizer_steps_as_torch_optim(optimizer: str) -> None:
    from trainables.packing import PackedOptimizer

    torch.manual_seed(0)
    cfgs = [{"optimizer": optimizer, "lr": lr, "momentum": mom, "weight_decay": wd, "lr_gamma": 0.5, "lr_milestones": [2]}
            for lr, mom, wd in ((0.1, 0.9, 1e-2), (0.01, 0.0, 0.0))]  # fmt: skip
    alone = [torch.randn(4, 3, requires_grad=True) for _ in cfgs]
    stacked = {"w": torch.stack([p.detach() for p in alone]).requires_grad_()}
    packed = PackedOptimizer(stacked, cfgs, torch.device("cpu"))
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    extra = lambda c: {"momentum": c["momentum"]} if optimizer == "sgd" else {}  # noqa: E731
    refs = [kinds[optimizer]([p], lr=c["lr"], weight_decay=c["weight_decay"], **extra(c)) for p, c in zip(alone, cfgs)]
    scheds = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2], gamma=0.5) for o in refs]
    for epoch in range(4):
        for _ in range(2):
            g = torch.randn(2, 4, 3)
            stacked["w"].grad = g.clone()
            for i, p in enumerate(alone):
                p.grad = g[i].clone()
            packed.step(torch.ones(2, dtype=torch.bool), packed.lr_at(epoch))
            for o in refs:
                o.step()
        for s in scheds:
            s.step()
    for i, p in enumerate(alone):
        assert torch.allclose(stacked["w"][i], p, atol=1e-6, rtol=0), optimizer


def test_diverging_member_is_masked_and_recorded_once(monkeypatch, data) -> None:
    shared = {**SHARED, "arch": "ConvNet", "epochs": 3}
    members = [{"seed": 0, "lr": 0.01}, {"seed": 0, "lr": 1e12}]
    alone = unpacked(monkeypatch, data, shared, members[:1])[0]
    fake = FakeTune(monkeypatch)
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    reports = [r["members"] for r in fake.reports]
    assert [r["epoch"] for r in fake.reports] == [1, 2, 3]
    blown = [m["1"] for m in reports if "1" in m]
    assert len(blown) == 1 and blown[0]["diverged"] == 1 and "non-finite" in blown[0]["error"]
    assert blown[0]["epoch"] == 0  # as a one-worker trial: its last finished epoch
    for epoch in (1, 2, 3):  # the healthy member is untouched by its neighbour
        assert abs(reports[epoch - 1]["0"]["train_loss"] - alone[epoch - 1]["train_loss"]) < PACK_TOL


def test_pack_resumes_from_its_checkpoint_without_loss_or_repeat(monkeypatch, data) -> None:
    shared = {**SHARED, "arch": "Siamese", "epochs": 3}
    members = [{"seed": 2, "lr": 0.02}, {"seed": 3, "lr": 0.05}]
    full = FakeTune(monkeypatch)
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    resumed = FakeTune(monkeypatch, resume_from=full.checkpoints[0])  # killed after epoch 1
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    assert [r["epoch"] for r in resumed.reports] == [2, 3]
    for a, b in zip(full.reports[1:], resumed.reports):
        for i in ("0", "1"):
            assert a["members"][i]["train_loss"] == b["members"][i]["train_loss"]
            assert a["members"][i]["test_acc"] == b["members"][i]["test_acc"]


def test_pack_falls_back_on_an_older_checkpoint_when_the_newest_is_damaged(monkeypatch, data, tmp_path) -> None:
    shared = {**SHARED, "arch": "ConvNet", "epochs": 3}
    members = [{"seed": 2, "lr": 0.02}, {"seed": 3, "lr": 0.05}]
    full = FakeTune(monkeypatch)
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    trial = tmp_path / "trial_p"  # the pack's checkpoints as Tune keeps them, in its trial directory
    for i, ckpt in enumerate(full.checkpoints[:2]):
        shutil.copytree(ckpt, trial / f"checkpoint_{i:06d}")
    newest = trial / "checkpoint_000001" / "pack.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # cut by a crash
    resumed = FakeTune(monkeypatch, resume_from=trial / "checkpoint_000001")
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    assert [r["epoch"] for r in resumed.reports] == [2, 3]  # from epoch 1's checkpoint: nothing lost
    assert resumed.reports[0]["restore_note"].startswith("checkpoint checkpoint_000001 (")
    assert resumed.reports[0]["restore_note"].endswith("resumed from checkpoint_000000 (epoch 1)")
    assert "restore_note" not in resumed.reports[1]  # said once
    for a, b in zip(full.reports[1:], resumed.reports):
        assert a["members"]["0"]["train_loss"] == b["members"]["0"]["train_loss"]
    # nothing readable: the pack starts again from epoch 1, as a fresh run would
    (trial / "checkpoint_000000" / "pack.pt").write_bytes(b"junk")
    again = FakeTune(monkeypatch, resume_from=trial / "checkpoint_000001")
    run_pack_trial(pack_config(shared, members), data, family=FAMILY)
    assert [r["epoch"] for r in again.reports] == [1, 2, 3]
    assert "restarted from epoch 1" in again.reports[0]["restore_note"]
    assert again.reports[2]["members"]["1"]["train_loss"] == full.reports[2]["members"]["1"]["train_loss"]


def test_pack_rules_are_one_line_errors(tmp_path: Path) -> None:
    from study.spec import load_spec
    from tests.conftest import write_spec

    base = {"space": {"arch": {"grid": ["ConvNet"]}, "lr": {"grid": [0.01, 0.05]}}, "pack": 4,
            "fixed": {"epochs": 1, "batch_size": 50}}  # fmt: skip
    cases = [
        ({"scheduler": {"type": "asha"}}, "pack > 1 cannot be combined with scheduler asha"),
        ({"resources": {"cpu": 1, "workers": 2}}, "pack > 1 and resources.workers > 1 cannot be combined"),
        ({"space": {"lr": {"loguniform": [0.001, 0.1]}}, "search": {"algorithm": "random"}}, "needs search.algorithm grid"),
        ({"space": {"lr": {"choice": [0.01, 0.1]}}}, "needs grid axes only, but space.lr is sampled"),
        ({"fixed": {"epochs": 1, "amp": "fp16"}}, "cannot train with amp fp16"),
    ]  # fmt: skip
    for extra, message in cases:
        path = write_spec(tmp_path / "p.yaml", **{**base, **extra})
        with pytest.raises(UserError) as e:
            load_spec(path)
        assert f"{path}: pack: " in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="trainable share_split cannot be packed yet"):
        load_spec(Path(__file__).parents[2] / "search_spaces" / "share_split.yaml", ["pack=2"])
    assert load_spec(write_spec(tmp_path / "ok.yaml", **base)).pack == 4


def test_precision_switches(monkeypatch, data) -> None:
    """bf16 autocast and fp16 with a grad scaler train (close to fp32 after one epoch); channels-last
    changes only the memory format; every value is checked; the scaler's state is checkpointed."""
    config = {**SHARED, "arch": "ConvNet", "epochs": 1, "seed": 0, "lr": 0.05}
    results = {}
    for name, extra in {"fp32": {"amp": "off"}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"},
                        "cl": {"amp": "off", "channels_last": True}}.items():  # fmt: skip
        fake = FakeTune(monkeypatch)
        run_trial({**config, **extra}, data, family=FAMILY)
        results[name] = fake.reports[-1]
        if name == "fp16":
            state = torch.load(fake.checkpoints[-1] / "state.pt", weights_only=True)
            assert state["grad_scaler"]["scale"] > 0
    assert abs(results["cl"]["train_loss"] - results["fp32"]["train_loss"]) < 1e-4
    for name in ("bf16", "fp16"):
        assert math.isfinite(results[name]["train_loss"])
        assert abs(results[name]["train_loss"] - results["fp32"]["train_loss"]) < 0.05, name
    assert results["bf16"]["train_loss"] != results["fp32"]["train_loss"]  # autocast really ran
    cfg = resolve_config(FAMILY, {})
    assert cfg["amp"] == "auto" and runtime.resolve_amp("auto", torch.device("cpu")) is None  # off on a CPU
    assert not runtime.resolve_channels_last("auto", torch.device("cpu"))
    with pytest.raises(UserError, match="amp"):
        resolve_config(FAMILY, {"amp": "fp8"})


def test_shards_split_each_global_batch() -> None:
    """A DDP worker trains on its slice of every global batch; together the slices are the batch."""
    whole = iterate_batches(103, 25, torch.Generator().manual_seed(0))
    parts = []
    for rank in (0, 1):
        with runtime.training_pass(runtime.Shard(rank, 2)):
            parts.append(iterate_batches(103, 25, torch.Generator().manual_seed(0)))
    assert runtime.current_pass().shard is None  # the shard ends with the pass
    assert len(parts[0]) == len(parts[1]) == len(whole) == 5
    for b, p0, p1 in zip(whole, *parts):
        assert torch.equal(torch.cat([p0, p1]), b) and abs(len(p0) - len(p1)) <= 1


def test_image_batches_are_sharded_for_ddp() -> None:
    """The image families' in-memory batches also give a DDP worker its slice of each global batch."""
    from trainables.images import TrialImages, from_image_set

    data = from_image_set(FAMILY.load_data("mnist-5k", None))
    trial = TrialImages(data=data, channels=1, size=28, recipe="none", normalize=False,
                        train_index=torch.arange(60), test_index=None)  # fmt: skip
    labels = lambda: [y for _, y in trial.batches("train", 16, torch.device("cpu"), torch.Generator().manual_seed(0))]  # noqa: E731
    whole = labels()
    parts = []
    for rank in (0, 1):
        with runtime.training_pass(runtime.Shard(rank, 2)):
            parts.append(labels())
    assert [len(b) for b in whole] == [16, 16, 16, 12] and [len(b) for b in parts[0]] == [8, 8, 8, 6]
    for b, p0, p1 in zip(whole, *parts):
        assert torch.equal(torch.cat([p0, p1]), b)


@pytest.mark.parametrize("cover", [False, True])
def test_packs_hold_exactly_the_studys_trials(tmp_path: Path, cover: bool) -> None:
    """The packs of a grid study are its trials, once each: every combination, or the covering set
    of `search.grid: cover` (a smoke run of a packed space), never the full product instead."""
    from study.shapes import pack_param_space
    from study.spec import grid_points, load_spec
    from tests.conftest import write_spec

    space = {"arch": {"grid": ["ConvNet", "Siamese"]}, "lr": {"grid": [0.01, 0.05, 0.1]}, "batch_size": {"grid": [25, 50]}}
    search = {"algorithm": "grid", "grid": "cover" if cover else "product"}
    spec = load_spec(write_spec(tmp_path / "p.yaml", space=space, search=search, repeats=2, pack=4, fixed={"epochs": 1}))
    packs = pack_param_space(spec, 1)["__pack__"]["grid_search"]
    trials = [(p["shared"]["arch"], p["shared"]["batch_size"], m["lr"], m["seed"]) for p in packs for m in p["members"]]
    want = [(g["arch"], g["batch_size"], g["lr"], s) for g in grid_points(spec) for s in spec.seed_list]
    assert sorted(trials) == sorted(want) and len(trials) == spec.n_trials() == (6 if cover else 24)
    assert all(len(p["members"]) <= 4 for p in packs)
