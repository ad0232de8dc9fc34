"""Kept for scripts that import ``study.shapes``: packed and DDP trials, each part in its layer.

The spec's rules are `study.spec.checks.check_shape`, the Tune side is `study.run.shapes`, and
reading a pack as its members is `study.results.packs`.
"""

from __future__ import annotations

from study.results.packs import expand_packs, member_count
from study.run.shapes import (
    DRIVER_MEMORY,
    MEMBER_KEYS,
    ddp_entry,
    max_concurrent,
    pack_entry,
    pack_param_space,
    shaped_trainable,
)
from study.spec.checks import check_shape

__all__ = [
    "DRIVER_MEMORY", "MEMBER_KEYS", "check_shape", "ddp_entry", "expand_packs", "max_concurrent", "member_count",
    "pack_entry", "pack_param_space", "shaped_trainable",
]  # fmt: skip
