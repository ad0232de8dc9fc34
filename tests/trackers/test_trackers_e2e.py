"""Each tracker for real, offline, on tiny studies on a local Ray: every trial (a pack's every member)
and every epoch's metrics arrive, read back with the tracker's own reader (TensorBoard's event
accumulator, `mlflow.search_runs` on the study's store, W&B's offline run directories); a tracker
that cannot reach its server costs one warning line and the study finishes."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from study.runner import run_study
from tests.conftest import write_spec

pytestmark = pytest.mark.e2e
for _package in ("tensorboardX", "tensorboard", "mlflow", "wandb"):  # the [tensorboard,mlflow,wandb] extras
    pytest.importorskip(_package)
ALL = ["tensorboard", "mlflow", "wandb"]
FIXED = {"epochs": 2, "batch_size": 50, "lr": 0.01}


def _run(spec: Path, storage: Path) -> tuple[pd.DataFrame, str]:
    out = io.StringIO()
    outcome = run_study(spec, storage=storage, report=False, out=out)
    assert not outcome.failed and set(outcome.counts) == {"TERMINATED"}, out.getvalue()
    return pd.read_parquet(outcome.study_dir / "results" / "trials.parquet"), out.getvalue()


def _tensorboard_runs(study: Path) -> dict[str, dict]:
    """{event directory relative to the study: {'scalars': {tag: [steps]}, 'hparams': bool}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for events in sorted(study.glob("trial_*/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        scalars = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        runs[events.parent.relative_to(study).as_posix()] = {
            "scalars": scalars,
            "hparams": bool(acc.PluginTagToContent("hparams")),
        }
    return runs


def _mlflow_runs(study: Path, experiment: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlruns.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _mlflow_history(study: Path, run_id: str, metric: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlruns.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _wandb_records(path: Path):
    """The protobuf records of a W&B run file (``run-<id>.wandb``: a ``:W&B`` header, then 32 KiB
    blocks of records, each a 7-byte header (checksum, little-endian length, type) and its data;
    types 1 full, 2 first, 3 middle, 4 last piece)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pieces = data if kind in (1, 2) else pieces + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def _wandb_runs(study: Path) -> dict[str, dict]:
    """{run id: {'group', 'config', 'history': [row per logged step], 'exited'}} of the offline runs
    under STUDY/wandb/, read from their run files."""
    runs = {}
    for d in sorted((study / "wandb").glob("offline-run-*")):
        (run_file,) = d.glob("run-*.wandb")
        run_id = d.name.split("-", 3)[3]  # offline-run-<date>_<time>-<run id>
        run: dict = {"id": None, "group": None, "config": {}, "history": [], "exited": False}
        for r in _wandb_records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["group"], run["id"] = r.run.run_group, r.run.run_id
                run["config"].update({c.key: json.loads(c.value_json) for c in r.run.config.update})
            elif kind == "config":
                run["config"].update({c.key: json.loads(c.value_json) for c in r.config.update})
            elif kind == "history":
                run["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
            elif kind == "exit":
                run["exited"] = True
        runs[run_id] = run
    return runs


def test_every_tracker_gets_every_trial(ray_local, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tracked.yaml", name="tracked", fixed=FIXED, log_to=ALL, wandb={"mode": "offline"})
    trials, _ = _run(spec, tmp_path)
    study = tmp_path / "tracked"
    ids = set(trials["trial_id"])
    assert len(ids) == 4

    tb = _tensorboard_runs(study)
    assert {d.split("/")[0] for d in tb} == {f"trial_{i}" for i in ids}  # one event file set per trial
    for run in tb.values():
        assert run["scalars"]["ray/tune/test_acc"] == [1, 2] and run["hparams"]

    runs = _mlflow_runs(study, "tracked")
    assert {r.data.tags["trial_id"] for r in runs} == ids and len(runs) == 4
    for r in runs:
        row = trials.set_index("trial_id").loc[r.data.tags["trial_id"]]
        assert r.data.tags["study"] == "tracked" and r.data.tags["family"] == "digit_pairs"
        assert r.data.tags["data_source"] == "mnist-5k" and r.data.tags["seed"] == str(row["seed"])
        assert r.data.params["arch"] == row["arch"] and r.info.status == "FINISHED"
        assert _mlflow_history(study, r.info.run_id, "test_acc") == [1, 2]
        assert abs(r.data.metrics["test_acc"] - row["final_test_acc"]) < 1e-9

    wb = _wandb_runs(study)
    assert set(wb) == ids
    for trial_id, run in wb.items():
        row = trials.set_index("trial_id").loc[trial_id]
        assert run["id"] == trial_id and run["exited"] and run["group"] == "tracked"  # a complete run file
        assert [h["epoch"] for h in run["history"]] == [1, 2]
        assert abs(run["history"][-1]["test_acc"] - row["final_test_acc"]) < 1e-9
        assert run["config"]["arch"] == row["arch"] and run["config"]["seed"] == row["seed"]


def test_a_pack_logs_one_run_per_member(ray_local, tmp_path: Path) -> None:
    space = {"arch": {"grid": ["ConvNet"]}, "lr": {"grid": [0.01, 0.05]}}
    spec = write_spec(tmp_path / "packed.yaml", name="packed", space=space, fixed={"epochs": 2, "batch_size": 50},
                      pack=4, log_to=ALL, wandb={"mode": "offline"})  # fmt: skip
    trials, _ = _run(spec, tmp_path)
    study = tmp_path / "packed"
    ids = set(trials["trial_id"])
    assert len(ids) == 4 and all("-m" in i for i in ids)  # one pack of 4 (2 lr x 2 seeds)

    tb = _tensorboard_runs(study)
    assert len(tb) == 4 and all("/member_" in d for d in tb)
    assert all(run["scalars"]["ray/tune/test_acc"] == [1, 2] and run["hparams"] for run in tb.values())

    runs = _mlflow_runs(study, "packed")
    assert {r.data.tags["trial_id"] for r in runs} == ids
    by_id = trials.set_index("trial_id")
    for r in runs:
        row = by_id.loc[r.data.tags["trial_id"]]
        assert float(r.data.params["lr"]) == row["lr"] and r.data.params["seed"] == str(row["seed"])
        assert "__pack__" not in r.data.params
        assert _mlflow_history(study, r.info.run_id, "test_acc") == [1, 2]
        assert abs(r.data.metrics["test_acc"] - row["final_test_acc"]) < 1e-9

    wb = _wandb_runs(study)
    assert set(wb) == ids
    for trial_id, run in wb.items():
        assert run["id"] == trial_id and run["exited"]
        assert [h["epoch"] for h in run["history"]] == [1, 2] and run["config"]["lr"] == by_id.loc[trial_id, "lr"]
        assert abs(run["history"][-1]["test_acc"] - by_id.loc[trial_id, "final_test_acc"]) < 1e-9


def test_an_unreachable_tracker_is_one_warning(ray_local, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path / "lost.yaml", name="lost", fixed=FIXED, log_to=["mlflow"],
                      mlflow={"tracking_uri": "http://127.0.0.1:9"})  # fmt: skip  (discard port: nothing listens)
    trials, _ = _run(spec, tmp_path)
    assert len(trials) == 4
    warnings = [line for line in capfd.readouterr().err.splitlines() if "logging stopped" in line]
    assert len(warnings) == 1 and warnings[0].startswith("[study] warning: mlflow logging stopped (")
    assert warnings[0].endswith("; the study goes on")


class _Trial:
    """The parts of a Tune trial the MLflow tracker reads (hashable: Tune's trials are dict keys)."""

    def __init__(self, study: Path, trial_id: str) -> None:
        import pyarrow.fs

        self.trial_id, self.config = trial_id, {"arch": "ConvNet", "seed": 3}
        self.storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(study))

    def __str__(self) -> str:
        return f"trial_entry_{self.trial_id}"


def test_a_resumed_trial_continues_its_mlflow_run(tmp_path: Path) -> None:
    from study.trackers.callbacks import MLflowTracker

    def run_once(epochs: list[int]) -> None:  # one `study run`: a tracker as unpickled from tuner.pkl
        tracker = MLflowTracker(tracking_uri=None, experiment_name="resumed", tags={"study": "resumed"}, searched=())
        tracker.setup()
        trial = _Trial(tmp_path, "abc_00000")
        tracker.log_trial_start(trial)
        for epoch in epochs:
            tracker.log_trial_result(epoch, trial, {"training_iteration": epoch, "epoch": epoch, "test_acc": epoch / 10})
        if epochs[-1] == 3:
            tracker.log_trial_end(trial)
        tracker.on_experiment_end([])

    run_once([1, 2])  # interrupted after epoch 2
    run_once([3])  # resumed: epoch 3, finished
    (run,) = _mlflow_runs(tmp_path, "resumed")
    assert run.data.tags["trial_id"] == "abc_00000" and run.data.tags["seed"] == "3"
    assert _mlflow_history(tmp_path, run.info.run_id, "test_acc") == [1, 2, 3] and run.info.status == "FINISHED"
