"""Experiment trackers (TensorBoard, MLflow, W&B) switched on by the spec's ``log_to`` key.

`tracker_callbacks` turns a spec into Ray Tune callbacks (`study.trackers.callbacks`, imported only
when a tracker is on); `check_installed` is the one-line error naming the extra to install.
Settings: `study.trackers.settings`; user guide: docs/guide/trackers.md.
"""

from __future__ import annotations

from typing import Any

from core.errors import UserError
from study.trackers.settings import (
    SETTINGS,
    TRACKERS,
    MLflowSettings,
    TensorBoardSettings,
    Tracker,
    WandbSettings,
    check_installed,
    check_log_to,
    check_used,
)

__all__ = [
    "SETTINGS", "TRACKERS", "MLflowSettings", "TensorBoardSettings", "Tracker", "WandbSettings",
    "check_log_to", "check_used", "check_installed", "tracker_callbacks",
]  # fmt: skip


def tracker_callbacks(spec: Any, *, storage: str, remote: bool) -> list[Any]:
    """The Tune callbacks of the trackers `spec.log_to` lists (in that order); [] when none.

    `storage` and `remote` say where the study lives: MLflow's default store is a file inside the
    study directory, which an object store does not have (then `mlflow.tracking_uri` is required)."""
    if not spec.log_to:
        return []
    from study.trackers import callbacks as cb

    check_installed(spec.log_to, "log_to")
    searched = (*spec.space, "seed")
    out: list[Any] = []
    for name in spec.log_to:
        if name == "tensorboard":
            out.append(cb.TensorBoardTracker(searched=searched))
        elif name == "mlflow":
            s = spec.mlflow or MLflowSettings()
            if remote and s.tracking_uri is None:
                raise UserError(
                    f"mlflow.tracking_uri: a study on {storage} (an object store) has no directory for MLflow's "
                    "default store; set a tracking server, e.g. --set mlflow.tracking_uri=http://HOST:5000"
                )
            tags = {"study": spec.name, "family": spec.trainable, "data_source": spec.data.source, **s.tags}
            out.append(cb.MLflowTracker(tracking_uri=s.tracking_uri, experiment_name=s.experiment_name or spec.name,
                                        tags=tags, searched=searched))  # fmt: skip
        elif name == "wandb":
            s = spec.wandb or WandbSettings()
            out.append(cb.WandbTracker(project=s.project or spec.name, group=s.group or spec.name, entity=s.entity,
                                       mode=s.mode, tags=[spec.trainable, spec.data.source, *s.tags],
                                       searched=searched))  # fmt: skip
    return out
