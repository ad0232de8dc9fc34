"""The spec's tracker keys: ``log_to: [tensorboard, mlflow, wandb]`` and each tracker's settings
under its name. Parsed here (no Ray import); the callbacks are in `study.trackers.callbacks`.

```yaml
log_to: [tensorboard, mlflow, wandb]
mlflow: {tracking_uri: http://mlflow.lab:5000, experiment_name: quickstart}   # optional
wandb: {project: cnn-studies, mode: offline}                                  # optional
```

Each tracker is an optional extra of the package (``pip install -e '.[mlflow]'``); a tracker
whose package is missing is one line naming the extra (`check_installed`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from core.errors import UserError

TRACKERS = ("tensorboard", "mlflow", "wandb")
Tracker = Literal["tensorboard", "mlflow", "wandb"]
# tracker -> (module that must import, pip extra of this package)
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorBoardSettings(_Settings):
    """No settings: event files go to each trial's directory (``tensorboard --logdir STUDY``)."""


class MLflowSettings(_Settings):
    """Args:
    tracking_uri: where runs go (a server ``http://...``, ``sqlite:///...``, a directory); default
        ``sqlite:///STUDY/mlruns.db`` inside the study directory, so the runs travel with it.
    experiment_name: the MLflow experiment; default the study's name.
    tags: extra tags on every run (besides study, family, data_source, seed, trial_id).
    """

    tracking_uri: str | None = None
    experiment_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class WandbSettings(_Settings):
    """Args:
    project: the W&B project; default the study's name.
    entity: the W&B team or user; default W&B's own (your default entity).
    mode: ``online``, ``offline`` (no account, no network: runs under ``STUDY/wandb/``, upload later
        with ``wandb sync``) or ``disabled``; default W&B's own (``WANDB_MODE``, else online).
    group: runs are grouped by this; default the study's name.
    tags: extra tags on every run.
    """

    project: str | None = None
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


SETTINGS = {"tensorboard": TensorBoardSettings, "mlflow": MLflowSettings, "wandb": WandbSettings}


def check_log_to(cls: type, log_to: list[str]) -> list[str]:
    """Spec field validator of ``log_to``: each tracker at most once."""
    twice = sorted({t for t in log_to if log_to.count(t) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} is listed twice")
    return log_to


def check_used(cls: type, settings: _Settings | None, info: ValidationInfo) -> _Settings | None:
    """Spec field validator of a tracker's settings: given only for a tracker ``log_to`` lists (they
    would be silently unused)."""
    log_to = info.data.get("log_to")
    if settings is not None and log_to is not None and info.field_name not in log_to:
        name = info.field_name
        raise ValueError(f"settings for {name}, but log_to does not list it: add log_to: [{', '.join([*log_to, name])}]"
                         " or remove them")  # fmt: skip
    return settings


def check_installed(log_to: list[str], path: str | Path) -> None:
    """One line naming the extra to install when a tracker's package is missing."""
    for name in log_to:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"{path}: log_to: {name} needs the package {module}, which is not installed: "
                f"pip install -e '.[{extra}]' (or pip install 'study-platform[{extra}]')"
            )
