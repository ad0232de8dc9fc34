"""Trackers without Ray running: the spec keys, the missing-package line, a pack seen as its members,
and a failing tracker that warns once and lets the study go on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.logger import LoggerCallback

from core.errors import UserError
from study.cli import main
from study.spec.load import load_spec, spec_to_yaml
from study.trackers import settings, tracker_callbacks
from study.trackers.callbacks import MemberTrial, _Tracker, member_results
from tests.conftest import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


# --- the spec -------------------------------------------------------------------------------------
def test_tracker_keys_parse_and_are_recorded_only_when_set() -> None:
    plain = load_spec(QUICKSTART)
    assert plain.log_to == [] and "log_to" not in spec_to_yaml(plain)  # older studies' spec.yaml still match
    spec = load_spec(QUICKSTART, ["log_to=[tensorboard, mlflow, wandb]", "mlflow.experiment_name=qs",
                                  "wandb.mode=offline", "wandb.project=p"])  # fmt: skip
    assert spec.log_to == ["tensorboard", "mlflow", "wandb"]
    assert spec.mlflow.experiment_name == "qs" and spec.wandb.mode == "offline"
    text = spec_to_yaml(spec)
    assert "log_to:" in text and "experiment_name: qs" in text and "mode: offline" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["log_to=[mlfow]"], "log_to.0: Input should be 'tensorboard', 'mlflow' or 'wandb'"),
        (["log_to=[wandb, wandb]"], "log_to: wandb is listed twice"),
        (["wandb.mode=offline"], "wandb: settings for wandb, but log_to does not list it"),
        (["log_to=[wandb]", "wandb.mode=sometimes"], "wandb.mode: Input should be 'online', 'offline' or 'disabled'"),
        (["log_to=[mlflow]", "mlflow.trackinguri=x"], "mlflow.trackinguri: Extra inputs are not permitted"),
    ],
)
def test_bad_tracker_keys_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_spec(QUICKSTART, overrides)


def test_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    real = settings.importlib.util.find_spec
    monkeypatch.setattr(settings.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    assert main(["validate", str(QUICKSTART), "--set", "log_to=[tensorboard, mlflow]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "log_to: mlflow needs the package mlflow" in err and "pip install -e '.[mlflow]'" in err


def test_mlflow_on_an_object_store_needs_a_tracking_server() -> None:
    spec = load_spec(QUICKSTART, ["log_to=[mlflow]"])
    with pytest.raises(UserError, match="mlflow.tracking_uri: a study on s3://b/studies"):
        tracker_callbacks(spec, storage="s3://b/studies", remote=True)
    given = load_spec(QUICKSTART, ["log_to=[mlflow]", "mlflow.tracking_uri=http://127.0.0.1:5000"])
    (cb,) = tracker_callbacks(given, storage="s3://b/studies", remote=True)
    assert cb.tags == {"study": "quickstart", "family": "digit_pairs", "data_source": "mnist-5k"}


# --- packs and guarding -----------------------------------------------------------------------------
class Recorder(LoggerCallback):
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def _record(self, *call) -> None:
        if call[0] == self.fail_on:
            raise ConnectionError("tracking server unreachable")
        self.calls.append(call)

    def log_trial_start(self, trial) -> None:
        self._record("start", trial.trial_id, dict(trial.config), dict(getattr(trial, "evaluated_params", {})))

    def log_trial_result(self, iteration, trial, result) -> None:
        self._record("result", trial.trial_id, result)

    def log_trial_end(self, trial, failed=False) -> None:
        self._record("end", trial.trial_id, failed)


class Tracked(_Tracker, Recorder):
    tracker = "recorder"

    def __init__(self, fail_on: str | None = None) -> None:
        Recorder.__init__(self, fail_on)
        self._init_tracker(("lr", "seed"))


def _pack_trial(tmp_path: Path) -> SimpleNamespace:
    shared = {"arch": "ConvNet", "epochs": 2}
    members = [{"lr": 0.1, "seed": 0}, {"lr": 0.01, "seed": 1}]
    config = {"__pack__": {"shared": shared, "members": members, "metric": "test_acc", "mode": "max"}}
    return SimpleNamespace(trial_id="abc_00000", config=config, local_path=str(tmp_path / "trial_abc"))


def test_a_pack_is_logged_as_its_members(tmp_path: Path) -> None:
    trial = _pack_trial(tmp_path)
    cb = Tracked()
    cb.log_trial_start(trial)
    result = {"training_iteration": 1, "time_total_s": 4.0, "epoch": 1,
              "members": {"0": {"epoch": 1, "test_acc": 0.5}, "1": {"epoch": 1, "test_acc": 0.7}}}  # fmt: skip
    cb.log_trial_result(1, trial, result)
    cb.log_trial_end(trial)
    cb._flush(10)  # the calls run on the tracker's own thread
    starts = [c for c in cb.calls if c[0] == "start"]
    assert [c[1] for c in starts] == ["abc_00000-m0", "abc_00000-m1"]  # the tables' member ids
    assert starts[1][2] == {"arch": "ConvNet", "epochs": 2, "lr": 0.01, "seed": 1}
    assert starts[1][3] == {"lr": 0.01, "seed": 1}  # the searched values: TensorBoard's hyperparameters
    results = {c[1]: c[2] for c in cb.calls if c[0] == "result"}
    assert results["abc_00000-m1"]["test_acc"] == 0.7 and results["abc_00000-m0"]["test_acc"] == 0.5
    assert "members" not in results["abc_00000-m0"] and results["abc_00000-m0"]["time_total_s"] == 2.0
    assert [c[1] for c in cb.calls if c[0] == "end"] == ["abc_00000-m0", "abc_00000-m1"]
    view = cb._views(trial)[1]
    assert isinstance(view, MemberTrial) and view.local_path.endswith("trial_abc/member_1")
    assert Path(view.local_path).is_dir() and str(view) == f"{trial}-m1"


def test_a_plain_trial_is_passed_through(tmp_path: Path) -> None:
    trial = SimpleNamespace(trial_id="t_1", config={"lr": 0.1, "seed": 0}, local_path=str(tmp_path))
    cb = Tracked()
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"epoch": 1, "test_acc": 0.9})
    cb._flush(10)
    assert cb.calls[0][:3] == ("start", "t_1", {"lr": 0.1, "seed": 0})
    assert cb.calls[1] == ("result", "t_1", {"epoch": 1, "test_acc": 0.9})


def test_a_failing_tracker_warns_once_and_stops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trial = SimpleNamespace(trial_id="t_1", config={"lr": 0.1}, local_path=str(tmp_path))
    cb = Tracked(fail_on="result")
    cb.log_trial_start(trial)
    for i in range(3):
        cb.log_trial_result(i, trial, {"epoch": i})  # raises inside: never out of the callback
    cb.log_trial_end(trial)
    cb._flush(10)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == ("[study] warning: recorder logging stopped (ConnectionError: tracking server unreachable); "
                      "the study goes on")  # fmt: skip
    assert [c[0] for c in cb.calls] == ["start"]  # stopped after the error


class Hanging(Recorder):
    """A tracker whose store hangs on every new run until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def log_trial_start(self, trial) -> None:
        self.release.wait(10)


class HangingTracked(_Tracker, Hanging):
    tracker = "hanging"

    def __init__(self) -> None:
        Hanging.__init__(self)
        self._init_tracker(())


def test_a_slow_tracker_does_not_hold_up_the_loop(tmp_path: Path) -> None:
    cb = HangingTracked()
    trial = SimpleNamespace(trial_id="t_1", config={"lr": 0.1}, local_path=str(tmp_path))
    t0 = time.monotonic()
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"epoch": 1})
    assert time.monotonic() - t0 < 1.0  # returned at once: the work is queued on the tracker's thread
    assert cb.calls == []
    cb.release.set()
    cb._flush(10)
    assert cb.calls == [("result", "t_1", {"epoch": 1})]


def test_member_results_of_a_plain_result_is_empty() -> None:
    assert member_results({"epoch": 1, "test_acc": 0.5}) == {}
