"""Search-space YAML: parsed once into typed objects, turned into Ray Tune domains in one place.

A spec file (see ``search_spaces/*.yaml`` and the README) names a trainable, its data, the fixed
config, the searched space, repeats (seeds), the metric, resources, search algorithm, scheduler
and the paper's reported numbers. `load_spec` reads and validates it; every error is one line
naming the file, the key path, the rule and the value. `to_param_space` is the only function
that creates Ray Tune domains.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from study.errors import UserError, one_line, short


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Grid(_Strict):
    grid: list[Any] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for v in values:  # linear: a 100,000-value axis is checked in milliseconds, before the size limits
            key = _equality_key(v)
            if key in seen:
                raise ValueError(f"grid values must be distinct (each is run once per seed), but {short(v)} is repeated")
            seen.add(key)
        return values


def _equality_key(v: Any) -> Any:
    """A hashable stand-in for a YAML value that is equal for values that are == (1, 1.0 and True
    alike, as in Python), lists and mappings included."""
    if isinstance(v, list):
        return ("list", tuple(_equality_key(x) for x in v))
    if isinstance(v, dict):
        return ("dict", frozenset((k, _equality_key(x)) for k, x in v.items()))
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return v


class Choice(_Strict):
    choice: list[Any] = Field(min_length=1)


class _Range(_Strict):
    @staticmethod
    def _check(lo: float, hi: float, positive: bool = False) -> None:
        if not lo < hi:
            raise ValueError(f"low < high must hold, but got low={lo}, high={hi}")
        if positive and lo <= 0:
            raise ValueError(f"low > 0 must hold for a log scale, but got low={lo}")


class Uniform(_Range):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        self._check(*self.uniform)
        return self


class LogUniform(_Range):
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        self._check(*self.loguniform, positive=True)
        return self


class RandInt(_Range):
    randint: tuple[int, int]  # high exclusive, as in ray.tune.randint

    @model_validator(mode="after")
    def _ordered(self) -> RandInt:
        self._check(*self.randint)
        return self


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # study names: directory names, no slashes
NAME_MAX = 100


def check_name(name: str, what: str = "study name") -> str:
    """A study name is a directory name: NAME_PATTERN, at most NAME_MAX characters."""
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= NAME_MAX):
        raise UserError(
            f"{what} {name!r}: must be 1-{NAME_MAX} letters, digits, _ . - starting with a letter or digit (no slashes)"
        )
    return name


DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
Domain = Annotated[
    Annotated[Grid, Tag("grid")]
    | Annotated[Choice, Tag("choice")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[RandInt, Tag("randint")],
    Discriminator(lambda v: next(iter(v)) if isinstance(v, dict) else next(iter(type(v).model_fields))),
]


DATA_SOURCES = ("mnist", "mnist-5k", "cifar10", "cifar100", "svhn", "imagenet", "imagenet-subset")


class Data(BaseModel):
    """`source` picks the loader; `root` the download cache (or, for imagenet, your copy);
    `classes_file` the class list of imagenet-subset; other keys are trainable config keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    source: Literal[DATA_SOURCES]
    root: str | None = None
    classes_file: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def options(self) -> dict[str, Any]:
        """Loader keyword options beyond source and root (only those set)."""
        return {"classes_file": self.classes_file} if self.classes_file else {}


class Resources(_Strict):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=1)  # issue 13: > 1 = data-parallel trial (each worker cpu/gpu)


class Search(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1)  # samples per grid point (grid/random), configs (optuna)
    seed: int | None = None  # seed of the search algorithm itself
    max_concurrent: int | None = Field(default=None, ge=1)
    # how grid axes combine: product (every combination) | cover (a covering set, see `grid_points`)
    grid: Literal["product", "cover"] = "product"


class Scheduler(_Strict):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, ge=1)  # epochs before a trial may be stopped
    reduction_factor: float = Field(default=3, gt=1)


class PaperResult(_Strict):
    label: str
    where: dict[str, Any] = Field(default_factory=dict)
    metric: str
    value: float
    std: float | None = None
    # the data the paper measured it on (default: the file's data.source, before any --set); a
    # study on another source shows the row as reference only, without a reproduced verdict
    dataset: str | None = None
    # |ours - paper| that still counts as reproduced (default: std, else 3 points for fractions)
    tolerance: float | None = Field(default=None, gt=0)


class Claim(_Strict):
    """A directional claim: group `a` has a greater (or less) `metric` than group `b`.

    Groups are `where` filters on the trials (as paper rows have), both also restricted by the
    shared `where`; with `within`, the comparison is made within each level (combination of
    values) of those keys, e.g. per training-set size."""

    label: str
    quote: str = ""  # the paper's words
    metric: str
    a: dict[str, Any] = Field(min_length=1)
    b: dict[str, Any] = Field(min_length=1)
    direction: Literal["greater", "less"] = "greater"  # a > b | a < b
    where: dict[str, Any] = Field(default_factory=dict)
    within: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _two_groups(self) -> Claim:
        if self.a == self.b:
            raise ValueError("a and b must select different groups, but they are equal")
        return self


class Paper(_Strict):
    citation: str = ""
    results: list[PaperResult] = Field(default_factory=list)
    claims: list[Claim] = Field(default_factory=list)


class Spec(_Strict):
    """A whole study. Field meanings are in the README's "Search-space YAML" section."""

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    description: str = ""
    trainable: str
    data: Data
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Domain] = Field(default_factory=dict)
    repeats: int | None = Field(default=None, ge=1)
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    metric: str = "test_acc"
    mode: Literal["max", "min"] = "max"
    resources: Resources = Resources()
    search: Search = Search()
    scheduler: Scheduler = Scheduler()
    max_failures: int = Field(default=3, ge=0)  # retries of a crashed trial (from its last checkpoint)
    pack: int = Field(default=1, ge=1)  # issue 13: trials trained together as one vectorised model (study/shapes.py)
    paper: Paper = Paper()

    @model_validator(mode="before")
    @classmethod
    def _paper_datasets(cls, raw: Any) -> Any:
        return default_paper_datasets(raw)

    @field_validator("space", mode="before")
    @classmethod
    def _one_kind(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space
        for key, dom in space.items():
            if not isinstance(dom, dict) or len(dom) != 1 or next(iter(dom)) not in DOMAIN_KINDS:
                raise ValueError(
                    f"space.{key}: must be a mapping with exactly one of {', '.join(DOMAIN_KINDS)}, but got {short(dom)}"
                )
        return space

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        if self.repeats is not None and self.seeds is not None:
            raise ValueError("give either repeats or seeds, not both")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, but got {short(self.seeds)}")
        if "seed" in self.space or "seed" in self.fixed:
            raise ValueError("seed is set by repeats/seeds, not by space or fixed")
        both = sorted(set(self.space) & (set(self.fixed) | set(self.data.config)))
        if both:
            raise ValueError(f"key(s) {', '.join(both)} both searched (space) and fixed; keep one")
        if self.search.algorithm == "optuna":
            grids = [k for k, d in self.space.items() if isinstance(d, Grid)]
            if grids:
                raise ValueError(f"optuna cannot search grid axes ({', '.join(grids)}); use choice: [...] instead")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.repeats or 1))

    @property
    def grid_axes(self) -> list[str]:
        return [k for k, d in self.space.items() if isinstance(d, Grid)]

    def base_config(self) -> dict[str, Any]:
        """The trial config before sampling: data keys, then fixed keys."""
        return {**self.data.config, **self.fixed}

    def n_trials(self) -> int:
        sizes = [len(d.grid) for d in self.space.values() if isinstance(d, Grid)]
        grid = max(sizes, default=1) if self.search.grid == "cover" else math.prod(sizes)
        return grid * self.search.num_samples * self.n_seeds

    @property
    def n_seeds(self) -> int:
        """len(seed_list) without building the list (repeats are checked against MAX_REPEATS after this)."""
        return len(self.seeds) if self.seeds is not None else (self.repeats or 1)


def default_paper_datasets(raw: Any) -> Any:
    """`raw` with ``dataset: <data.source>`` on each ``paper.results`` row that has none (a copy;
    anything malformed is left for validation to report)."""
    try:
        source, rows = raw["data"]["source"], raw["paper"]["results"]
    except (KeyError, TypeError):
        return raw
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return raw
    if all(r.get("dataset") is not None for r in rows):
        return raw
    rows = [r if r.get("dataset") is not None else {**r, "dataset": source} for r in rows]
    return {**raw, "paper": {**raw["paper"], "results": rows}}


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic adds the union member's name (e.g. "Grid") to the location: drop those
    parts: list[str] = []
    for p in map(str, loc):
        if p[:1].isupper() or (parts and parts[-1] == p):  # union member names; a tag repeating its field
            continue
        parts.append(p)
    return ".".join(parts) or "(top level)"


def _format_error(path: str, err: ValidationError) -> str:
    errors = err.errors()
    # a union failure reports every member; the most useful is the one deepest into the value
    first = max(errors, key=lambda e: len(e["loc"])) if errors else None
    if first is None:
        return f"{path}: invalid spec"
    msg = first["msg"].removeprefix("Value error, ")
    where = _loc(first["loc"])
    value = first.get("input")
    shown = "" if first["type"] == "missing" or "got" in msg or not first["loc"] else f" (got {short(value)})"
    if msg.startswith(f"{where}."):  # the validator named the exact key path itself
        where, msg = msg.split(": ", 1)
    extra = len({_loc(e["loc"]) for e in errors}) - 1
    more = f" [+{extra} more error(s)]" if extra > 0 else ""
    return f"{path}: {where}: {msg}{shown}{more}"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with three YAML 1.2 rules: `1e-3`, `5E4` and `-.5` are floats (PyYAML's
    YAML 1.1 makes strings of them), only true/false are booleans (not yes/no/on/off), and a key
    given twice in one mapping is an error (not "the last one wins"). Integers are as in PyYAML."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# Limits checked before anything is built from a spec (a seed list, a grid, a YAML value): each
# stops a typo (repeats=1e9, a 3x10^10 grid) or a hostile file before it eats the machine's memory.
MAX_TRIALS = 100_000  # trials in one study (grid points x samples x seeds)
MAX_REPEATS = 1_000  # seeds per configuration (repeats, or the length of seeds)
MAX_SAMPLES = 100_000  # search.num_samples
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings in one YAML document, aliases expanded


def check_limits(spec: Spec, path: str | Path) -> None:
    """One-line errors for studies too large to run (`MAX_TRIALS`, `MAX_REPEATS`, `MAX_SAMPLES`),
    computed from sizes only (nothing is materialised)."""
    key = "seeds" if spec.seeds is not None else "repeats"
    if spec.n_seeds > MAX_REPEATS:
        raise UserError(f"{path}: {key}: at most {MAX_REPEATS:,} seeds per configuration (got {spec.n_seeds:,})")
    if spec.search.num_samples > MAX_SAMPLES:
        raise UserError(
            f"{path}: search.num_samples: at most {MAX_SAMPLES:,} (got {spec.search.num_samples:,})"
        )
    n = spec.n_trials()
    if n > MAX_TRIALS:
        sizes = [f"{len(d.grid)} {k}" for k, d in spec.space.items() if isinstance(d, Grid)]
        factors = " x ".join([*sizes, f"{spec.search.num_samples} samples", f"{spec.n_seeds} seeds"])
        raise UserError(
            f"{path}: space: the study would run {n:.3g} trials ({one_line(factors, 200)}); at most {MAX_TRIALS:,} "
            "per study: split it into several studies or search it with optuna/random num_samples"
        )


class _TooLarge(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _check_expansion(root: yaml.Node, limit: int = MAX_YAML_VALUES) -> None:
    """Raise `_TooLarge` when the document, with every alias expanded, has more than `limit` values
    (nested aliases: a 1 KB file can stand for billions). Sizes are memoised per node, so this is
    linear in the file, and a recursive alias is an error too."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if not children_done:
            if sizes.get(id(node)) == -1:
                raise _TooLarge("a recursive alias (an anchor used inside itself)", node.start_mark)
            sizes[id(node)] = -1  # in progress
            stack.append((node, True))
            for k in kids:
                if sizes.get(id(k)) == -1:
                    raise _TooLarge("a recursive alias (an anchor used inside itself)", k.start_mark)
                if id(k) not in sizes:
                    stack.append((k, False))
            continue
        total = 1 + sum(sizes[id(k)] for k in kids)
        if total > limit:
            raise _TooLarge(
                f"more than {limit:,} values once aliases are expanded (nested aliases?); write the values out",
                node.start_mark,
            )
        sizes[id(node)] = total


def load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=VALUE` -> (["a", "b"], VALUE parsed as YAML)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: must be KEY=VALUE with a dotted key path, e.g. fixed.epochs=2")
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {item!r}: key path must be non-empty names joined by dots")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:  # not silently a string: say what is wrong and how to pass text
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(
            f"--set {short(item)}: the value is not valid YAML ({problem}); "
            f"quote it to pass text, e.g. --set '{key}=\"...\"'"
        ) from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted key paths in a raw spec dict (copies; creates intermediate mappings)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {one_line(item, 200)}: {'.'.join(parts[: i + 1])} is not a mapping (got {short(nxt)})")
            node = nxt
        node[parts[-1]] = value
    return out


MAX_SPEC_BYTES = 4_000_000  # a spec file (the 800-trial grid is 3 KB)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such spec file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise UserError(f"{path}: a spec file is at most {MAX_SPEC_BYTES:,} bytes (got {path.stat().st_size:,})")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: {where}invalid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: (top level): must be a mapping of keys, but got {type(raw).__name__}")
    return raw


def parse_spec(raw: dict[str, Any], path: str | Path = "<spec>") -> Spec:
    """Validate a raw dict into a `Spec`, including the trainable's known keys."""
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise UserError(_format_error(str(path), e)) from None
    check_limits(spec, path)
    check_keys(spec, path)
    check_configs(spec, path)
    from study.shapes import check_shape  # issue 13 hook: the rules of pack and resources.workers

    check_shape(spec, path)
    return spec


def example_configs(spec: Spec, limit: int = 1000, shaping: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Configs covering the space for cheap checks: every grid point (up to `limit`), then each
    choice value and each range end substituted into the first grid point. Keys in `shaping` (the
    ones that shape the model, for `--models`) searched as choice or randint are combined with
    each other and with every grid point (a randint of at most 64 values by each of its values),
    so that every distinct model of the space is among the configs (up to `limit`)."""
    import itertools

    base = spec.base_config()
    grid = {k: d.grid for k, d in spec.space.items() if isinstance(d, Grid)}
    points = [dict(zip(grid, combo)) for combo in itertools.islice(itertools.product(*grid.values()), limit)]
    first = points[0] if points else {}
    sampled: dict[str, list[Any]] = {}
    for key, dom in spec.space.items():
        if isinstance(dom, Choice):
            sampled[key] = list(dom.choice)
        elif isinstance(dom, Uniform | LogUniform):
            sampled[key] = list(getattr(dom, "uniform", None) or dom.loguniform)
        elif isinstance(dom, RandInt):
            sampled[key] = [dom.randint[0], dom.randint[1] - 1]
    defaults = {k: v[0] for k, v in sampled.items()}
    configs = [{**base, **defaults, **p} for p in points] or [{**base, **defaults}]
    for key, values in sampled.items():
        configs += [{**base, **defaults, **first, key: v} for v in values[1:]]
    combos: list[dict[str, Any]] = [{}]
    for key, dom in spec.space.items():
        if key not in shaping or not isinstance(dom, Choice | RandInt):
            continue
        lo, hi = dom.randint if isinstance(dom, RandInt) else (0, 0)
        values = list(dom.choice) if isinstance(dom, Choice) else list(range(lo, hi)) if hi - lo <= 64 else sampled[key]
        combos = [{**c, key: v} for c in combos for v in values][:limit]
    if combos != [{}]:
        configs += [{**base, **defaults, **p, **c} for p in points or [{}] for c in combos][:limit]
    return configs


def check_configs(spec: Spec, path: str | Path, data: Any = None) -> None:
    """Check `example_configs` before any trial: each value's type and rule (`resolve_config`), then
    the trainable's own `check` (with `data`: also the data sizes). One-line `UserError`s naming the
    section that sets the key (`fixed.lr: ...`)."""
    from trainables import get_family
    from trainables.common import ConfigError, resolve_config

    family = get_family(spec.trainable)
    sections = {**{k: "data" for k in spec.data.config}, **{k: "fixed" for k in spec.fixed}}
    for config in example_configs(spec):
        try:
            cfg = resolve_config(family, {**config, "seed": spec.seed_list[0]})
            if str(cfg["device"]).startswith("cuda") and spec.resources.gpu == 0:
                raise ConfigError(family.name, "device", f"{cfg['device']} needs resources.gpu > 0 (got gpu 0)")
            if family.check is not None:
                family.check(cfg, data)
        except ConfigError as e:  # a rule of one value: name the key where the file sets it
            key = e.key.split("[")[0]
            where = f"{sections[key]}.{e.key}" if key in sections else f"space.{e.key}" if key in spec.space else e.key
            raise UserError(f"{path}: {where}: {e.detail}") from None
        except UserError as e:
            shown = one_line(", ".join(f"{k}={config[k] if isinstance(config[k], (str, int, float)) and len(str(config[k])) <= 40 else short(config[k], 40)}" for k in spec.space if k in config), 300)
            raise UserError(f"{path}: {e}" + (f" (at {shown})" if shown else "")) from None


def check_keys(spec: Spec, path: str | Path) -> None:
    """Every config key must be known to the trainable (values: `check_configs`)."""
    from trainables import REGISTRY

    family = REGISTRY.get(spec.trainable)
    if family is None:
        raise UserError(
            f"{path}: trainable: unknown trainable {spec.trainable!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    if family.sources is not None and spec.data.source not in family.sources:
        raise UserError(
            f"{path}: data.source: {family.name} reads {', '.join(family.sources)}, not {spec.data.source!r}"
        )
    known = family.all_defaults
    for section, keys in (("data", spec.data.config), ("fixed", spec.fixed), ("space", spec.space)):
        for key in keys:
            if key not in known:
                raise UserError(
                    f"{path}: {section}.{key}: unknown config key for trainable {family.name}; "
                    f"known: {', '.join(sorted(known))}"
                )
    metrics = ", ".join(family.metrics + tuple(f"/{p}/" for p in family.metric_patterns))
    if not family.knows_metric(spec.metric):
        raise UserError(f"{path}: metric: {family.name} reports no metric {spec.metric!r}; known: {metrics}")
    hp = set(known) | {"seed"}
    for i, r in enumerate(spec.paper.results):
        for key in r.where:
            if key not in hp:
                raise UserError(f"{path}: paper.results.{i}.where.{key}: not a config key of {family.name}")
        if r.metric != "params" and not family.knows_metric(r.metric):  # params: every trial reports it
            raise UserError(
                f"{path}: paper.results.{i}.metric: {family.name} reports no metric {r.metric!r}; "
                f"known: {metrics}, params"
            )
    for i, c in enumerate(spec.paper.claims):
        for part in ("where", "a", "b"):
            for key in getattr(c, part):
                if key not in hp:
                    raise UserError(f"{path}: paper.claims.{i}.{part}.{key}: not a config key of {family.name}")
        for key in c.within:
            if key not in hp:
                raise UserError(f"{path}: paper.claims.{i}.within: {key!r} is not a config key of {family.name}")
        if not family.knows_metric(c.metric):
            raise UserError(
                f"{path}: paper.claims.{i}.metric: {family.name} reports no metric {c.metric!r}; known: {metrics}"
            )


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override (``--set``) and validate a spec file."""
    path = Path(path)
    raw = apply_overrides(default_paper_datasets(read_yaml(path)), overrides or [])  # datasets: the file's source
    return parse_spec(raw, path)


def smoke_spec(spec: Spec, family_smoke: dict[str, Any]) -> Spec:
    """A tiny version of any spec that still covers it: one seed, one epoch, the family's small data
    sizes, on the bundled MNIST sample, and a covering set of the grid (``search.grid: cover``):
    every value of every grid axis at least once, in as many configurations as the longest axis
    has values (see `grid_points`). Grid values that cannot run on the bundled sample (the family's
    ``check`` rejects them, e.g. ``train_images: 55000`` > 2,500 images) are left out, and the
    smoke spec's description says which. A searched ``epochs`` axis becomes one epoch."""
    raw = spec.model_dump(mode="python")
    raw["data"]["source"] = "mnist-5k"
    raw["seeds"], raw["repeats"] = [spec.seed_list[0]], None
    raw["fixed"] = {**raw["fixed"], **{k: v for k, v in family_smoke.items() if k not in spec.space}, "epochs": 1}
    raw["data"] = {k: v for k, v in raw["data"].items() if k in ("source", "root") or k not in family_smoke}
    raw["name"] = f"{spec.name[: NAME_MAX - len('-smoke')]}-smoke"
    space = {}
    for key, dom in spec.space.items():
        if key == "epochs":  # one epoch, whatever the space says
            continue
        space[key] = {"grid": list(dom.grid)} if isinstance(dom, Grid) else dom.model_dump(mode="python")
    raw["space"] = space
    dropped = _unfit_grid_values(raw, spec.seed_list[0])
    for key, values in dropped.items():
        space[key]["grid"] = [v for v in space[key]["grid"] if v not in values]
    if dropped:
        left_out = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in dropped.items())
        raw["description"] = f"{raw['description']} (smoke: left out, too big for the bundled sample: {left_out})"
    raw["search"] = {**raw["search"], "num_samples": min(spec.search.num_samples, 2 if not spec.grid_axes else 1)}
    if spec.search.algorithm == "optuna":
        raw["search"]["num_samples"] = 2
    raw["search"]["grid"] = "cover"
    raw["scheduler"] = {"type": "none"}
    return parse_spec(raw, f"{spec.name} (--smoke)")


def _unfit_grid_values(raw: dict[str, Any], seed: int) -> dict[str, list[Any]]:
    """Grid values of a smoke spec (raw) that the family's ``check`` rejects on the smoke data,
    each tried with the other axes at their first value: {key: [values]} (at least one value kept)."""
    from trainables import REGISTRY
    from trainables.common import resolve_config

    family = REGISTRY.get(raw["trainable"])
    grids = {k: d["grid"] for k, d in raw["space"].items() if "grid" in d}
    if family is None or family.check is None or not grids:
        return {}
    data = family.load_data(raw["data"]["source"], raw["data"].get("root"))
    data_keys = {k: v for k, v in raw["data"].items() if k not in Data.model_fields}  # trainable keys only
    base = {**data_keys, **raw["fixed"], "seed": seed}
    first = {k: v[0] for k, v in grids.items()}
    dropped: dict[str, list[Any]] = {}
    for key, values in grids.items():
        bad = []
        for value in values:
            try:
                family.check(resolve_config(family, {**base, **first, key: value}), data)
            except UserError:
                bad.append(value)
        if bad and len(bad) < len(values):
            dropped[key] = bad
    return dropped


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """The grid configurations a spec runs (per seed and sample), in Ray's order.

    ``search.grid: product``: every combination of the grid axes. ``cover``: a covering set with
    as many configurations as the longest axis (the first longest is the *lead*): configuration i
    takes the lead's i-th value and value i mod m of every other axis with m values (Latin-style),
    so every value of every axis appears at least once."""
    import itertools

    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    if spec.search.grid == "cover" and axes:
        n = max(len(v) for v in axes.values())
        return [{k: v[i % len(v)] for k, v in axes.items()} for i in range(n)]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


class CoverValue:
    """Ray Tune ``sample_from`` function of a covering set (`grid_points`): the value of one axis
    for the configuration whose lead-axis value Ray's grid search picked. Picklable (no closure)."""

    def __init__(self, lead: str, lead_values: list[Any], values: list[Any]) -> None:
        self.lead, self.lead_values, self.values = lead, lead_values, values

    def __call__(self, spec: Any) -> Any:
        i = self.lead_values.index(spec.config[self.lead])
        return self.values[i % len(self.values)]


def to_param_space(spec: Spec, *, with_seeds: bool = True) -> dict[str, Any]:
    """The one place where a spec becomes Ray Tune domains (grid_search, choice, ...)."""
    from ray import tune

    space: dict[str, Any] = dict(spec.base_config())
    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    lead = max(axes, key=lambda k: len(axes[k])) if spec.search.grid == "cover" and len(axes) > 1 else None
    for key, dom in spec.space.items():
        if isinstance(dom, Grid) and lead is not None and key != lead:  # covering set: follows the lead axis
            space[key] = tune.sample_from(CoverValue(lead, axes[lead], list(dom.grid)))
        elif isinstance(dom, Grid):
            space[key] = tune.grid_search(list(dom.grid))
        elif isinstance(dom, Choice):
            space[key] = tune.choice(list(dom.choice))
        elif isinstance(dom, Uniform):
            space[key] = tune.uniform(*dom.uniform)
        elif isinstance(dom, LogUniform):
            space[key] = tune.loguniform(*dom.loguniform)
        elif isinstance(dom, RandInt):
            space[key] = tune.randint(*dom.randint)
    if with_seeds:
        seeds = spec.seed_list
        space["seed"] = tune.grid_search(seeds) if len(seeds) > 1 else seeds[0]
    return space


def spec_to_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=False), sort_keys=False)
