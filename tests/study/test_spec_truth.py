"""What `study validate` refuses so that every verdict can be judged honestly, and what the run
records for the analysis: provenance of paper numbers, references that select configurations the
study runs, inert duplicates collapsed (the seed is the unit), finite paper numbers, the run's
overrides and smoke mark in the resolved spec and the tables' metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray.tune.search.variant_generator import generate_variants

from core.errors import UserError
from study.cli import main
from study.run.tuner import to_param_space
from study.spec import grid_points, load_spec, smoke_spec, spec_to_yaml
from study.spec.grid import collapse_note, grid_plan
from trainables import get_family

SPACES = Path(__file__).parents[2] / "search_spaces"
ROW = {"label": "r", "where": {"arch": "Siamese"}, "metric": "test_acc", "value": 0.9}
CLAIM = {"label": "c", "metric": "test_acc", "a": {"arch": "Siamese"}, "b": {"arch": "ConvNet"}}
RAW = {
    "name": "t",
    "trainable": "digit_pairs",
    "data": {"source": "mnist"},
    "fixed": {"batch_size": 50},
    "space": {"arch": {"grid": ["ConvNet", "Siamese"]}, "lr": {"grid": [0.01, 0.05]}, "momentum": {"uniform": [0.0, 0.9]}},
    "paper": {"dataset": "mnist", "results": [ROW]},
}  # fmt: skip
WSMS = {
    "name": "w",
    "trainable": "wsms",
    "data": {"source": "mnist-5k"},
    "fixed": {"backbone": "cifar_resnet", "depth": 8, "width": 8},
    "space": {"stages": {"grid": [1, 2]}, "ms": {"grid": [False, True]}, "integration": {"grid": ["conv1x1", "none"]}},
    "repeats": 3,
}  # fmt: skip


def write(tmp_path: Path, raw: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def refused(tmp_path: Path, raw: dict, match: str, overrides: list[str] | None = None) -> str:
    """The one-line error `load_spec` raises for `raw`, starting with the file's path."""
    with pytest.raises(UserError, match=match) as e:
        load_spec(write(tmp_path, raw), overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "s.yaml")), msg
    return msg


def ray_configs(spec) -> list[dict]:
    return [v["config"] for _, v in generate_variants({"config": to_param_space(spec)})]


# 1. Provenance: every paper number states what it was measured on


def test_a_row_without_dataset_is_refused_naming_file_and_row(tmp_path: Path, capsys) -> None:
    raw = {**RAW, "paper": {"results": [{**ROW, "label": "Table 1: Siamese"}]}}
    msg = refused(tmp_path, raw, r"paper\.results\.0 \('Table 1: Siamese'\): dataset: say what the paper measured")
    assert "data.source never stands in" in msg
    assert main(["validate", str(tmp_path / "s.yaml")]) == 2  # the CLI: one line, exit 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "s.yaml: paper.results.0 ('Table 1: Siamese'): dataset:" in err


def test_neither_data_source_nor_set_gives_a_row_its_provenance(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, RAW), ["data.source=mnist-5k"])
    assert spec.paper.results[0].dataset is None and spec.paper.dataset == "mnist"
    assert "mnist-5k" not in yaml.safe_dump(spec.model_dump(mode="json")["paper"])
    row = {**RAW, "paper": {"results": [{**ROW, "dataset": "mnist"}]}}
    assert load_spec(write(tmp_path, row), ["data.source=mnist-5k"]).paper.results[0].dataset == "mnist"


def test_a_copied_shipped_space_on_mnist_5k_gives_reference_only_rows(tmp_path: Path) -> None:
    """digit_pairs_grid.yaml with ``source: mnist-5k`` edited in the file: its rows are the paper's
    MNIST numbers, shown as reference only, never "measured on mnist-5k"."""
    from analysis.paper import REFERENCE, paper_vs_reproduced

    text = (SPACES / "digit_pairs_grid.yaml").read_text()
    assert "  source: mnist " in text
    p = tmp_path / "copy.yaml"
    p.write_text(text.replace("  source: mnist ", "  source: mnist-5k ", 1))
    spec = load_spec(p)
    assert spec.data.source == "mnist-5k" and all(r.dataset in (None, "any") for r in spec.paper.results)
    trials = pd.DataFrame(
        [{"trial_id": f"t{s}{i}", "status": "TERMINATED", **pt, "seed": s, "final_test_acc": 0.8, "params": 1000}
         for i, pt in enumerate(grid_points(spec)) for s in range(3)]
    )  # fmt: skip
    rows = paper_vs_reproduced(
        trials,
        spec.model_dump(mode="json")["paper"]["results"],
        data_source=spec.data.source,
        paper_dataset=spec.paper.dataset,
        semantics=get_family(spec.trainable).metrics,
    )
    measured = rows[rows["metric"] == "test_acc"]
    assert len(measured) and set(measured["verdict"]) == {REFERENCE}
    assert set(measured["dataset"]) == {"mnist"}


# 2. References: every row and claim selects a configuration the study runs


@pytest.mark.parametrize(
    ("where", "rule"),
    [
        ({"batch_size": 25}, r"batch_size: 25, but fixed\.batch_size is 50"),
        ({"lr": 0.1}, r"lr: 0\.1 is not a grid value of space\.lr \[0\.01, 0\.05\]"),
        ({"momentum": 0.95}, r"momentum: 0\.95 is outside space\.momentum \[0\.0, 0\.9\]"),
        ({"weight_sharing": True}, r"weight_sharing: not set by the spec \(the tables have no weight_sharing column\)"),
        ({"seed": 7}, r"seed 7 is not one of the seeds \[0\]"),
    ],
)
def test_a_reference_the_space_cannot_produce_is_refused(tmp_path: Path, where: dict, rule: str) -> None:
    raw = {**RAW, "paper": {"dataset": "mnist", "results": [{**ROW, "where": where}]}}
    refused(tmp_path, raw, r"paper\.results\.0 \('r'\): where selects no configuration this study runs \(" + rule)
    claim = {**CLAIM, "where": where}
    refused(tmp_path, {**RAW, "paper": {"claims": [claim]}}, r"paper\.claims\.0 \('c'\): where selects no config")
    refused(tmp_path, {**RAW, "paper": {"claims": [{**CLAIM, "b": where}]}}, r"paper\.claims\.0 \('c'\): b selects")


def test_a_grid_narrowed_by_set_leaves_out_the_rows_it_cannot_serve(tmp_path: Path, capsys) -> None:
    raw = {**RAW, "paper": {"dataset": "mnist", "results": [ROW, {**ROW, "label": "cv", "where": {"arch": "ConvNet"}}],
                            "claims": [CLAIM]}}  # fmt: skip
    spec = load_spec(write(tmp_path, raw), ["space.arch.grid=[Siamese]"])
    assert [r.label for r in spec.paper.results] == ["r"] and spec.paper.claims == []
    err = capsys.readouterr().err
    assert "paper.results.1 ('cv')" in err and "paper.claims.0 ('c')" in err and "left out of this run" in err
    assert "paper.results.0 ('r')" not in err
    # the file alone is checked as written, and a row the overrides add or change is refused, not left out
    assert len(load_spec(write(tmp_path, raw)).paper.results) == 2
    changed = "paper.results=[{label: new, where: {arch: ConvNet}, metric: test_acc, value: 0.9}]"
    refused(tmp_path, raw, r"paper\.results\.0 \('new'\): where selects no", ["space.arch.grid=[Siamese]", changed])


def test_a_value_inside_a_continuous_range_is_accepted(tmp_path: Path) -> None:
    raw = {**RAW, "paper": {"dataset": "mnist", "results": [{**ROW, "where": {"momentum": 0.5, "lr": 0.05}}]}}
    assert load_spec(write(tmp_path, raw)).paper.results[0].where == {"momentum": 0.5, "lr": 0.05}


def test_an_unknown_metric_is_refused(tmp_path: Path) -> None:
    raw = {**RAW, "paper": {"dataset": "mnist", "results": [{**ROW, "metric": "test_acc_scale_0.5"}]}}
    refused(tmp_path, raw, r"paper\.results\.0\.metric: digit_pairs reports no metric 'test_acc_scale_0\.5'")


def test_overlapping_groups_are_refused(tmp_path: Path) -> None:
    claim = {**CLAIM, "a": {"arch": "Siamese"}, "b": {"lr": 0.05}}  # Siamese at lr 0.05 is in both
    refused(tmp_path, {**RAW, "paper": {"claims": [claim]}}, r"paper\.claims\.0 \('c'\): a and b overlap: a trial with")


def test_groups_that_never_meet_within_a_level_are_refused(tmp_path: Path) -> None:
    claim = {**CLAIM, "a": {"arch": "Siamese", "lr": 0.01}, "b": {"arch": "ConvNet", "lr": 0.05}, "within": ["lr"]}
    refused(tmp_path, {**RAW, "paper": {"claims": [claim]}}, r"within lr: a and b never run at the same lr")


def test_a_reference_to_a_collapsed_configuration_is_refused(tmp_path: Path) -> None:
    claim = {**CLAIM, "metric": "test_acc", "a": {"stages": 2, "ms": False}, "b": {"stages": 1, "ms": True}}
    msg = refused(tmp_path, {**WSMS, "paper": {"claims": [claim]}}, r"b selects no configuration this study runs")
    assert "the grid collapsed (ms has no effect there; the study runs it with ms: False)" in msg


# 3. The seed is the unit: inert duplicates are reported and not scheduled


def test_inert_duplicates_are_collapsed_and_reported(tmp_path: Path, capsys) -> None:
    p = write(tmp_path, WSMS)
    spec = load_spec(p)
    # stages 1: ms and integration have no effect, so 3 of its 4 cells repeat the plain net
    assert spec.n_trials() == (4 + 1) * 3 and grid_plan(spec).collapsed == 3
    assert collapse_note(spec) == (
        "9 of 24 trials repeat another configuration (ms, integration have no effect at stages: 1); the grid runs 15"
    )
    configs = ray_configs(spec)  # what Tune schedules: one plain net (ms, integration at default/first)
    assert len(configs) == spec.n_trials()
    plain = [c for c in configs if c["stages"] == 1]
    assert len(plain) == 3 and {(c["ms"], c["integration"]) for c in plain} == {(False, "conv1x1")}
    assert len({(c["stages"], c["ms"], c["integration"], c["seed"]) for c in configs}) == len(configs)
    assert main(["validate", str(p)]) == 0
    assert f"{p}: 9 of 24 trials repeat another configuration" in capsys.readouterr().out
    keep = load_spec(p, ["search.inert=keep"])
    assert keep.n_trials() == 24 == len(ray_configs(keep)) and collapse_note(keep) == ""


def test_a_collapsed_point_takes_the_family_default_of_its_inert_key(tmp_path: Path) -> None:
    """aux_loss has no effect on FconnNet (one branch): its grid point runs once, with the
    family's default aux_loss, even where the default is not the axis' first value."""
    raw = {**RAW, "space": {"arch": {"grid": ["FconnNet", "Siamese"]}, "aux_loss": {"grid": [False, True]}}}
    raw["paper"] = {"dataset": "mnist", "results": [ROW]}
    spec = load_spec(write(tmp_path, raw))
    default = get_family("digit_pairs").all_defaults["aux_loss"]
    assert collapse_note(spec).startswith("1 of 4 trials repeat another configuration (aux_loss has no effect at arch:")
    assert [p for p in grid_points(spec) if p["arch"] == "FconnNet"] == [{"arch": "FconnNet", "aux_loss": default}]


def test_wsms_cifar_collapses_the_plain_backbones() -> None:
    spec = load_spec(SPACES / "wsms_cifar.yaml")
    assert spec.n_trials() == (54 - 15) * 3
    assert collapse_note(spec).startswith("45 of 162 trials repeat another configuration (ms, integration have")


def test_a_study_recorded_before_collapsing_keeps_its_trials(tmp_path: Path) -> None:
    from study.run.orchestrate import keep_recorded_trials
    from study.run.resume import spec_difference, with_defaults
    from study.storage import Store

    spec = load_spec(write(tmp_path, WSMS))
    old = yaml.safe_load(spec_to_yaml(spec))
    del old["search"]["inert"]  # as a study started before search.inert existed recorded it
    store = Store.open(tmp_path / "studies", create=True)
    (tmp_path / "studies" / "w").mkdir()
    (tmp_path / "studies" / "w" / "spec.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    resumed = keep_recorded_trials(store, "w", spec)
    assert resumed.search.inert == "keep" and resumed.n_trials() == 24
    assert spec_difference(with_defaults(old), yaml.safe_load(spec_to_yaml(resumed))) is None
    assert keep_recorded_trials(store, "other", spec).search.inert == "collapse"  # a new study collapses


def test_an_older_studys_recorded_spec_still_reads(tmp_path: Path) -> None:
    """Its spec.yaml (beside spec_file.txt) has no search.inert and a claim on a cell the grid now
    collapses: `study report` reads it as what it ran, every grid point, references unchecked."""
    claim = {**CLAIM, "a": {"stages": 2, "ms": False}, "b": {"stages": 1, "ms": True}}
    old = {**WSMS, "search": {"algorithm": "grid"}, "paper": {"dataset": "mnist", "claims": [claim]}}
    with pytest.raises(UserError, match="b selects no configuration"):
        load_spec(write(tmp_path, old))  # as a spec file: refused
    study = tmp_path / "w"
    study.mkdir()
    (study / "spec_file.txt").write_text("/somewhere/w.yaml\n")
    spec = load_spec(write(study, old, "spec.yaml"))
    assert spec.search.inert == "keep" and spec.n_trials() == 24


# 5. Low items: paper numbers are finite, std is not negative


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"tolerance": float("inf")}, r"paper\.results\.0\.tolerance: .*finite"),
        ({"tolerance": {"absolute": float("inf")}}, r"paper\.results\.0\.tolerance\.absolute: .*finite"),
        ({"value": float("nan")}, r"paper\.results\.0\.value: .*finite"),
        ({"std": -0.01}, r"paper\.results\.0\.std: Input should be greater than or equal to 0"),
        ({"std": float("nan")}, r"paper\.results\.0\.std: .*finite"),
    ],
)
def test_non_finite_and_negative_paper_numbers_are_refused(tmp_path: Path, change: dict, rule: str) -> None:
    raw = {**RAW, "paper": {"dataset": "mnist", "results": [{**ROW, **change}]}}
    refused(tmp_path, raw, rule)


# 6. What the analysis flags: the run's overrides and smoke mark, inert keys per trial


def test_the_run_records_overrides_smoke_and_inert_keys(tmp_path: Path) -> None:
    from analysis.load import read_study_metadata, study_meta
    from study.results.tables import write_results
    from study.run.orchestrate import prepare_spec

    p = write(tmp_path, WSMS)
    spec = prepare_spec(p, ["fixed.epochs=2"], smoke=False)
    assert spec.run.overrides == ["fixed.epochs=2"] and not spec.run.smoke
    recorded = yaml.safe_load(spec_to_yaml(spec))
    assert recorded["run"] == {"overrides": ["fixed.epochs=2"], "smoke": False}
    assert recorded["search"]["inert"] == "collapse"
    assert load_spec(write(tmp_path, recorded, "spec.yaml")).run == spec.run  # the recorded spec reads back
    assert "run" not in yaml.safe_load(spec_to_yaml(load_spec(p)))  # unset: older studies' spec.yaml match
    smoke = prepare_spec(p, [], smoke=True)
    assert smoke.run.smoke and smoke_spec(load_spec(p), {}).run.smoke

    trials = pd.DataFrame(
        [{"trial_id": f"t{i}_{s}", "status": "TERMINATED", **spec.base_config(), **pt, "seed": s}
         for i, pt in enumerate(grid_points(spec)) for s in range(3)]
    )  # fmt: skip
    epochs = pd.DataFrame(columns=["trial_id", "epoch", "time_total_s", "diverged"])
    out = write_results(tmp_path / "study", spec, trials, epochs)
    metadata = read_study_metadata(out / "trials.parquet")
    assert metadata["overrides"] == ["fixed.epochs=2"] and metadata["smoke"] is False
    assert metadata["collapsed"] == {"trials": 9, "of": 24, "keys": ["ms", "integration"], "at": {"stages": 1}}
    plain = [t for t, pt in zip(trials["trial_id"], trials["stages"]) if pt == 1]
    assert set(metadata["inert_keys"]) >= set(plain)
    assert {"ms", "integration"} <= set(metadata["inert_keys"][plain[0]])
    meta = study_meta(metadata, recorded, trials)
    assert meta.overrides == ("fixed.epochs=2",) and meta.smoke is False and "ms" in meta.inert_keys[plain[0]]
    assert json.dumps(metadata)  # plain JSON
