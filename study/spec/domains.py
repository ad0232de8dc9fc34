"""The domains of a spec's ``space``: `Grid`, `Choice`, `Uniform`, `LogUniform`, `RandInt` (one key
each in the YAML), and `Domain`, their tagged union. Imported by `study.spec.model` and by
`study.spec.grid` alike, so that neither imports the other at module level."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from core.errors import short


def read_older_pickle(self: BaseModel, state: dict[str, Any]) -> None:
    """`BaseModel.__setstate__` for a model pickled by an older version (a study's ``tuner.pkl``
    holds a spec in its progress callback): fields added since take their defaults, private caches
    start empty."""
    BaseModel.__setstate__(self, state)
    for name, info in type(self).model_fields.items():
        if name not in self.__dict__ and not info.is_required():
            self.__dict__[name] = info.get_default(call_default_factory=True)
    private = dict(getattr(self, "__pydantic_private__", None) or {})
    for name, attr in (type(self).__private_attributes__ or {}).items():
        private.setdefault(name, attr.get_default())
    object.__setattr__(self, "__pydantic_private__", private)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    __setstate__ = read_older_pickle


class Grid(_Strict):
    grid: list[Any] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for v in values:  # linear: a 100,000-value axis is checked in milliseconds, before the size limits
            key = _equality_key(v)
            if key in seen:
                raise ValueError(
                    f"grid values must be distinct (each is run once per seed), but {short(v)} is repeated"
                )
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


DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
Domain = Annotated[
    Annotated[Grid, Tag("grid")]
    | Annotated[Choice, Tag("choice")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[RandInt, Tag("randint")],
    Discriminator(lambda v: next(iter(v)) if isinstance(v, dict) else next(iter(type(v).model_fields))),
]
