"""``pack: auto``: each group (net x batch size) packed as its family chooses, never where packing
loses on the machine kind (CPUs or a GPU); a member is still its own trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.errors import UserError
from study.run.shapes import pack_param_space, pack_size
from study.spec import load_spec
from trainables.digit_pairs import AUTO_PACK_MAX_BATCH, AUTO_PACK_MEMBERS

GRID = Path(__file__).parents[2] / "search_spaces" / "digit_pairs_grid.yaml"
MNIST = ["data.source=mnist-5k"]


def test_auto_packs_small_batches_on_cpus_and_everything_on_a_gpu() -> None:
    spec = load_spec(GRID, [*MNIST, "pack=auto"])
    assert spec.pack == "auto"
    assert pack_size(spec, {"batch_size": AUTO_PACK_MAX_BATCH}) == AUTO_PACK_MEMBERS
    assert pack_size(spec, {"batch_size": AUTO_PACK_MAX_BATCH + 1}) == 1  # not measured: not packed
    gpu = load_spec(GRID, [*MNIST, "pack=auto", "resources.gpu=1"])
    assert pack_size(gpu, {"batch_size": 1000}) == AUTO_PACK_MEMBERS
    assert pack_size(load_spec(GRID, [*MNIST, "pack=7"]), {"batch_size": 200}) == 7


def test_auto_packs_hold_exactly_the_grids_trials() -> None:
    spec = load_spec(GRID, [*MNIST, "pack=auto"])
    packs = pack_param_space(spec, threads=1)["__pack__"]["grid_search"]
    sizes: dict[int, list[int]] = {}
    for p in packs:
        sizes.setdefault(p["shared"]["batch_size"], []).append(len(p["members"]))
    assert all(sizes[b] == [50] * 4 for b in (25, 50, 100, 200))  # one pack per net: 5 lr x 10 seeds
    big = load_spec(GRID, [*MNIST, "pack=auto", "space.batch_size.grid=[25, 250]", "paper.results=[]", "paper.claims=[]"])
    sizes = [len(p["members"]) for p in pack_param_space(big, threads=1)["__pack__"]["grid_search"]]
    assert sorted(sizes, reverse=True) == [50] * 4 + [1] * 200  # batch 250: every trial on its own
    members = [(p["shared"]["arch"], p["shared"]["batch_size"], m["lr"], m["seed"]) for p in packs for m in p["members"]]
    assert len(members) == len(set(members)) == spec.n_trials() == 800


@pytest.mark.parametrize("value", ["fast", 0])
def test_pack_is_a_positive_int_or_auto(tmp_path: Path, value) -> None:
    with pytest.raises(UserError, match="pack"):
        load_spec(GRID, [*MNIST, f"pack={value}"])
