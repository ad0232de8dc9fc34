"""Trainables: one module per study family, all following `trainables.common` (the contract).

To add a study family: write ``trainables/<family>.py`` ending in ``FAMILY = Family(...)``
(blocks, models, ``build``, ``train_epoch``, ``evaluate``; every metric it reports declared with
its `core.metrics.Metric`, and ``inert_keys`` where a key has no effect in some configs), then add
it to `REGISTRY` below; tests/trainables/test_contract.py then checks it.
"""

from __future__ import annotations

from core.errors import UserError
from trainables import digit_pairs, encapnet, share_split, ssm, wsms
from trainables.common import Family

REGISTRY: dict[str, Family] = {
    f.name: f for f in (digit_pairs.FAMILY, share_split.FAMILY, ssm.FAMILY, wsms.FAMILY, encapnet.FAMILY)
}


def get_family(name: str) -> Family:
    """The registered family called `name`; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown trainable {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
