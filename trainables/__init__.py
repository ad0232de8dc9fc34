"""Trainables: one module per study family, all following `trainables.common` (the contract).

To add a study family: write ``trainables/<family>.py`` ending in ``FAMILY = Family(...)``
(blocks, models, ``build``, ``train_epoch``, ``evaluate``; every metric it reports declared with
its `core.metrics.Metric`, and ``inert_keys`` where a key has no effect in some configs), then add
it to `FAMILIES` below; tests/trainables/test_contract.py then checks it.

`REGISTRY` (name -> `Family`) is built on first use, so that importing a torch-free module of this
package (`trainables.sources`: the data sources) does not import torch and the families.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from core.errors import UserError

if TYPE_CHECKING:
    from trainables.common import Family

FAMILIES = ("digit_pairs", "share_split", "ssm", "wsms", "encapnet")  # modules, each ending in FAMILY = Family(...)


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":  # built once, then an ordinary module attribute
        registry = {f.name: f for f in (import_module(f"trainables.{m}").FAMILY for m in FAMILIES)}
        globals()["REGISTRY"] = registry
        return registry
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")


def get_family(name: str) -> Family:
    """The registered family called `name`; an unknown name lists the known ones."""
    registry = globals().get("REGISTRY") or __getattr__("REGISTRY")
    try:
        return registry[name]
    except KeyError:
        raise UserError(f"unknown trainable {name!r}; known: {', '.join(sorted(registry))}") from None
