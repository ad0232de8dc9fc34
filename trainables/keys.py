"""Config-key facts the runner reads without importing torch or a family.

`MEMBER_KEYS`: the keys in which the members of a pack (``pack: N``, `trainables.packing`) may
differ; every other key, hence the model's shape, the batch size and the epochs, is shared by the
pack. `study`'s grouping of a grid into packs reads the same constant.
"""

from __future__ import annotations

MEMBER_KEYS: tuple[str, ...] = ("seed", "lr", "momentum", "weight_decay", "lr_milestones", "lr_gamma")
