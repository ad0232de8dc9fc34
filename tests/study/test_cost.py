"""``study validate --cost``: the estimate's parts (epoch sizes, groups, packs, slots, makespan), the
calibration on this machine, the measured GPU table, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study import cost
from study.cli import main
from study.spec import load_spec

REPO = Path(__file__).parents[2]
GRID = REPO / "search_spaces" / "digit_pairs_grid.yaml"
MNIST = ["data.source=mnist-5k"]
SUBSET = [*MNIST, "paper.results=[]", "paper.claims=[]", "pack=1"]  # a reduced grid: the paper's rows name other nets


def test_epoch_sizes_follow_the_config_then_the_source() -> None:
    assert cost.train_examples({"n_train": 1000}, "mnist") == 1000
    assert cost.train_examples({"n_train": 0}, "cifar10") == 50_000
    assert cost.train_examples({"train_images": None, "copies": 1}, "mnist") == 55_000
    assert cost.train_examples({"train_images": 90_000}, "mnist") == 60_000  # capped at the split
    assert cost.train_examples({}, "imagenet-subset") is None  # unknown: no estimate, never a guess
    assert cost.test_examples({"n_test": 0}, "cifar100") == 10_000


def test_grid_groups_are_net_by_batch_size_and_packs_split_them() -> None:
    groups = cost.trial_groups(load_spec(GRID, [*MNIST, "pack=1"]))
    assert len(groups) == 16 and all(g.trials == 50 for g in groups)  # 4 nets x 4 batch sizes, 5 lr x 10 seeds
    assert groups[0].shown == {"arch": "FconnNet", "batch_size": 25}
    assert all(g.units == [1] * 50 for g in groups)
    packed = cost.trial_groups(load_spec(GRID, [*MNIST, "pack=32"]))
    assert all(g.units == [32, 18] for g in packed)  # a pack spans learning rates and seeds
    auto = cost.trial_groups(load_spec(GRID, MNIST))  # as shipped: pack auto
    assert [g.units for g in auto[:4]] == [[50], [50], [50], [50]]  # one pack per net x batch size


def test_slots_and_makespan() -> None:
    spec = load_spec(GRID, MNIST)
    assert cost.slots(spec, cpus=2) == 2
    assert cost.slots(load_spec(GRID, [*MNIST, "resources.cpu=4"]), cpus=2) == 1  # never below one
    frac = load_spec(GRID, [*MNIST, "resources.gpu=0.25"])
    assert cost.slots(frac, cpus=16, gpus=1) == 4 and cost.slots(frac, cpus=2, gpus=1) == 2
    assert cost.slots(spec, cpus=16, gpus=2) == 2  # no GPU asked for: one trial per GPU there
    assert cost.makespan([3, 1, 1, 1], 2) == 3 and cost.makespan([1] * 5, 2) == 3 and cost.makespan([], 4) == 0


def test_estimate_adds_steps_evaluation_and_overheads(monkeypatch) -> None:
    monkeypatch.setattr(cost, "time_step", lambda *a, **k: {"step_s": 0.01, "steps": 1, "flops": None, "cpu_share": 1.0})
    spec = load_spec(GRID, [*SUBSET, "space.arch.grid=[ConvNet]", "space.batch_size.grid=[50]", "repeats=2"])
    est = cost.estimate(spec, cpus=2)
    (g,) = est["groups"]
    assert g["trials"] == 10 and g["epochs"] == 25 and g["steps_per_epoch"] == 20
    per_epoch = 20 * 0.01 + 1000 / 50 * 0.01 * cost.EVAL_FRACTION + cost.EPOCH_S
    assert g["trial_s"] == pytest.approx(cost.TRIAL_START_S + 25 * per_epoch)
    assert est["slots"] == 2 and est["tune_trials"] == 10
    assert est["study_s"] == pytest.approx(cost.STUDY_START_S + 5 * g["trial_s"])
    lines = cost.format_estimate(est)
    assert lines[1].startswith("  arch=ConvNet, batch_size=50: 10 trials x 25 epochs x 20 steps, 10 ms/step")
    assert lines[-1].startswith("  total: 10 trials (10 Tune trials), about ")


def test_calibration_times_real_steps_alone_and_packed() -> None:
    from trainables import get_family
    from trainables.common import resolve_config

    cfg = resolve_config(get_family("digit_pairs"), {"arch": "ConvNet", "batch_size": 25, "device": "cpu"})
    alone = cost.time_step("digit_pairs", cfg, budget_s=0.02, count_flops=True)
    packed = cost.time_step("digit_pairs", cfg, members=4, budget_s=0.02, count_flops=True)
    assert 0 < alone["step_s"] < 30 and alone["steps"] >= 1  # seconds: a shared machine can be slow
    assert packed["flops"] == pytest.approx(4 * alone["flops"], rel=0.01)  # four members' forward and backward


def gpu_table(tmp_path: Path, **over) -> Path:
    rows = [
        {"family": "digit_pairs", "model": "ConvNet", "config": {"arch": "ConvNet", "weight_sharing": None},
         "batch_size": 50, "members": 1, "precision": "bf16+channels_last", "step_s": 0.002, "flops": 1e9},
        {"family": "digit_pairs", "model": "Siamese", "config": {"arch": "Siamese", "weight_sharing": None},
         "batch_size": 50, "members": 1, "precision": "bf16+channels_last", "step_s": 0.004, "flops": 2e9},
    ]  # fmt: skip
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "dry_run": False, "cpus": 16, "steps": rows, **over}))
    return path


def test_named_gpu_reads_the_measured_table_or_scales_by_flops(tmp_path: Path) -> None:
    table = gpu_table(tmp_path)
    spec = load_spec(GRID, [*SUBSET, "space.arch.grid=[ConvNet, FconnNet]", "space.batch_size.grid=[50]"])
    est = cost.estimate(spec, gpu="h200", gpus=8, table_path=table)
    conv, fconn = est["groups"]
    assert conv["step_s"] == 0.002 and conv["source"] == "measured on NVIDIA H200"
    assert fconn["source"].startswith("scaled by FLOPs from ") and fconn["step_s"] > 0
    assert est["where"] == "8 x NVIDIA H200" and est["slots"] == 8  # gpu 0 asked for: one trial per GPU
    with pytest.raises(cost.UserError, match=r"^--cost-gpu A100: no measured table for it \(.* holds NVIDIA H200\)$"):
        cost.estimate(spec, gpu="A100", table_path=table)
    with pytest.raises(cost.UserError, match="no measured per-step table .* scripts/gpu_check.sh"):
        cost.estimate(spec, gpu="H200", table_path=tmp_path / "none.json")
    with pytest.raises(cost.UserError, match="no measured table for it"):  # a dry run's table is no GPU's
        cost.estimate(spec, gpu="H200", table_path=gpu_table(tmp_path, dry_run=True))


def test_cli_cost_lines_json_and_flag_rules(capsys) -> None:
    sets = [x for s in [*SUBSET, "space.arch.grid=[Siamese]", "space.batch_size.grid=[200]"] for x in ("--set", s)]
    assert main(["validate", str(GRID), *sets, "--cost"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  cost on this machine (") and out[2].startswith("  arch=Siamese, batch_size=200: 50 trials")
    assert out[-1].startswith("  total: 50 trials (50 Tune trials), about ")
    assert main(["validate", str(GRID), *sets, "--cost", "--json"]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["spec"] == str(GRID) and got["study_s"] > cost.STUDY_START_S and len(got["groups"]) == 1
    assert main(["validate", str(GRID), "--cost-gpu", "H200"]) == 2
    assert "--cost-gpu / --cost-cpus: only with --cost" in capsys.readouterr().err


@pytest.mark.e2e
def test_bench_gpu_dry_run_table_feeds_the_estimate(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--dry-run", "--sections", "steps",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads(out.read_text())
    assert table["dry_run"] is True and table["device"] == "cpu (dry run)"
    models = {r["model"] for r in table["steps"]}
    assert {"FconnNet", "FconnNet x8", "FconnNet x32", "cifar_resnet18_w64", "cifar_resnet50", "imagenet_resnet50"} <= models
    assert {r["precision"] for r in table["steps"] if r["model"] == "cifar_resnet50"} == {
        "fp32", "bf16", "channels_last", "bf16+channels_last"}  # fmt: skip
    assert all(r["step_s"] > 0 and r["flops"] > 0 and r["mfu"] is None for r in table["steps"])
    table.update(device="Test GPU", dry_run=False)  # as if measured on a GPU
    out.write_text(json.dumps(table))
    spec = load_spec(GRID, [*SUBSET, "space.arch.grid=[FconnNet]", "space.batch_size.grid=[25]", "pack=8"])
    est = cost.estimate(spec, gpu="test gpu", table_path=out)
    assert est["groups"][0]["step_s"] > 0 and est["study_s"] > 0
