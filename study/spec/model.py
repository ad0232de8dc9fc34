"""The spec's typed model: a search-space YAML parsed once into frozen pydantic objects.

`Spec` is a whole study; `Grid`, `Choice`, `Uniform`, `LogUniform`, `RandInt` are the domains of
its ``space``; `Data`, `Resources`, `Search`, `Scheduler`, `Paper` its sections. Field meanings are
in the search-space YAML reference of the docs. The checks that need the trainable (known keys, value rules,
packing) are in `study.spec.checks`; reading a file is `study.spec.load`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from core.errors import UserError, short
from study.spec.domains import (  # noqa: F401 (the domains are re-exported: study.spec.model.Grid)
    DOMAIN_KINDS,
    Choice,
    Domain,
    Grid,
    LogUniform,
    RandInt,
    Uniform,
    _equality_key,
    _Strict,
    read_older_pickle,
)
from study.trackers.settings import (
    MLflowSettings,
    TensorBoardSettings,
    Tracker,
    WandbSettings,
    check_log_to,
    check_used,
)
from trainables.sources import DATA_SOURCES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # study names: directory names, no slashes
NAME_MAX = 100


def check_name(name: str, what: str = "study name") -> str:
    """A study name is a directory name: NAME_PATTERN, at most NAME_MAX characters."""
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= NAME_MAX):
        raise UserError(
            f"{what} {name!r}: must be 1-{NAME_MAX} letters, digits, _ . - starting with a letter or digit (no slashes)"
        )
    return name


MAX_GRID_POINTS = 100_000  # grid points materialised to collapse inert duplicates (more: refused by size)



class Data(BaseModel):
    """`source` picks the loader; `root` the download cache (or, for imagenet, your copy);
    `classes_file` the class list of imagenet-subset; other keys are trainable config keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __setstate__ = read_older_pickle
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
    workers: int = Field(default=1, ge=1)  # > 1: a data-parallel (DDP) trial, each worker cpu/gpu


class Search(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1)  # samples per grid point (grid/random), configs (optuna)
    seed: int | None = None  # seed of the search algorithm itself
    max_concurrent: int | None = Field(default=None, ge=1)
    # how grid axes combine: product (every combination) | cover (a covering set, see `grid_points`)
    grid: Literal["product", "cover"] = "product"
    # grid points that differ only in keys the family declares inert there (``inert_keys``):
    # collapse (run one of them, see `study.spec.grid`) | keep (run each). A spec file without
    # it collapses (`study.spec.load.parse_spec`); a recorded spec.yaml without it is a study
    # started before collapsing existed, which keeps its own trials.
    inert: Literal["collapse", "keep"] = "keep"


class Scheduler(_Strict):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, ge=1)  # epochs before a trial may be stopped
    reduction_factor: float = Field(default=3, gt=1)


_Finite = Annotated[float, Field(allow_inf_nan=False)]  # a paper's number: never .inf or .nan
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_PRINTED = r"^\s*[+-]?\d+(\.\d*)?\s*[kKMGB]?\s*%?\s*$"  # a number as a paper prints it: 25.55M, 0.907


class Tolerance(_Strict):
    """How far from the paper a reproduction may be: exactly one of the three (analysis.paper)."""

    absolute: _Positive | None = None  # +/- this, in the metric's unit
    relative: _Positive | None = None  # of the error rate / the gain / the value
    printed: Literal[True] | None = None  # half a unit of the last printed digit of value/printed

    @model_validator(mode="after")
    def _exactly_one(self) -> Tolerance:
        given = [k for k in ("absolute", "relative", "printed") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"tolerance must give exactly one of absolute, relative, printed, but got {given}")
        return self


class PaperResult(_Strict):
    label: str
    where: dict[str, Any] = Field(default_factory=dict)
    metric: str
    # the number, or the string the paper prints ("25.55M": judged as printed)
    value: _Finite | Annotated[str, Field(pattern=_PRINTED)]
    printed: Annotated[str, Field(pattern=_PRINTED)] | None = None  # the value as printed, if rounded
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # over the paper's runs
    # the data the paper measured it on (else the paper block's dataset; "any" for counts); a
    # study on another source shows the row as reference only; a row that names none is refused
    # (`study.spec.checks.check_paper`): a file's data.source never stands in for it
    dataset: str | None = None
    # a number (absolute, in the metric's unit) or one rule; default: the rule of the metric's unit
    tolerance: _Positive | Tolerance | None = None


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
    kind: Literal["direction", "equivalence"] = "direction"  # equivalence: |a - b| < margin (TOST)
    margin: _Positive | None = None

    @model_validator(mode="after")
    def _two_groups(self) -> Claim:
        if self.a == self.b:
            raise ValueError("a and b must select different groups, but they are equal")
        if (self.kind == "equivalence") != (self.margin is not None):
            raise ValueError("kind: equivalence needs a margin, and only an equivalence claim has one")
        return self


class Paper(_Strict):
    citation: str = ""
    dataset: str | None = None  # the data every row was measured on, unless a row says otherwise
    recipe: dict[str, Any] = Field(default_factory=dict)  # the paper's training recipe, e.g. {epochs: 25}
    results: list[PaperResult] = Field(default_factory=list)
    claims: list[Claim] = Field(default_factory=list)


class RunRecord(_Strict):
    """How a study was run, recorded in its resolved ``spec.yaml`` for the analysis to flag: the
    ``--set`` values given against the spec file, and whether it is a ``--smoke`` run."""

    overrides: list[str] = Field(default_factory=list)
    smoke: bool = False


class Spec(_Strict):
    """A whole study. Field meanings are in the search-space YAML reference of the docs."""

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
    # trials trained together as one vectorised model (study.run.shapes); auto: the family's choice per
    # group (trainables.packing.PackSupport.auto_members)
    pack: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    paper: Paper = Paper()
    run: RunRecord | None = None  # written by `study run` into the study's spec.yaml (a file's own is replaced)
    # experiment trackers (study.trackers): which ones, and each one's settings under its name
    log_to: list[Tracker] = Field(default_factory=list)
    tensorboard: TensorBoardSettings | None = None
    mlflow: MLflowSettings | None = None
    wandb: WandbSettings | None = None
    _grid: Any = PrivateAttr(default=None)  # study.spec.grid's cache of the scheduled grid points
    _log_to = field_validator("log_to")(check_log_to)
    _used = field_validator("tensorboard", "mlflow", "wandb")(check_used)

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

    def n_grid_points(self) -> int:
        """Grid points before inert duplicates are collapsed (sizes only, nothing materialised)."""
        sizes = [len(d.grid) for d in self.space.values() if isinstance(d, Grid)]
        return max(sizes, default=1) if self.search.grid == "cover" else math.prod(sizes)

    def n_trials(self) -> int:
        """Trials the study schedules: its grid points (`study.spec.grid.grid_points`: inert
        duplicates collapsed) x samples x seeds. A grid too large to run is counted by its sizes."""
        n = self.n_grid_points()
        if n <= MAX_GRID_POINTS:
            from study.spec.grid import grid_points

            n = len(grid_points(self))
        return n * self.search.num_samples * self.n_seeds

    @property
    def n_seeds(self) -> int:
        """len(seed_list) without building the list (repeats are checked against MAX_REPEATS after this)."""
        return len(self.seeds) if self.seeds is not None else (self.repeats or 1)


def default_paper_datasets(raw: Any) -> Any:
    """`raw` with ``dataset: <paper.dataset>`` on each ``paper.results`` row that has none (a copy).
    The file's ``data.source`` never stands in: a row with neither is refused at validation."""
    try:
        rows, dataset = raw["paper"]["results"], raw["paper"].get("dataset")
    except (KeyError, TypeError, AttributeError):
        return raw
    if dataset is None or not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return raw
    rows = [r if r.get("dataset") is not None else {**r, "dataset": dataset} for r in rows]
    return {**raw, "paper": {**raw["paper"], "results": rows}}
