"""Search-space YAML: parsing, overrides, smoke form, Ray Tune domains, and exact error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.errors import UserError
from study.run.tuner import to_param_space
from study.spec import apply_overrides, load_spec, load_yaml, smoke_spec

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))

GOOD = {
    "name": "t",
    "trainable": "digit_pairs",
    "data": {"source": "mnist-5k", "n_train": 100},
    "fixed": {"epochs": 2},
    "space": {"lr": {"loguniform": [0.001, 0.1]}, "arch": {"grid": ["ConvNet", "Siamese"]}},
    "repeats": 2,
}


def write(tmp_path: Path, raw: dict | str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return p


def with_(**changes) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        node, parts = raw, key.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is ...:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return raw


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.n_trials() >= 1
    assert spec.metric and spec.mode in ("max", "min")


def test_paper_grid_has_800_trials() -> None:
    spec = load_spec(Path(__file__).parents[2] / "search_spaces" / "digit_pairs_grid.yaml")
    assert spec.n_trials() == 800
    assert spec.fixed["epochs"] == 25


def test_good_spec_and_domains(tmp_path: Path) -> None:
    from ray import tune

    spec = load_spec(write(tmp_path, GOOD))
    assert spec.seed_list == [0, 1]
    assert spec.grid_axes == ["arch"]
    space = to_param_space(spec)
    assert space["n_train"] == 100 and space["epochs"] == 2
    assert space["arch"] == tune.grid_search(["ConvNet", "Siamese"])
    assert space["seed"] == tune.grid_search([0, 1])
    assert isinstance(space["lr"], tune.search.sample.Float)
    assert space["lr"].lower == 0.001 and space["lr"].upper == 0.1


def test_overrides_dotted_paths(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, GOOD), ["fixed.epochs=5", "data.source=mnist", "repeats=3", "fixed.lr_milestones=[3, 4]"]
    )
    assert spec.fixed["epochs"] == 5
    assert spec.fixed["lr_milestones"] == [3, 4]
    assert spec.data.source == "mnist"
    assert spec.seed_list == [0, 1, 2]


def test_smoke_is_tiny(tmp_path: Path) -> None:
    raw = with_(
        space={
            "lr": {"grid": [0.1, 0.2, 0.3]},
            "batch_size": {"grid": [10, 20, 30]},
            "arch": {"grid": ["ConvNet", "Siamese"]},
        }
    )
    spec = smoke_spec(load_spec(write(tmp_path, raw)), {"n_train": 50, "epochs": 1})
    assert spec.seed_list == [0]
    assert spec.fixed["epochs"] == 1
    assert spec.fixed["n_train"] == 50 and "n_train" not in spec.data.config
    assert 1 <= spec.n_trials() <= 4


BAD = [
    ("name", with_(name="a b"), "s.yaml: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$' (got 'a b')"),
    ("missing trainable", with_(trainable=...), "s.yaml: trainable: Field required"),
    ("unknown trainable", with_(trainable="nope"), "s.yaml: trainable: unknown trainable 'nope'; known: digit_pairs"),
    ("unknown top key", with_(epochs=3), "s.yaml: epochs: Extra inputs are not permitted (got 3)"),
    (
        "bad source",
        with_(data__source="cifar"),
        "s.yaml: data.source: Input should be 'mnist', 'mnist-5k', 'cifar10', 'cifar100', 'svhn', 'imagenet' or 'imagenet-subset' (got 'cifar')",
    ),
    (
        "unknown fixed key",
        with_(fixed__epochz=3),
        "s.yaml: fixed.epochz: unknown config key for trainable digit_pairs; known: ",
    ),
    (
        "reversed range",
        with_(space__lr={"loguniform": [0.1, 0.001]}),
        "s.yaml: space.lr.loguniform: low < high must hold, but got low=0.1, high=0.001",
    ),
    (
        "log of zero",
        with_(space__lr={"loguniform": [0, 0.1]}),
        "s.yaml: space.lr.loguniform: low > 0 must hold for a log scale, but got low=0.0",
    ),
    (
        "unknown domain",
        with_(space__lr={"normal": [0, 1]}),
        "s.yaml: space.lr: must be a mapping with exactly one of grid, choice, uniform, loguniform, randint, but got {'normal': [0, 1]}",
    ),
    (
        "empty grid",
        with_(space__arch={"grid": []}),
        "s.yaml: space.arch.grid: List should have at least 1 item after validation, not 0 (got [])",
    ),
    (
        "grid repeats a value",
        with_(space__arch={"grid": ["ConvNet", "ConvNet"]}),
        "s.yaml: space.arch.grid: grid values must be distinct (each is run once per seed), but 'ConvNet' is repeated",
    ),
    ("repeats zero", with_(repeats=0), "s.yaml: repeats: Input should be greater than or equal to 1 (got 0)"),
    ("mode", with_(mode="maximum"), "s.yaml: mode: Input should be 'max' or 'min' (got 'maximum')"),
    ("seed in space", with_(fixed__seed=1), "s.yaml: (top level): seed is set by repeats/seeds, not by space or fixed"),
    (
        "optuna with grid",
        with_(search={"algorithm": "optuna"}),
        "s.yaml: (top level): optuna cannot search grid axes (arch); use choice: [...] instead",
    ),
    ("negative cpu", with_(resources={"cpu": 0}), "s.yaml: resources.cpu: Input should be greater than 0 (got 0)"),
    (
        "unknown metric",
        with_(metric="accuracy"),
        "s.yaml: metric: digit_pairs reports no metric 'accuracy'; known: ",
    ),
    (
        "mode against the declared direction",
        with_(metric="test_loss", mode="max"),
        "s.yaml: mode: digit_pairs declares test_loss lower is better, so mode must be min, but got max",
    ),
    (
        "paper metric",
        with_(paper={"results": [{"label": "x", "metric": "test_accuracy", "value": 0.9}]}),
        "s.yaml: paper.results.0.metric: digit_pairs reports no metric 'test_accuracy'; known: ",
    ),
    ("empty seeds", with_(repeats=..., seeds=[]), "s.yaml: seeds: List should have at least 1 item after validation"),
    ("long name", with_(name="x" * 101), "s.yaml: name: String should have at most 100 characters"),
    (
        "paper where unknown",
        with_(paper={"results": [{"label": "x", "where": {"depth": 3}, "metric": "test_acc", "value": 0.9}]}),
        "s.yaml: paper.results.0.where.depth: not a config key of digit_pairs",
    ),
]


@pytest.mark.parametrize("raw,expected", [(r, e) for _, r, e in BAD], ids=[n for n, _, _ in BAD])
def test_bad_specs_one_line_messages(tmp_path: Path, raw: dict, expected: str) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(UserError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.replace(str(tmp_path) + "/", "").startswith(expected), msg


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nspace: {lr: [1,\n")
    with pytest.raises(UserError, match=r"s\.yaml: line \d+, column \d+: invalid YAML"):
        load_spec(path)


def test_missing_file() -> None:
    with pytest.raises(UserError, match="nope.yaml: no such spec file"):
        load_spec("nope.yaml")


@pytest.mark.parametrize(
    "override,expected",
    [("epochs", "--set 'epochs': must be KEY=VALUE"), ("a..b=1", "--set 'a..b=1': key path must be non-empty"),
     ("name.x=1", "--set name.x=1: name is not a mapping")],
)  # fmt: skip
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        apply_overrides({"name": "x"}, [override])


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"space__arch": {"grid": ["Foo"]}}, "s.yaml: space.arch: unknown net 'Foo'; known: FconnNet, ConvNet, parallelConv, Siamese"),
        ({"space__arch": {"grid": ["ConvNet", "Foo"]}}, "s.yaml: space.arch: unknown net 'Foo'"),
        ({"fixed__weight_sharing": True, "space__arch": {"grid": ["FconnNet"]}}, "s.yaml: weight_sharing=true needs a two-branch net"),
        # types and rules of single values, named by the section that sets them
        ({"fixed__lr": -1, "space__lr": ...}, "s.yaml: fixed.lr: Input should be greater than 0 (got -1)"),
        ({"fixed__lr": "0.01", "space__lr": ...}, "s.yaml: fixed.lr: Input should be a valid number (got '0.01')"),
        ({"fixed__epochs": 2.5}, "s.yaml: fixed.epochs: Input should be a valid integer (got 2.5)"),
        ({"fixed__momentum": 1.0}, "s.yaml: fixed.momentum: Input should be less than 1 (got 1.0)"),
        ({"fixed__lr_milestones": [3, 0]}, "s.yaml: fixed.lr_milestones[1]: Input should be greater than or equal to 1 (got [3, 0])"),
        ({"fixed__optimizer": "lbfgs"}, "s.yaml: fixed.optimizer: Input should be 'sgd', 'adam' or 'adamw' (got 'lbfgs')"),
        ({"fixed__device": "gpu"}, "s.yaml: fixed.device: String should match pattern"),
        ({"space__aux_loss": {"grid": [True, "no"]}}, "s.yaml: space.aux_loss: Input should be a valid boolean (got 'no')"),
        ({"space__batch_size": {"uniform": [10, 100]}}, "s.yaml: space.batch_size: Input should be a valid integer (got 10.0)"),
        ({"data__n_train": 0}, "s.yaml: data.n_train: Input should be greater than or equal to 1 (got 0)"),
        ({"fixed__device": "cuda:1"}, "s.yaml: fixed.device: cuda:1 needs resources.gpu > 0 (got gpu 0)"),
    ],
)  # fmt: skip
def test_bad_values_fail_at_validation(tmp_path: Path, changes: dict, expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_spec(write(tmp_path, with_(**changes)))
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(expected), str(info.value)


def test_share_split_value_and_size_checks(tmp_path: Path) -> None:
    from study.spec import check_configs
    from trainables.data import load_mnist

    raw = {"name": "s", "trainable": "share_split", "data": {"source": "mnist-5k"},
           "space": {"head": {"grid": ["share", "split"]}, "features": {"grid": [40, 42]}}}  # fmt: skip
    with pytest.raises(UserError, match=r"features must be a multiple of 5 for head=split.*at features=42, head=split"):
        load_spec(write(tmp_path, raw))
    raw["space"] = {"train_images": {"grid": [250, 3000]}}
    spec = load_spec(write(tmp_path, raw))  # sizes need the data: fine without it
    msg = r"^s\.yaml: space\.train_images: must be at most the train split size of mnist-5k \(2500\) \(got 3000\)$"
    with pytest.raises(UserError, match=msg):
        check_configs(spec, "s.yaml", load_mnist("mnist-5k"))


def test_smoke_with_searched_epochs(tmp_path: Path) -> None:
    spec = smoke_spec(load_spec(write(tmp_path, with_(fixed={}, space={"epochs": {"grid": [5, 10]}}))), {"epochs": 1})
    assert spec.fixed["epochs"] == 1 and "epochs" not in spec.space


def test_yaml_numbers_in_exponent_form_are_floats(tmp_path: Path) -> None:
    """PyYAML alone reads `1e-3` as a string; specs (and --set) read it as YAML 1.2 does."""
    text = (
        "name: t\ntrainable: digit_pairs\ndata: {source: mnist-5k}\nfixed: {lr: 1e-3, weight_decay: 5E-4, epochs: 2}\n"
    )
    assert yaml.safe_load(text)["fixed"]["lr"] == "1e-3"  # what this guards against
    spec = load_spec(write(tmp_path, text), ["fixed.lr_gamma=1e-1", "fixed.aux_weight=2"])
    assert spec.fixed["lr"] == 0.001 and spec.fixed["weight_decay"] == 0.0005 and spec.fixed["lr_gamma"] == 0.1
    assert type(spec.fixed["aux_weight"]) is int and type(spec.fixed["epochs"]) is int  # ints stay ints
    assert load_yaml("a: -.5\nb: +.5e1\nc: 1.5\n") == {"a": -0.5, "b": 5.0, "c": 1.5}
    # anchors and merge keys still work, and a merged key may be overridden (not a duplicate)
    assert load_yaml("base: &b {x: 1, y: 2}\nc: {<<: *b, y: 3}\n")["c"] == {"x": 1, "y": 3}
    assert spec.name == "t"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: a\ntrainable: digit_pairs\nname: b\n", "s.yaml: line 3, column 1: invalid YAML (duplicate key 'name')"),
        ("name: t\ntrainable: digit_pairs\ndata: {source: mnist-5k}\nfixed: {aux_loss: yes}\n",
         "s.yaml: fixed.aux_loss: Input should be a valid boolean (got 'yes')"),  # YAML 1.2: only true/false
    ],
)  # fmt: skip
def test_yaml_1_2_rules(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_spec(write(tmp_path, text))
    assert str(info.value).replace(str(tmp_path) + "/", "") == expected


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UserError, match=r"s\.yaml: not a UTF-8 text file \(byte 9: invalid continuation byte\)"):
        load_spec(path)


def test_a_recorded_spec_without_a_newer_key_resumes(tmp_path: Path) -> None:
    """A study recorded before a key existed reads that key at its default: no difference, so it resumes."""
    import yaml

    from study.run.resume import spec_difference, with_defaults
    from study.spec import spec_to_yaml

    spec = load_spec(write(tmp_path, GOOD))
    recorded = yaml.safe_load(spec_to_yaml(spec))
    del recorded["search"]["grid"], recorded["max_failures"]  # as an older version wrote it
    assert spec_difference(recorded, yaml.safe_load(spec_to_yaml(spec))) is not None
    assert spec_difference(with_defaults(recorded), yaml.safe_load(spec_to_yaml(spec))) is None
    assert with_defaults({"not": "a spec"}) == {"not": "a spec"}


def test_a_spec_pickled_by_an_older_version_reads_new_fields_at_their_defaults(tmp_path: Path) -> None:
    """The progress callback in a study's tuner.pkl holds a pickled spec: one pickled before a field
    (or a private cache) existed still works (`Spec.n_trials` of a resumed study)."""
    import pickle

    spec = load_spec(write(tmp_path, GOOD))
    state = spec.__getstate__()
    old_dict = {k: v for k, v in state["__dict__"].items() if k != "max_failures"}
    old = pickle.loads(pickle.dumps(spec))
    old.__setstate__({**state, "__dict__": old_dict, "__pydantic_private__": None})  # as an older version wrote it
    assert old.max_failures == type(spec).model_fields["max_failures"].default
    assert old.n_trials() == spec.n_trials()
    search = pickle.loads(pickle.dumps(spec.search))  # a section (the Search model) likewise
    search.__setstate__({**search.__getstate__(), "__dict__": {"algorithm": "grid"}})
    assert search.grid == "product" and search.num_samples == 1
