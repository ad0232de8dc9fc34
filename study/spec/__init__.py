"""The study spec: a search-space YAML parsed once into typed objects and checked.

- `study.spec.model`: the pydantic model (`Spec` and its sections, the domains of ``space``);
- `study.spec.yamlfile`: safe YAML reading (`read_yaml`, `load_yaml`);
- `study.spec.overrides`: ``--set KEY=VALUE`` (`apply_overrides`);
- `study.spec.checks`: sizes, keys, values, the paper block (`check_paper`) and trial shapes;
- `study.spec.load`: `load_spec` (read, override, validate, check), `parse_spec`, `spec_to_yaml`;
- `study.spec.grid`: the configurations a spec schedules (`grid_plan`, `grid_points`: inert duplicates
  collapsed, claim points in a covering set) and `example_configs`;
- `study.spec.smoke`: `smoke_spec` (``study run --smoke``).

Ray Tune domains are made from a spec in one place, `study.run.tuner.to_param_space`. This package
re-exports the names ``study.spec`` has always had, for scripts; code in the package imports the
submodules.
"""

from __future__ import annotations

from typing import Any

from study.spec.checks import (
    MAX_REPEATS,
    MAX_SAMPLES,
    MAX_TRIALS,
    check_configs,
    check_keys,
    check_limits,
    check_paper,
    check_shape,
)
from study.spec.grid import CoverValue, GridPlan, PointValue, collapse_note, example_configs, grid_plan, grid_points
from study.spec.load import load_spec, parse_spec, spec_to_yaml
from study.spec.model import (
    DATA_SOURCES,
    DOMAIN_KINDS,
    NAME_MAX,
    NAME_PATTERN,
    Choice,
    Claim,
    Data,
    Domain,
    Grid,
    LogUniform,
    Paper,
    PaperResult,
    RandInt,
    Resources,
    RunRecord,
    Scheduler,
    Search,
    Spec,
    Uniform,
    check_name,
    default_paper_datasets,
)
from study.spec.overrides import apply_overrides, parse_override
from study.spec.smoke import smoke_spec
from study.spec.yamlfile import MAX_SPEC_BYTES, MAX_YAML_VALUES, load_yaml, read_yaml

__all__ = [
    "DATA_SOURCES", "DOMAIN_KINDS", "MAX_REPEATS", "MAX_SAMPLES", "MAX_SPEC_BYTES", "MAX_TRIALS", "MAX_YAML_VALUES",
    "NAME_MAX", "NAME_PATTERN", "Choice", "Claim", "CoverValue", "Data", "Domain", "Grid", "GridPlan", "LogUniform",
    "Paper", "PaperResult", "PointValue", "RandInt", "Resources", "RunRecord", "Scheduler", "Search", "Spec",
    "Uniform", "apply_overrides", "check_configs", "check_keys", "check_limits", "check_name", "check_paper",
    "check_shape", "collapse_note", "default_paper_datasets", "example_configs", "grid_plan", "grid_points", "load_spec", "load_yaml", "parse_override", "parse_spec", "read_yaml",
    "smoke_spec", "spec_to_yaml", "to_param_space",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """`to_param_space`, which lived here, from its place in the run layer (imported on first use)."""
    if name == "to_param_space":
        from study.run.tuner import to_param_space

        return to_param_space
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
