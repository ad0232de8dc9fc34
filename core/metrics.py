"""Metric semantics: each metric's direction (is lower or higher better) and unit, declared by the
family that reports it (``Family.metric_semantics``), never guessed from its name.

Units: ``fraction`` (0-1, e.g. accuracy), ``percent`` (0-100, e.g. ``test_err_pct``), ``count``
(parameters, FLOPs), ``seconds``, ``MB`` (MiB), ``loss`` (a training objective: unbounded above,
non-negative), ``ratio`` (a unitless number, may be negative), ``points`` (a difference of
percentages or fractions, e.g. an ensemble gain, may be negative).

The runner writes the semantics of every reported metric into ``trials.parquet``'s metadata, so
the analysis reads them from the study (no import of the family, no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

Direction = Literal["min", "max"]
Unit = Literal["fraction", "percent", "count", "seconds", "MB", "loss", "ratio", "points"]
UNITS: tuple[str, ...] = ("fraction", "percent", "count", "seconds", "MB", "loss", "ratio", "points")
DIRECTIONS: tuple[str, ...] = ("min", "max")

# bounds of each unit: a CI or band is clipped to them (None: unbounded on that side)
UNIT_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "fraction": (0.0, 1.0),
    "percent": (0.0, 100.0),
    "count": (0.0, None),
    "seconds": (0.0, None),
    "MB": (0.0, None),
    "loss": (0.0, None),
    "ratio": (None, None),
    "points": (None, None),
}


@dataclass(frozen=True)
class Metric:
    """What a reported metric means.

    Args:
        direction: ``min`` when lower is better (errors, losses, costs), ``max`` when higher is.
        unit: one of `UNITS`.
        deterministic: the same for every seed of a configuration (parameter counts, FLOPs): judged
            with n = 1, never "more seeds would tell".
    """

    direction: Direction
    unit: Unit
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.unit not in UNITS:
            raise ValueError(f"metric unit must be one of {UNITS}, got {self.unit!r}")

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        return UNIT_BOUNDS[self.unit]

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a < b if self.direction == "min" else a > b

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping) -> Metric:
        return cls(direction=value["direction"], unit=value["unit"], deterministic=bool(value.get("deterministic")))


# Shorthands families use in their declarations
ACCURACY = Metric("max", "fraction")
ERROR_FRACTION = Metric("min", "fraction")
ERROR_PCT = Metric("min", "percent")
LOSS = Metric("min", "loss")
SECONDS = Metric("min", "seconds")
MEMORY_MB = Metric("min", "MB")
COUNT = Metric("min", "count", deterministic=True)  # parameters, FLOPs: fewer is cheaper
GAIN_FRACTION = Metric("max", "points")  # a difference of two accuracies (fractions)
EPOCH = Metric("max", "count")

# Reported by the platform for every trial (trainables.common.run_trial)
PLATFORM_METRICS: dict[str, Metric] = {
    "step_time_s": SECONDS,
    "peak_mem_mb": MEMORY_MB,
    "params": COUNT,
}


def semantics_to_json(semantics: Mapping[str, Metric]) -> dict[str, dict]:
    return {name: m.to_json() for name, m in semantics.items()}


def semantics_from_json(value: Mapping[str, Mapping]) -> dict[str, Metric]:
    return {name: Metric.from_json(m) for name, m in value.items()}
