"""Model sizes without training: ``study validate SPACE.yaml --models``.

For every distinct model of a space (the distinct values of its family's ``model_keys`` over the
space's configurations: every grid point, every choice value, both ends of every range), build
the model on PyTorch's meta device (no memory, no data, no Ray) and count its parameters and
its forward FLOPs for one example (``torch.utils.flop_counter``, which counts a multiply-add as
2 FLOPs; models whose forward cannot run on the meta device are built on the CPU).
"""

from __future__ import annotations

from typing import Any

import torch

from core.errors import UserError
from study.spec.grid import example_configs
from study.spec.model import Spec


def model_keys(spec: Spec) -> tuple[str, ...]:
    """The keys that shape this family's models (all config keys of the space if it names none)."""
    from trainables import get_family
    from trainables.common import COMMON_DEFAULTS

    family = get_family(spec.trainable)
    if family.model_keys:
        return tuple(family.model_keys)
    keys = {*spec.base_config(), *spec.space, *family.defaults}
    return tuple(sorted(k for k in keys if k not in COMMON_DEFAULTS))


def distinct_models(spec: Spec, limit: int = 10_000) -> list[dict[str, Any]]:
    """Resolved configs, one per distinct model of the space, in the space's order."""
    from trainables import get_family
    from trainables.common import resolve_config

    family = get_family(spec.trainable)
    keys = model_keys(spec)
    seen: dict[str, dict[str, Any]] = {}
    for config in example_configs(spec, limit=limit, shaping=keys):  # every combination of the shaping keys
        cfg = resolve_config(family, {**config, "seed": spec.seed_list[0]})
        if cfg.get("num_classes") == 0:  # image families: the data source's number of classes
            from trainables.images import source_classes

            cfg["num_classes"] = source_classes(spec.data.source, spec.data.classes_file)
        ident = repr([(k, cfg.get(k)) for k in keys])
        seen.setdefault(ident, cfg)
    return list(seen.values())


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of `model` on `example` (a batch), as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


def model_size(spec_trainable: str, cfg: dict[str, Any]) -> tuple[int, int | None]:
    """(parameters, forward FLOPs per example or None when the family gives no input shape)."""
    from trainables import get_family
    from trainables.common import count_params

    family = get_family(spec_trainable)
    shape = family.input_shape(cfg) if family.input_shape is not None else None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = family.build(cfg)
                params = count_params(model)
                if shape is None:
                    return params, None
                return params, count_flops(model, torch.zeros((1, *shape)))
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: build it for real
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def describe_models(spec: Spec) -> list[dict[str, Any]]:
    """One entry per distinct model: ``config`` (its shaping keys), ``params``, ``flops``."""
    keys = model_keys(spec)
    out = []
    for cfg in distinct_models(spec):
        try:
            params, flops = model_size(spec.trainable, cfg)
        except UserError:
            raise
        except Exception as e:  # a model that cannot be built is the spec's problem: say which
            shown = ", ".join(f"{k}={cfg.get(k)!r}" for k in keys)
            raise UserError(f"cannot build the model {shown}: {type(e).__name__}: {e}") from None
        out.append({"config": {k: cfg.get(k) for k in keys}, "params": params, "flops": flops})
    return out


def format_models(models: list[dict[str, Any]]) -> list[str]:
    lines = []
    for m in models:
        shown = ", ".join(f"{k}={v}" for k, v in m["config"].items())
        flops = f"{_si(m['flops'])}FLOPs/example" if m["flops"] is not None else "FLOPs n/a"
        lines.append(f"  {shown}: {m['params']:,} parameters, {flops}")
    return lines


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} "
