"""`paper.claims` and `paper.results[].dataset` in the YAML: parsing, errors, and every shipped space."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.errors import UserError
from study.spec import grid_points, load_spec

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))
CLAIM = {"label": "c", "metric": "test_acc", "a": {"arch": "Siamese"}, "b": {"arch": "ConvNet"}}
RAW = {
    "name": "t",
    "trainable": "digit_pairs",
    "data": {"source": "mnist"},
    "space": {"arch": {"grid": ["ConvNet", "Siamese"]}},
    "paper": {"results": [{"label": "r", "where": {"arch": "Siamese"}, "metric": "test_acc", "value": 0.9}]},
}


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _matches(config: dict, where: dict) -> bool:
    return all(k in config and config[k] == v for k, v in where.items())


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_has_testable_claims(path: Path) -> None:
    spec = load_spec(path)
    assert spec.paper.claims, f"{path.name}: add the paper's claims (paper.claims)"
    base = spec.base_config()
    configs = [{**base, **p} for p in grid_points(spec)]
    for c in spec.paper.claims:
        assert c.quote, f"{path.name}: {c.label}: quote the paper's words"
        for group in (c.a, c.b):  # each group is a configuration the study runs
            assert any(_matches(cfg, {**c.where, **group}) for cfg in configs), (path.name, c.label, group)
    for r in spec.paper.results:  # every number says what it was measured on (never the file's source)
        assert r.dataset or spec.paper.dataset, (path.name, r.label)


def test_dataset_is_never_the_files_source(tmp_path: Path) -> None:
    """A row takes its own dataset or the paper block's; neither data.source nor --set is one."""
    row = RAW["paper"]["results"][0]
    with pytest.raises(UserError, match=r"paper\.results\.0 \('r'\): dataset: say what the paper measured"):
        load_spec(write(tmp_path, RAW))
    block = {**RAW, "paper": {"dataset": "mnist", "results": [row]}}
    spec = load_spec(write(tmp_path, block), ["data.source=mnist-5k"])
    assert spec.data.source == "mnist-5k" and spec.paper.results[0].dataset is None and spec.paper.dataset == "mnist"
    given = {**RAW, "paper": {"results": [{**row, "dataset": "mnist-5k"}]}}
    assert load_spec(write(tmp_path, given)).paper.results[0].dataset == "mnist-5k"


def test_claims_parse(tmp_path: Path) -> None:
    space = {**RAW["space"], "lr": {"grid": [0.1, 0.2]}}
    claim = {**CLAIM, "within": ["lr"], "where": {"aux_loss": True}}
    raw = {**RAW, "fixed": {"aux_loss": True}, "space": space, "paper": {"claims": [claim]}}
    c = load_spec(write(tmp_path, raw)).paper.claims[0]
    assert c.direction == "greater" and c.within == ["lr"] and c.where == {"aux_loss": True}


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({**CLAIM, "a": {"depth": 3}}, r"paper\.claims\.0\.a\.depth: not a config key of digit_pairs"),
        ({**CLAIM, "within": ["nope"]}, r"paper\.claims\.0\.within: 'nope' is not a config key"),
        ({**CLAIM, "metric": "bleu"}, r"paper\.claims\.0\.metric: digit_pairs reports no metric 'bleu'"),
        ({**CLAIM, "b": CLAIM["a"]}, r"a and b must select different groups"),
        ({**CLAIM, "direction": "up"}, r"paper\.claims\.0\.direction: Input should be 'greater' or 'less'"),
        ({**CLAIM, "a": {}}, r"paper\.claims\.0\.a: "),
    ],
)
def test_bad_claims_are_one_line_errors(tmp_path: Path, claim: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        load_spec(write(tmp_path, {**RAW, "paper": {"claims": [claim]}}))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "s.yaml"))
