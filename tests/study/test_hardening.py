"""Hardening without fault injection: size limits, missing data, a broken study and compare --out,
the small cases, the state reader and the pins, the lock's stale rules, and checkpoints read with
weights_only=True (the unit level; the runs are in test_faults.py). Each asserts what a user sees:
exit code, the one line, the Parquet tables."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from study.cli import main
from tests.conftest import REPO, study_cmd, write_spec

QUICK = str(REPO / "search_spaces" / "quickstart.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(code: int, err: str, *needles: str, limit: int = 1100) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and len(err) < limit, err[:2000]
    for n in needles:
        assert n in err, err


# --- case 7: limits before anything is built -------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["repeats=1e9"], ["repeats: at most 1,000 seeds per configuration (got 1,000,000,000)"]),
        (["repeats=null", "seeds=[" + ",".join(map(str, range(5000))) + "]"], ["seeds: at most 1,000 seeds"]),
        (["search.num_samples=10000000000"], ["search.num_samples: at most 100,000"]),
        ([f"space.k{i}.grid=[{','.join(map(str, range(10)))}]" for i in range(10)] + ["space.weight_decay.grid=[0.0,0.1,0.2]"],
         ["space: the study would run 3.6e+11 trials", "at most 100,000 per study"]),
        # one long axis: its values are checked for repeats in linear time (quadratic took minutes)
        ([f"space.k.grid=[{','.join(map(str, range(60000)))}]", "space.j.grid=[1,2]"],
         ["space: the study would run", "at most 100,000 per study"]),
    ],
)  # fmt: skip
def test_limits_are_checked_before_anything_is_built(capsys, overrides: list[str], needles: list[str]) -> None:
    t0 = time.time()
    code, _, err = run(capsys, "validate", QUICK, *[a for o in overrides for a in ("--set", o)])
    one_line_exit_2(code, err, *needles)
    assert time.time() - t0 < 20  # no seed list or grid materialised (this took minutes and 24 GB)


def test_nested_yaml_aliases_are_refused_in_one_short_line(capsys, tmp_path: Path) -> None:
    lines = ["name: bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 10^10 values from a 600-byte file
        prev = "a" if i == 1 else f"b{i - 1}"
        lines.append(f"b{i}: &b{i} [{', '.join(['*' + prev] * 10)}]")
    lines.append("description: *b9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "validate", str(bomb))
    one_line_exit_2(code, err, f"{bomb}: line ", "more than 100,000 values once aliases are expanded")
    # the same through --set, and a recursive alias
    value, prev = "&a0 [x, x, x, x, x, x, x, x, x, x]", "a0"
    for i in range(1, 8):
        value, prev = f"[{value}, &a{i} [{', '.join(['*' + prev] * 10)}]]", f"a{i}"
    code, _, err = run(capsys, "validate", QUICK, "--set", f"description={value}")
    one_line_exit_2(code, err, "--set 'description=", "more than 100,000 values once aliases are expanded")
    rec = tmp_path / "rec.yaml"
    rec.write_text("name: &a [*a]\n")
    code, _, err = run(capsys, "validate", str(rec))
    one_line_exit_2(code, err, "recursive alias")


def test_huge_values_are_shortened_in_errors(capsys, tmp_path: Path) -> None:
    big = "[" + ",".join(["[" + ",".join(["1"] * 300) + "]"] * 300) + "]"  # 90,000 values, allowed
    code, _, err = run(capsys, "validate", QUICK, "--set", f"repeats={big}")
    one_line_exit_2(code, err, "repeats:", limit=400)
    code, _, err = run(capsys, "validate", QUICK, "--set", f"fixed.lr={big}")
    one_line_exit_2(code, err, "fixed.lr:", limit=400)
    code, _, err = run(capsys, "validate", QUICK, "--set", f"space.arch={big}")
    one_line_exit_2(code, err, "space.arch", limit=400)


def test_progress_output_stays_readable_for_large_studies(monkeypatch) -> None:
    """A line per finished trial for small studies; per n/50 trials (or 5 s) for large ones."""
    import io
    from types import SimpleNamespace

    import study.run.callbacks
    from study.run.callbacks import make_progress_callback
    from study.spec import load_spec

    monkeypatch.setattr(study.run.callbacks, "time", SimpleNamespace(time=lambda: 1000.0))  # no 5 s lines here

    def trials(total: int) -> list:
        meta = SimpleNamespace(metric_analysis={"test_acc": {"max": 0.5}}, num_failures=0)
        return [SimpleNamespace(status="PENDING", run_metadata=meta, config={"weight_sharing": True},
                                trial_id=str(i), error_file=None) for i in range(total)]  # fmt: skip

    for total, most in ((12, 12), (1000, 51)):
        spec = load_spec(QUICK).model_copy(update={"repeats": total // 4})  # 4 grid points x repeats
        out = io.StringIO()
        cb = make_progress_callback(spec, out)
        ts = trials(total)
        for t in ts:
            t.status = "RUNNING"
            cb.on_trial_complete(0, ts, t)
            t.status = "TERMINATED"
        lines = [ln for ln in out.getvalue().splitlines() if " done, " in ln]
        assert most - 2 <= len(lines) <= most, (total, len(lines))
        assert lines[-1].startswith(f"[study] {total}/{total} done")
    # failures: one line each for the first 20, then one line saying the rest are counted
    ts = trials(30)
    for t in ts:
        cb.on_trial_error(0, ts, t)
    failure_lines = [ln for ln in out.getvalue().splitlines() if "failed for good" in ln]
    assert len(failure_lines) == 20 and out.getvalue().count("more than 20 trial messages") == 1


# --- case 9: the small ones ---------------------------------------------------------------------------


def test_set_value_that_is_not_yaml_is_refused(capsys) -> None:
    code, _, err = run(capsys, "validate", QUICK, "--set", "description=[1,2")
    one_line_exit_2(code, err, "--set 'description=[1,2': the value is not valid YAML", "quote it")
    code, out, _ = run(capsys, "validate", QUICK, "--set", "description='[1,2'")  # quoted: text
    assert code == 0, out


def test_batch_size_larger_than_the_data_is_refused(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", QUICK, "--set", "fixed.batch_size=5000")
    one_line_exit_2(code, err, "fixed.batch_size: 5000 is larger than the training set (1000 pairs, n_train)")
    searched = write_spec(tmp_path / "bs.yaml", fixed={"epochs": 1}, space={"batch_size": {"grid": [50, 2000]}})
    code, _, err = run(capsys, "validate", str(searched))
    one_line_exit_2(code, err, "space.batch_size: 2000 is larger than the training set (200 pairs, n_train)")
    share = write_spec(tmp_path / "ss.yaml", trainable="share_split", data={"source": "mnist-5k"},
                       fixed={"batch_size": 300, "train_images": 250}, space={})  # fmt: skip
    code, _, err = run(capsys, "validate", str(share))
    one_line_exit_2(code, err, "fixed.batch_size: 300 is larger than the training set (250 images, train_images)")


# --- a finished study to break (cases 8, 9, 10; the lock's rules of case 2) ---------------------------


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory) -> Path:
    """A finished 2-trial study (1 epoch each), run once; tests copy it before breaking it."""
    from study.runner import run_study

    base = tmp_path_factory.mktemp("finished")
    spec = write_spec(base / "done.yaml", name="done", repeats=1, fixed={"epochs": 2, "batch_size": 50})
    outcome = run_study(spec, storage=base / "studies", report=False)
    assert outcome.counts == {"TERMINATED": 2}
    return base / "studies" / "done"


def copy_study(finished: Path, tmp_path: Path) -> Path:
    storage = tmp_path / "studies"
    shutil.copytree(finished, storage / finished.name, symlinks=True)
    return storage / finished.name


@pytest.mark.e2e
def test_deleted_trial_directory_is_reported_missing(finished: Path, tmp_path: Path, capsys) -> None:
    study = copy_study(finished, tmp_path)
    victim = sorted(study.glob("trial_*"))[0]
    shutil.rmtree(victim)
    code, out, err = run(capsys, "report", "done", "--storage", str(study.parent))
    assert code == 0, err
    trials = pd.read_parquet(study / "results" / "trials.parquet").set_index("trial_id")
    vid = victim.name.removeprefix("trial_")
    assert trials.loc[vid, "status"] == "MISSING" and "trial directory missing" in trials.loc[vid, "error"]
    assert (trials.drop(index=vid)["status"] == "TERMINATED").all()
    epochs = pd.read_parquet(study / "results" / "epochs.parquet")
    assert vid not in set(epochs["trial_id"])
    html = (study / "results" / "report.html").read_text()
    assert "missing data" in html and "Complete</b>" not in html and "stopped early" not in html
    code, out, _ = run(capsys, "status", "done", "--storage", str(study.parent))
    assert code == 0 and "done: 1 terminated, 1 missing" in out
    # a result.json emptied: the same, never "stopped by the scheduler"
    (sorted(study.glob("trial_*"))[0] / "result.json").write_text("")
    code, _, _ = run(capsys, "report", "done", "--storage", str(study.parent))
    trials = pd.read_parquet(study / "results" / "trials.parquet")
    assert code == 0 and list(trials["status"]) == ["MISSING", "MISSING"]
    code, out, _ = run(capsys, "status", "done", "--storage", str(study.parent))  # status agrees with the table
    assert code == 0 and "done: 2 missing" in out
    # a result.json deleted (its directory kept): the same in status, ls and the table
    (sorted(study.glob("trial_*"))[0] / "result.json").write_text((finished / sorted(study.glob("trial_*"))[0].name / "result.json").read_text())
    (sorted(study.glob("trial_*"))[0] / "result.json").unlink()
    code, out, _ = run(capsys, "ls", "--storage", str(study.parent))
    assert code == 0 and "2 missing" in out, out


@pytest.mark.e2e
def test_ls_lists_what_it_can_and_marks_a_broken_study(finished: Path, tmp_path: Path, capsys) -> None:
    study = copy_study(finished, tmp_path)
    storage = study.parent
    broken = storage / "broken"
    shutil.copytree(study, broken)
    (broken / "spec.yaml").write_text("name: [unclosed\n")
    badstate = storage / "badstate"
    shutil.copytree(study, badstate)
    for f in badstate.glob("experiment_state-*.json"):
        f.write_text(json.dumps({"format": "from a future Ray"}))
    shutil.rmtree(badstate / ".state-backup", ignore_errors=True)
    code, out, err = run(capsys, "ls", "--storage", str(storage))
    assert code == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines()}
    assert rows["done"].split()[1:] == ["2", "terminated"]
    assert "BROKEN" in rows["broken"] and "spec.yaml" in rows["broken"]
    assert "BROKEN" in rows["badstate"] and "not an experiment state of Ray" in rows["badstate"]
    assert len(out.splitlines()) == 3
    code, _, err = run(capsys, "status", "broken", "--storage", str(storage))
    one_line_exit_2(code, err, "spec.yaml")


@pytest.mark.e2e
def test_compare_out_never_writes_inside_a_study(finished: Path, tmp_path: Path, capsys) -> None:
    study = copy_study(finished, tmp_path)
    spec_before = (study / "spec.yaml").read_bytes()
    for target in (study / "spec.yaml", study / "x.html", study / "results" / "c.html",
                   sorted(study.glob("trial_*"))[0] / "c.html"):  # fmt: skip
        code, _, err = run(capsys, "compare", "done", "--storage", str(study.parent), "--out", str(target))
        one_line_exit_2(code, err, f"--out {target}")
    link = tmp_path / "innocent.html"
    link.symlink_to(study / "spec.yaml")  # a link into a study is the study
    code, _, err = run(capsys, "compare", "done", "--storage", str(study.parent), "--out", str(link))
    one_line_exit_2(code, err, "inside the study directory")
    assert (study / "spec.yaml").read_bytes() == spec_before
    code, out, err = run(capsys, "compare", "done", "--storage", str(study.parent), "--out", str(tmp_path / "c.html"))
    assert code == 0 and (tmp_path / "c.html").exists(), err


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_report_on_read_only_storage_is_one_line_exit_2_nonroot(finished: Path, tmp_path: Path, capsys) -> None:
    study = copy_study(finished, tmp_path)
    for p in [study / "results", *(study / "results").iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    code, _, err = run(capsys, "report", "done", "--storage", str(study.parent))
    one_line_exit_2(code, err, "cannot write the report", "read-only")


@pytest.mark.e2e
def test_report_on_read_only_storage_is_one_line_exit_2(finished: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """As root (CI) permissions do not stop writes: a read-only file system is simulated where the
    report writes (the same OSError a read-only mount raises)."""
    import errno

    import study.results.tables as results_mod

    copied = copy_study(finished, tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(copied / "results" / "trials.parquet"))

    monkeypatch.setattr(results_mod, "write_parquet", read_only)
    code, _, err = run(capsys, "report", "done", "--storage", str(copied.parent))
    one_line_exit_2(code, err, "trials.parquet: cannot write the report (Read-only file system)")


# --- case 10: the state reader, never unpickling, and the pins ---------------------------------------


@pytest.mark.e2e
def test_reading_results_never_unpickles(finished: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import ray.cloudpickle

    study = copy_study(finished, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a reader unpickled something")

    for mod, names in ((pickle, ("load", "loads", "Unpickler")), (ray.cloudpickle, ("load", "loads")),
                       (torch, ("load",))):  # fmt: skip
        for n in names:
            monkeypatch.setattr(mod, n, refuse)
    storage = str(study.parent)
    for argv in (["ls", "--storage", storage], ["status", "done", "--storage", storage],
                 ["report", "done", "--storage", storage],
                 ["compare", "done", "--storage", storage, "--out", str(tmp_path / "c.html")]):  # fmt: skip
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
    assert pd.read_parquet(study / "results" / "trials.parquet")["status"].tolist() == ["TERMINATED"] * 2


@pytest.mark.e2e
def test_state_reader_reads_this_ray_and_refuses_another_format(finished: Path, tmp_path: Path, capsys) -> None:
    from study import tune_state

    state = tune_state.read_latest(finished)
    assert len(state.trials) == 2 and {t.status for t in state.trials} == {"TERMINATED"}
    assert all(t.config["epochs"] == 2 and (finished / t.logdir).is_dir() for t in state.trials)
    assert all(t.last_result.get("epoch") == 2 for t in state.trials)
    # a Ray that stores trials differently: one line naming the file and the tested version, exit 2
    study = copy_study(finished, tmp_path)
    shutil.rmtree(study / ".state-backup", ignore_errors=True)
    for f in study.glob("experiment_state-*.json"):
        raw = json.loads(f.read_text())
        raw["trial_data"] = [{"trial": t} for t in raw["trial_data"]]
        f.write_text(json.dumps(raw))
    code, _, err = run(capsys, "status", "done", "--storage", str(study.parent))
    one_line_exit_2(code, err, "experiment_state-", f"not an experiment state of Ray {tune_state.RAY_TESTED}")


def test_ray_and_torch_are_pinned_to_the_tested_versions() -> None:
    import ray
    import tomllib
    import torchvision

    from study import tune_state

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[=<>!~ ]", d, maxsplit=1)[0]: d for d in deps}
    assert pins["ray"] == f"ray[tune,default]=={ray.__version__}", pins["ray"]
    assert pins["torch"] == f"torch=={torch.__version__.split('+')[0]}"
    assert pins["torchvision"] == f"torchvision=={torchvision.__version__.split('+')[0]}"
    assert tune_state.RAY_TESTED == ray.__version__  # the reader was tested against the pinned Ray


# --- case 2: the lock's rules (the live refusal is in test_faults.py) --------------------------------


def _lock(study: Path, **fields) -> Path:
    from study.lock import _boot_id

    holder = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": 1, "pid_start": None, "started": "earlier",
              "heartbeat": time.time(), **fields}  # fmt: skip
    path = study / ".study.lock"
    path.write_text(json.dumps(holder))
    return path


@pytest.mark.e2e
def test_lock_left_by_a_dead_run_does_not_block(finished: Path, tmp_path: Path) -> None:
    study = copy_study(finished, tmp_path)
    spec = study.parent.parent / "done.yaml"
    write_spec(spec, name="done", repeats=1, fixed={"epochs": 2, "batch_size": 50})
    cmd = study_cmd("run", str(spec), "--storage", str(study.parent), "--no-report")
    dead = subprocess.Popen(["true"])
    dead.wait()
    cases = [
        ({"pid": dead.pid}, 0, "taking over the lock of a run that died (run on"),  # same host, process gone
        ({"host": "lost-node", "pid": 4242, "heartbeat": time.time() - 3600}, 0, "sent no heartbeat for"),
        ({"host": "busy-node", "pid": 4242, "heartbeat": time.time()}, 2, "(host busy-node, pid 4242"),
    ]
    for fields, code, needle in cases:
        _lock(study, **fields)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert needle in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        if code == 2:
            assert proc.stderr.count("\n") == 1 and time.time() - t0 < 60
            assert (study / ".study.lock").exists()  # the live holder's lock is left alone
        else:
            assert "already complete (2 terminated)" in proc.stdout
            assert not (study / ".study.lock").exists()  # released at the end


@pytest.mark.e2e
def test_live_holder_on_this_host_is_refused(finished: Path, tmp_path: Path) -> None:
    from study.lock import _pid_start

    study = copy_study(finished, tmp_path)
    spec = tmp_path / "done.yaml"
    write_spec(spec, name="done", repeats=1, fixed={"epochs": 2, "batch_size": 50})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(study, pid=holder.pid, pid_start=_pid_start(holder.pid))
        t0 = time.time()
        proc = subprocess.run(study_cmd("run", str(spec), "--storage", str(study.parent)), cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"study done is being run by another `study run` (host {socket.gethostname()}, pid {holder.pid}" in proc.stderr
        assert time.time() - t0 < 30  # refused before torch or Ray start
        # the same pid number with another start time is another process: not the holder
        _lock(study, pid=holder.pid, pid_start="1")
        proc = subprocess.run(study_cmd("run", str(spec), "--storage", str(study.parent), "--no-report"), cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0 and "taking over the lock" in proc.stdout, proc.stderr
    finally:
        holder.kill()


# --- cases 3 and 4 at the unit level: weights_only, fallback ------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trial_objects():
    from trainables.common import COMMON_DEFAULTS

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=COMMON_DEFAULTS["lr_milestones"] or [5])
    return model, opt, sched, torch.Generator().manual_seed(0)


def _save(d: Path, epoch: int, model, opt, sched, gen) -> None:
    d.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                "metrics": {"epoch": epoch, "test_acc": 0.5 + epoch / 10}}, d / "state.pt")  # fmt: skip


def test_checkpoints_are_read_with_weights_only_and_fall_back(tmp_path: Path) -> None:
    from ray import tune

    from trainables.common import RESTORE_NOTE, load_checkpoint

    tmp_path = tmp_path / "trial_x"  # a trial's checkpoints (siblings elsewhere are never candidates)
    model, opt, sched, gen = _trial_objects()
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(epoch)
        _save(tmp_path / f"checkpoint_{epoch - 1:06d}", epoch, model, opt, sched, gen)
    marker = tmp_path / "pwned"
    newest = tmp_path / "checkpoint_000002" / "state.pt"
    with newest.open("wb") as f:  # a crafted checkpoint: code in the pickle
        pickle.dump({"model": _Evil(marker)}, f)
    (tmp_path / "checkpoint_000001" / "state.pt").write_bytes(
        (tmp_path / "checkpoint_000001" / "state.pt").read_bytes()[:100]
    )  # and a truncated one
    model, opt, sched, gen = _trial_objects()
    start, metrics, note = load_checkpoint(tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000002")),
                                           torch.device("cpu"), model, opt, sched, gen)  # fmt: skip
    assert not marker.exists()  # nothing ran
    assert start == 1 and metrics["epoch"] == 1 and float(model.weight[0, 0]) == 1.0
    assert note[RESTORE_NOTE].startswith("checkpoint checkpoint_000002 (UnpicklingError")
    assert note[RESTORE_NOTE].endswith("resumed from checkpoint_000000 (epoch 1)")
    # nothing readable: start again from scratch, with the untouched initial weights
    shutil.rmtree(tmp_path / "checkpoint_000000")
    model, opt, sched, gen = _trial_objects()
    before = model.weight.detach().clone()
    start, metrics, note = load_checkpoint(tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000002")),
                                           torch.device("cpu"), model, opt, sched, gen)  # fmt: skip
    assert (start, metrics) == (0, {}) and torch.equal(model.weight, before) and not marker.exists()
    assert "no other is readable; restarted from epoch 1" in note[RESTORE_NOTE]


def test_data_parallel_trials_fall_back_on_the_trials_own_checkpoints(tmp_path: Path) -> None:
    """A DDP trial's driver picks the newest readable checkpoint of the trial (and says so once);
    its workers restore from a copy under /tmp whose neighbours (other trials' downloads) are never
    read."""
    from ray import tune

    from trainables.common import RESTORE_NOTE, _checkpoint_candidates, read_checkpoint
    from trainables.ddp import readable_checkpoint_files
    from trainables.runtime import write_checkpoint

    trial = tmp_path / "trial_y"
    model, opt, sched, gen = _trial_objects()
    for epoch in (1, 2):
        _save(trial / f"checkpoint_{epoch - 1:06d}", epoch, model, opt, sched, gen)
    newest = trial / "checkpoint_000001" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:50])
    files, note = readable_checkpoint_files(tune.Checkpoint.from_directory(str(trial / "checkpoint_000001")))
    copy = write_checkpoint(files)
    assert read_checkpoint(copy, torch.device("cpu"))["epoch"] == 1
    assert note[RESTORE_NOTE].startswith("checkpoint checkpoint_000001 (") and note[RESTORE_NOTE].endswith("(epoch 1)")
    # the workers' copy: no siblings (its parent is a shared temp directory, not a trial's)
    assert _checkpoint_candidates(tune.Checkpoint.from_directory(copy)) == [copy]
    shutil.rmtree(copy)
    # nothing readable: no files, start from scratch, said once
    (trial / "checkpoint_000000" / "state.pt").write_bytes(b"junk")
    files, note = readable_checkpoint_files(tune.Checkpoint.from_directory(str(trial / "checkpoint_000001")))
    assert files is None and "no other is readable; restarted from epoch 1" in note[RESTORE_NOTE]


def test_a_new_trial_never_reuses_an_existing_trial_directory(tmp_path: Path) -> None:
    """Tune reuses trial ids when it starts a study over (its id prefix is saved in tuner.pkl)."""
    from types import SimpleNamespace

    import pyarrow.fs

    from study.runner import trial_dirname

    trial = SimpleNamespace(trial_id="abcde_00000", storage=SimpleNamespace(
        storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(tmp_path)))  # fmt: skip
    assert trial_dirname(trial) == "trial_abcde_00000"
    (tmp_path / "trial_abcde_00000").mkdir()
    other = trial_dirname(trial)
    assert other.startswith("trial_abcde_00000_") and not (tmp_path / other).exists()
