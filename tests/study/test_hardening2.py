"""Hardening of the study side, round two: nothing from a file the platform did not write runs, leaks
or lies. Each test builds a small study directory in Tune's layout in code (no Ray), breaks it the
way a crafted or damaged copy would, and asserts what a user sees: the exit status, the one line,
nothing read from or written outside the study, nothing hanging.

Cases: paths named in the state (error files, trial directories, links) stay inside the study;
remote keys and links never write outside the local mirror; the lock's takeover and advice;
``results/`` as a link; JSON of any depth; non-regular and huge files; `study submit` uploads the
project only; recovery from a backup adopts finished trials; the resource checks.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError
from core.safe_read import UnsafeFile, confined, loads_json, read_bounded, read_tail, safe_relpath
from study.cli import main
from tests.conftest import write_spec

SECRET = "TOP-SECRET-CONTENT-4242"
STATE_NAME = "experiment_state-2026-01-01_00-00-00.json"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err[:2000]
    for n in needles:
        assert n in err, err


def _rows(tid: str, epochs: int) -> str:
    return "".join(json.dumps({"epoch": e, "test_acc": 0.5 + 0.1 * e, "train_loss": 1.0 / e, "params": 10,
                               "time_total_s": e, "trial_id": tid, "diverged": 0}) + "\n"
                   for e in range(1, epochs + 1))  # fmt: skip


def entry(tid: str, status: str, seed: int, **meta: Any) -> list[str]:
    config = {"arch": "ConvNet", "seed": seed, "epochs": 2, "batch_size": 50, "lr": 0.01}
    trial = {"trial_id": tid, "status": status, "config": config, "relative_logdir": meta.pop("logdir", f"trial_{tid}")}
    return [json.dumps(trial), json.dumps({"num_failures": 0, "last_result": {}, **meta})]


def make_study(root: Path, name: str = "s", entries: list | None = None) -> Path:
    """STORAGE/NAME with spec.yaml, a state of two trials (a finished one, a failed one) and their dirs."""
    study = root / name
    study.mkdir(parents=True)
    write_spec(study / "spec.yaml", name=name, repeats=2, space={"arch": {"grid": ["ConvNet"]}})
    (study / "trial_a").mkdir()
    (study / "trial_a" / "result.json").write_text(_rows("a", 2))
    (study / "trial_b").mkdir()
    (study / "trial_b" / "error.txt").write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
    if entries is None:
        entries = [entry("a", "TERMINATED", 0), entry("b", "ERROR", 1, error_filename="error.txt")]
    (study / STATE_NAME).write_text(json.dumps({"trial_data": entries}))
    return study


def collect_of(study: Path):
    from study.results.tables import collect
    from study.spec import load_spec

    return collect(study, load_spec(study / "spec.yaml"))


# --- paths named in the state stay inside the study --------------------------------------------------


@pytest.mark.parametrize("shape", ["absolute", "dotdot", "link", "link-dir"])
def test_error_file_named_in_the_state_is_read_only_inside_the_trial_dir(tmp_path: Path, capsys, shape: str) -> None:
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text(f"-----BEGIN KEY-----\n{SECRET}\n")
    study = make_study(tmp_path / "storage")
    name = {"absolute": str(secret), "dotdot": "../../../outside/id_rsa", "link": "error.txt", "link-dir": "d/id_rsa"}[
        shape
    ]
    if shape == "link":
        (study / "trial_b" / "error.txt").unlink()
        (study / "trial_b" / "error.txt").symlink_to(secret)
    if shape == "link-dir":
        (study / "trial_b" / "d").symlink_to(secret.parent)
    state = json.loads((study / STATE_NAME).read_text())
    state["trial_data"][1] = entry("b", "ERROR", 1, error_filename=name)
    (study / STATE_NAME).write_text(json.dumps(state))
    trials, _ = collect_of(study)
    row = trials.set_index("trial_id").loc["b"]
    assert row["status"] == "ERROR" and SECRET not in str(row["error"])
    err = capsys.readouterr().err
    assert "outside the trial directory: ignored" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("logdir", ["../victim/trial_v", "/etc", "trial_a\\..\\..\\victim", "link"])
def test_trial_directory_outside_the_study_is_ignored_with_one_line(tmp_path: Path, capsys, logdir: str) -> None:
    victim = tmp_path / "storage" / "victim" / "trial_v"
    victim.mkdir(parents=True)
    (victim / "result.json").write_text(_rows("v", 2).replace("0.7", "0.999"))
    (victim / "checkpoint_000000").mkdir()
    (victim / "checkpoint_000001").mkdir()
    study = make_study(tmp_path / "storage")
    if logdir == "link":
        (study / "trial_l").symlink_to(victim)
        logdir = "trial_l"
    state = json.loads((study / STATE_NAME).read_text())
    state["trial_data"].append(entry("c", "TERMINATED", 2, logdir=logdir))
    (study / STATE_NAME).write_text(json.dumps(state))
    trials, epochs = collect_of(study)
    row = trials.set_index("trial_id").loc["c"]
    assert row["status"] == "MISSING" and "outside the study directory: ignored" in row["error"]
    assert "c" not in set(epochs["trial_id"])  # nothing of the victim's results was read
    assert "outside the study directory: ignored" in capsys.readouterr().err
    # pruning never deletes another directory's checkpoints
    import pyarrow.fs

    from study.run.callbacks import prune_checkpoints

    prune_checkpoints(pyarrow.fs.LocalFileSystem(), str(study))
    assert sorted(p.name for p in victim.iterdir()) == ["checkpoint_000000", "checkpoint_000001", "result.json"]


def test_confined_and_safe_relpath_rules(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "up").symlink_to(tmp_path)
    assert confined(tmp_path / "in", "a/b") == (tmp_path / "in" / "a" / "b").resolve()
    for bad in ("../x", "/etc/passwd", "up/x", "a/../../x"):
        assert confined(tmp_path / "in", bad) is None, bad
    assert safe_relpath("trial_1/result.json")
    for bad in ("", "../x", "/x", "a\\b", "a/./b", "a/..", "C:/x", "a\0b"):
        assert not safe_relpath(bad), bad


# --- remote keys and links never write outside the local mirror --------------------------------------


class _FakeFS:
    """A pyarrow-like filesystem that lists the keys it is given (what a hostile server could send)."""

    def __init__(self, base: str, keys: dict[str, bytes]) -> None:
        self.base, self.keys = base, keys

    def get_file_info(self, selector: Any):
        import pyarrow.fs

        if isinstance(selector, str):
            t = pyarrow.fs.FileType.File if selector in self.keys else pyarrow.fs.FileType.NotFound
            return pyarrow.fs.FileInfo(selector, type=t)
        return [pyarrow.fs.FileInfo(k, type=pyarrow.fs.FileType.File, size=len(v)) for k, v in self.keys.items()]

    def open_input_stream(self, path: str):
        return io.BytesIO(self.keys[path])


@pytest.mark.parametrize("key", ["../../escaped.txt", "/abs/escaped.txt", "..\\..\\escaped.txt", "sub/../../../escaped.txt",
                                 "/bucket/other-study/escaped.txt"])  # fmt: skip
def test_mirror_refuses_a_listed_key_outside_the_study(tmp_path: Path, monkeypatch, key: str) -> None:
    from study import storage

    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    store = storage.Store("s3://bucket")
    src = "bucket/s"
    path = key if key.startswith("/") else f"{src}/{key}"
    fs = _FakeFS(src, {f"{src}/spec.yaml": b"name: s\n", path: b"pwned"})
    monkeypatch.setattr(storage.Store, "_fs", lambda self: (fs, "bucket"))
    with pytest.raises(UserError) as e:
        store.pull("s")
    assert "would be written outside the local mirror" in str(e.value) and "\n" not in str(e.value)
    assert not [p for p in tmp_path.rglob("escaped.txt")] and not list((tmp_path / "cache").rglob("spec.yaml"))


def test_mirror_never_writes_through_a_link_in_it(tmp_path: Path, monkeypatch) -> None:
    from study import storage

    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    remote = tmp_path / "remote"
    make_study(remote)
    store = storage.Store.open(f"file://{remote}")
    outside = tmp_path / "outside"
    outside.mkdir()
    mirror = store.local_dir("s")
    mirror.mkdir(parents=True)
    (mirror / "trial_a").symlink_to(outside)  # a link left in the mirror: a directory of it
    with pytest.raises(UserError, match="outside the local mirror"):
        store.pull("s")
    assert list(outside.iterdir()) == []
    (mirror / "trial_a").unlink()
    (mirror / "spec.yaml").symlink_to(outside / "victim.yaml")  # a link at a file's name: replaced, not followed
    assert store.pull("s") == mirror
    assert not (outside / "victim.yaml").exists() and not (mirror / "spec.yaml").is_symlink()
    # push uploads regular files of the mirror only, never a link's target
    (mirror / "results").mkdir(exist_ok=True)
    (outside / "credentials").write_text(SECRET)
    (mirror / "results" / "trials.parquet").write_text("table")
    (mirror / "results" / "leak").symlink_to(outside / "credentials")
    store.push("s", "results")
    assert (remote / "s" / "results" / "trials.parquet").read_text() == "table"
    assert not (remote / "s" / "results" / "leak").exists()


# --- the lock -----------------------------------------------------------------------------------------


def _write_lock(study: Path, **fields: Any) -> Path:
    from study.lock import _boot_id

    holder = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": 1, "pid_start": None,
              "started": "earlier", "heartbeat": time.time(), **fields}  # fmt: skip
    path = study / ".study.lock"
    path.write_text(json.dumps(holder))
    return path


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _acquire(storage: Path) -> str:
    """The note of a takeover, or the refusal's line."""
    from study.lock import StudyLock
    from study.storage import Store

    try:
        lock = StudyLock(Store.open(storage), "s").acquire()
    except UserError as e:
        return f"refused: {e}"
    lock.release()
    return lock.note or "acquired"


def test_lock_of_another_machine_with_this_hostname_is_kept_while_it_beats(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    dead = _dead_pid()
    # another machine, same hostname (NFS): its pid means nothing here; its heartbeat is fresh
    for boot in ("another-machine-boot-id", None):
        _write_lock(study, pid=dead, boot_id=boot)
        assert _acquire(tmp_path).startswith("refused: "), boot
        assert (study / ".study.lock").exists()
    # once its heartbeat is stale and its pid is not running here: taken over
    _write_lock(study, pid=dead, boot_id="another-machine-boot-id", heartbeat=time.time() - 3600)
    assert "sent no heartbeat for" in _acquire(tmp_path)
    # this machine, pid gone: at once (the heartbeat cannot outlive the process)
    _write_lock(study, pid=dead)
    assert "is gone" in _acquire(tmp_path)
    # a heartbeat far in the future does not keep a dead machine's lock for ever
    _write_lock(study, pid=dead, boot_id="x", heartbeat=time.time() + 10**9)
    os.utime(study / ".study.lock", (time.time() - 3600, time.time() - 3600))
    assert "sent no heartbeat for" in _acquire(tmp_path)


@pytest.mark.parametrize("fields", [{"pid": 1}, {"pid": 1, "boot_id": "other"}, {"pid": os.getppid()},
                                    {"pid": "1; rm -rf ~"}, {"pid": True}])  # fmt: skip
def test_lock_advice_never_names_a_pid_it_cannot_vouch_for(tmp_path: Path, fields: dict) -> None:
    study = make_study(tmp_path)
    _write_lock(study, **fields)
    line = _acquire(tmp_path)
    assert line.startswith("refused: ") and "kill" not in line, line
    assert "delete" in line or "stop it on" in line or "cannot be confirmed" in line, line


def test_lock_advice_names_the_verified_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    from study.lock import _pid_start

    study = make_study(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(study, pid=holder.pid, pid_start=_pid_start(holder.pid))
        assert f"(kill {holder.pid})" in _acquire(tmp_path)
    finally:
        holder.kill()


def test_terminal_escapes_from_a_lock_file_are_never_printed(tmp_path: Path, capsys) -> None:
    study = make_study(tmp_path)
    evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mhost\r\n"
    _write_lock(study, host=evil, started=evil, pid=1, boot_id="other")
    line = _acquire(tmp_path)
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line and "[31mhost" in line
    code, out, err = run(capsys, "status", "s", "--storage", str(tmp_path))
    assert code == 0 and "being run by" in out and "\x1b" not in out + err and "\x07" not in out + err, out + err


# --- results/ as a link -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["other-study", "file"])
def test_report_never_writes_through_a_results_link(tmp_path: Path, capsys, target: str) -> None:
    storage = tmp_path / "storage"
    study = make_study(storage)
    other = make_study(storage, "other")
    (other / "results").mkdir()
    (other / "results" / "trials.parquet").write_text("the other study's table")
    if target == "other-study":
        (study / "results").symlink_to(other / "results")
    else:
        (study / "results").write_text("not a directory")
    code, _, err = run(capsys, "report", "s", "--storage", str(storage))
    one_line_exit_2(code, err, f"{study / 'results'}: ", "nothing is written")
    assert (other / "results" / "trials.parquet").read_text() == "the other study's table"
    assert sorted(p.name for p in (other / "results").iterdir()) == ["trials.parquet"]


# --- JSON of any depth ---------------------------------------------------------------------------------


def _deep(n: int = 200_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("where", ["state", "trial", "meta"])
def test_deeply_nested_state_falls_back_to_the_backup(tmp_path: Path, capsys, where: str) -> None:
    from study.results import state as tune_state

    study = make_study(tmp_path)
    backup = study / tune_state.BACKUP_DIR
    backup.mkdir()
    (backup / STATE_NAME).write_text((study / STATE_NAME).read_text())
    if where == "state":
        bad = '{"trial_data": ' + _deep() + "}"
    elif where == "trial":
        bad = json.dumps({"trial_data": [[_deep(), "{}"]]})
    else:
        bad = json.dumps({"trial_data": [[entry("a", "TERMINATED", 0)[0], '{"x": ' + _deep() + "}"]]})
    (study / "experiment_state-2026-01-02_00-00-00.json").write_text(bad)  # a newer session, crafted
    latest = tune_state.read_latest(study)  # the older session's file (the backup has the same session)
    assert latest.path.name == STATE_NAME and [t.trial_id for t in latest.trials] == ["a", "b"]
    assert "nested too deeply" in latest.skipped[0][1]
    (study / STATE_NAME).unlink()
    assert tune_state.read_latest(study).path == backup / STATE_NAME
    code, out, err = run(capsys, "status", "s", "--storage", str(tmp_path))
    assert code == 0 and "1 terminated, 1 error" in out, out + err
    note = tune_state.repair_state(study)  # the resume path: set aside, resumed from a good copy
    assert note and "is corrupt" in note and "resuming from" in note


def test_deeply_nested_result_line_and_lock_are_refused_cleanly(tmp_path: Path, capsys) -> None:
    study = make_study(tmp_path)
    with (study / "trial_a" / "result.json").open("a") as f:
        f.write(_deep() + "\n")
    trials, epochs = collect_of(study)
    assert trials.set_index("trial_id").loc["a", "epochs_done"] == 2  # the crafted line is skipped
    (study / ".study.lock").write_text(_deep())
    os.utime(study / ".study.lock", (time.time() - 60, time.time() - 60))
    assert "unreadable lock file" in _acquire(tmp_path)
    with pytest.raises(UnsafeFile, match="nested too deeply"):
        loads_json(_deep(), "x.json")


# --- bounded reads of regular files only --------------------------------------------------------------


def _in_thread(fn, timeout: float = 60.0):
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge", "directory"])
def test_result_file_that_is_not_a_regular_bounded_file_is_refused(
    tmp_path: Path, capsys, monkeypatch, kind: str
) -> None:
    from core import safe_read
    from study.results import state as tune_state

    study = make_study(tmp_path)
    result = study / "trial_a" / "result.json"
    result.unlink()
    if kind == "fifo":
        os.mkfifo(result)
    elif kind == "dev-zero":
        result.symlink_to("/dev/zero")
    elif kind == "huge":
        monkeypatch.setattr(tune_state, "RESULT_LIMIT", 1000)
        monkeypatch.setattr(tune_state.read_jsonl, "__defaults__", (1000,))
        result.write_text(_rows("a", 2) * 100)
    else:
        result.mkdir()
    # the error file as well: a FIFO or /dev/zero where the traceback should be
    (study / "trial_b" / "error.txt").unlink()
    if kind == "fifo":
        os.mkfifo(study / "trial_b" / "error.txt")
    else:
        (study / "trial_b" / "error.txt").symlink_to("/dev/zero")
    trials, _ = _in_thread(lambda: collect_of(study))
    rows = trials.set_index("trial_id")
    assert rows.loc["a", "status"] == "MISSING" and "not read" in rows.loc["a", "error"]
    assert rows.loc["b", "status"] == "ERROR"
    err = capsys.readouterr().err
    assert "result.json" in err and "not read" in err, err
    assert safe_read.ERROR_TAIL <= 1 << 20


def test_state_and_lock_that_are_fifos_or_devices_never_hang(tmp_path: Path, capsys) -> None:
    from study.results import state as tune_state

    study = make_study(tmp_path)
    backup = study / tune_state.BACKUP_DIR
    backup.mkdir()
    (backup / STATE_NAME).write_text((study / STATE_NAME).read_text())
    os.mkfifo(study / "experiment_state-2026-01-02_00-00-00.json")  # not a file: not one of the states
    (study / "experiment_state-2026-01-03_00-00-00.json").symlink_to("/dev/zero")
    latest = _in_thread(lambda: tune_state.read_latest(study))
    assert [t.trial_id for t in latest.trials] == ["a", "b"]
    os.mkfifo(study / ".study.lock")
    os.utime(study / ".study.lock", (time.time() - 60, time.time() - 60))
    assert "unreadable lock file" in _in_thread(lambda: _acquire(tmp_path))


def test_read_bounded_refuses_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(UnsafeFile, match="5,000 bytes, more than the 1,000"):
        read_bounded(big, 1000)
    assert read_bounded(big, 5000) == b"x" * 5000
    assert read_tail(big, 10) == b"x" * 10
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for fn in (lambda: read_bounded(fifo, 10), lambda: read_tail(fifo), lambda: read_bounded("/dev/zero", 10)):
        with pytest.raises(UnsafeFile, match="not a regular file"):
            _in_thread(fn)


# --- one count for status and report; packs' best configuration ------------------------------------------


@pytest.mark.parametrize("damage", ["none", "cut-to-1", "gap", "empty", "deleted", "fifo", "cut-line", "link-out"])
def test_status_and_report_count_missing_trials_alike(tmp_path: Path, damage: str) -> None:
    from study.results.counts import study_counts

    state_says_done = {"last_result": {"epoch": 2, "test_acc": 0.7}}  # the state is ahead of the file
    study = make_study(tmp_path, entries=[entry("a", "TERMINATED", 0, **state_says_done),
                                          entry("b", "ERROR", 1, error_filename="error.txt"),
                                          entry("c", "TERMINATED", 2, **state_says_done)])  # fmt: skip
    (study / "trial_c").mkdir()
    (study / "trial_c" / "result.json").write_text(_rows("c", 2))
    result = study / "trial_a" / "result.json"
    lines = result.read_text().splitlines(keepends=True)
    if damage == "cut-to-1":
        result.write_text(lines[0])
    elif damage == "gap":
        result.write_text(lines[1])
    elif damage == "empty":
        result.write_text("")
    elif damage == "deleted":
        import shutil

        shutil.rmtree(study / "trial_a")
    elif damage == "fifo":
        result.unlink()
        os.mkfifo(result)
    elif damage == "cut-line":
        result.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    elif damage == "link-out":
        (tmp_path / "elsewhere.json").write_text("".join(lines))
        result.unlink()
        result.symlink_to(tmp_path / "elsewhere.json")
    trials, _ = collect_of(study)
    from_report = trials["status"].value_counts().to_dict()
    assert _in_thread(lambda: study_counts(study)) == from_report
    expected = "TERMINATED" if damage == "none" else "MISSING"
    assert trials.set_index("trial_id").loc["a", "status"] == expected


def test_progress_line_of_a_packed_study_names_the_best_member(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from study.run.callbacks import make_progress_callback
    from study.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "p.yaml", repeats=2, fixed={"epochs": 2, "batch_size": 50, "lr": 0.01}))
    pack = {"shared": {"arch": "Siamese", "epochs": 2}, "members": [{"seed": 0, "lr": 0.01}, {"seed": 1, "lr": 0.01}]}
    meta = SimpleNamespace(metric_analysis={"test_acc": {"max": 0.9}}, num_failures=0)
    trial = SimpleNamespace(
        status="RUNNING", run_metadata=meta, config={"__pack__": pack}, trial_id="p", error_file=None
    )
    out = io.StringIO()
    cb = make_progress_callback(spec, out)
    cb.on_trial_result(0, [trial], trial, {"epoch": 1, "members": {"0": {"test_acc": 0.6}, "1": {"test_acc": 0.9}}})
    cb.on_trial_complete(0, [trial], trial)
    line = out.getvalue().strip().splitlines()[-1]
    assert "best test_acc=0.9 (arch=Siamese seed=1)" in line, line
    assert "()" not in line


# --- study submit uploads the project only ----------------------------------------------------------------


class _FakeJobsAPI:
    """A Ray Jobs API on 127.0.0.1 that records every package uploaded and every job submitted."""

    def __init__(self) -> None:
        import http.server

        self.packages: list[bytes] = []
        self.jobs: list[dict] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, code: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/api/version"):
                    self._reply(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "x", "session_name": "s"})
                else:  # no token auth (an older head), no package yet
                    self._reply(404, {})

            def do_PUT(self) -> None:  # noqa: N802
                api.packages.append(self.rfile.read(int(self.headers["Content-Length"])))
                self._reply(200, {})

            def do_POST(self) -> None:  # noqa: N802
                api.jobs.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self._reply(200, {"job_id": "raysubmit_1", "submission_id": "raysubmit_1"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def uploaded(self) -> list[str]:
        import zipfile

        names: list[str] = []
        for data in self.packages:
            names += zipfile.ZipFile(io.BytesIO(data)).namelist()
        return names


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return home


def _project(root: Path, home: Path) -> Path:
    """A checkout of the project with things around it that must never leave the machine."""
    (root / "study").mkdir(parents=True)
    (root / "study" / "__init__.py").write_text("")
    (root / "core").mkdir()
    (root / "core" / "x.py").write_text("X = 1\n")
    (root / "core" / "__pycache__").mkdir()
    (root / "core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "pyproject.toml").write_text('[project]\nname = "study-platform"\n')
    (root / "search_spaces").mkdir()
    write_spec(root / "search_spaces" / "s.yaml", name="s")
    (root / "search_spaces" / "keys").symlink_to(home / ".ssh")  # links into the home directory
    (root / "search_spaces" / "creds.yaml").symlink_to(home / ".aws" / "credentials")
    (root / ".env").write_text(SECRET)
    (root / "studies" / "old").mkdir(parents=True)
    (root / "studies" / "old" / "result.json").write_text("{}")
    (root / "notes.txt").write_text(SECRET)
    return root


def test_submit_uploads_the_project_list_only(fake_home: Path, tmp_path: Path, capsys) -> None:
    api = _FakeJobsAPI()
    project = _project(tmp_path / "proj", fake_home)
    try:
        code, out, err = run(capsys, "submit", str(project / "search_spaces" / "s.yaml"), "--address", api.url)
        assert code == 0, err
        names = api.uploaded()
        assert names and {n.split("/")[0] for n in names} <= {"core", "study", "search_spaces", "pyproject.toml"}, names
        assert "search_spaces/s.yaml" in names and "core/x.py" in names
        assert not [n for n in names if "__pycache__" in n or "keys" in n or "creds" in n], names
        assert "[study] uploading from" in out and "core/ study/ search_spaces/ pyproject.toml" in out, out
        assert api.jobs[0]["entrypoint"] == "study run search_spaces/s.yaml --address auto"
        # a spec elsewhere in the project goes by itself
        write_spec(project / "mine.yaml", name="m")
        code, out, err = run(capsys, "submit", str(project / "mine.yaml"), "--address", api.url)
        assert code == 0 and "mine.yaml" in api.uploaded() and "notes.txt" not in api.uploaded(), err
    finally:
        api.server.shutdown()


@pytest.mark.parametrize("where", ["home", "other-project"])
def test_submit_from_a_directory_that_is_not_the_project_is_refused(fake_home: Path, capsys, where: str) -> None:
    api = _FakeJobsAPI()
    if where == "other-project":
        (fake_home / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    spec = write_spec(fake_home / "s.yaml", name="s")
    try:
        code, _, err = run(capsys, "submit", str(spec), "--address", api.url)
        one_line_exit_2(code, err, "nothing is uploaded")
        assert api.packages == [] and api.jobs == []
    finally:
        api.server.shutdown()


# --- recovery from an older copy of the state never re-runs finished work ----------------------------------


@pytest.mark.parametrize("source", ["backup", "older-session", "state-deleted"])
def test_recovery_from_an_older_state_keeps_trials_finished_since(tmp_path: Path, source: str) -> None:
    from study.results import state as tune_state

    # the copy was saved while a and c ran; both finished since (c only 1 of its 2 epochs: not finished)
    old = [entry("a", "RUNNING", 0), entry("b", "ERROR", 1, error_filename="error.txt"), entry("c", "PENDING", 2)]
    study = make_study(tmp_path, entries=old)
    (study / "trial_c").mkdir()
    (study / "trial_c" / "result.json").write_text(_rows("c", 1))
    older = study / STATE_NAME
    if source == "backup":
        (study / tune_state.BACKUP_DIR).mkdir()
        os.replace(older, study / tune_state.BACKUP_DIR / "experiment_state-2026-01-02_00-00-00.json")
    if source != "state-deleted":
        (study / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [["{\\"trial_id')  # cut
    else:
        (study / tune_state.BACKUP_DIR).mkdir()
        os.replace(older, study / tune_state.BACKUP_DIR / STATE_NAME)
    before = (study / "trial_a" / "result.json").read_bytes()
    note = tune_state.repair_state(study, epochs_default=2)
    assert note and "1 trial(s) finished after that copy kept as finished" in note, note
    status = {t.trial_id: t.status for t in tune_state.read_latest(study).trials}
    assert status == {"a": "TERMINATED", "b": "ERROR", "c": "PENDING"}
    assert tune_state.read_latest(study).trials[0].last_result["epoch"] == 2
    assert (study / "trial_a" / "result.json").read_bytes() == before
    from study.results.counts import study_counts

    assert study_counts(study) == {"TERMINATED": 1, "ERROR": 1, "PENDING": 1}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A tiny study run to the end by a real `study run` (2 trials of 2 epochs)."""
    import subprocess

    from tests.conftest import REPO, study_cmd

    root = tmp_path_factory.mktemp("adopt")
    spec = write_spec(root / "adopt.yaml", name="adopt", repeats=1)
    proc = subprocess.run(study_cmd("run", str(spec), "--storage", str(root / "studies"), "--no-report"), cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root


@pytest.mark.fault
def test_resume_from_a_backup_older_than_finished_trials_retrains_none(finished_study: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    from study.results import state as tune_state
    from tests.conftest import REPO, study_cmd

    root = tmp_path / "copy"
    shutil.copytree(finished_study, root, symlinks=True)
    study = root / "studies" / "adopt"
    newest = tune_state.state_files(study)[-1]
    # the backup as it was while both trials ran; the newest state then corrupted by a crash
    state = json.loads(newest.read_text())
    for item in state["trial_data"]:
        trial = json.loads(item[0])
        trial["status"] = "RUNNING"
        item[0] = json.dumps(trial)
    backup = study / tune_state.BACKUP_DIR
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir()
    for f in tune_state._snapshot_files(study, tune_state.session_of(newest)):
        shutil.copyfile(f, backup / f.name)
    (backup / newest.name).write_text(json.dumps(state))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    results = {p: p.read_bytes() for p in study.glob("trial_*/result.json")}
    proc = subprocess.run(study_cmd("run", str(root / "adopt.yaml"), "--storage", str(root / "studies"), "--no-report"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trial(s) finished after that copy kept as finished" in proc.stdout, proc.stdout
    assert {p: p.read_bytes() for p in study.glob("trial_*/result.json")} == results  # none trained again
    import pandas as pd

    assert pd.read_parquet(study / "results" / "trials.parquet")["status"].tolist() == ["TERMINATED"] * 2


# --- resources the cluster can never hold ---------------------------------------------------------------


def _cluster(
    monkeypatch, resources: dict, autoscaling: bool = False, bootstrap: str | None = None, tmp: Path | None = None
):
    import ray

    from study.run import cluster

    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": dict(resources)}])
    monkeypatch.setattr(cluster, "autoscaling_cluster", lambda: autoscaling)
    if bootstrap is not None and tmp is not None:
        (tmp / "bootstrap.yaml").write_text(bootstrap)
        monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(tmp / "bootstrap.yaml"))
    else:
        monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", "/nonexistent/bootstrap.yaml")


@pytest.mark.parametrize("workers,cpu", [(3, 1), (50, 1), (2, 1.5)])
def test_workers_the_cluster_cannot_hold_are_refused_before_anything_starts(tmp_path: Path, monkeypatch, workers: int,
                                                                             cpu: float) -> None:  # fmt: skip
    from study.run.cluster import check_resources
    from study.spec import load_spec

    _cluster(monkeypatch, {"CPU": 2.0, "memory": 8e9})
    spec = load_spec(write_spec(tmp_path / "s.yaml"), [f"resources.workers={workers}", f"resources.cpu={cpu}"])
    with pytest.raises(UserError) as e:
        check_resources(spec)
    line = str(e.value)
    assert "\n" not in line and f"{workers} workers x cpu={cpu:g} need CPU={workers * cpu:g}" in line, line
    assert "cluster has CPU=2" in line
    # an autoscaling cluster is judged by the most it can grow to, when its config says
    boot = "head_node_type: head\navailable_node_types:\n  head: {resources: {CPU: 2}, max_workers: 0}\n" \
           "  worker: {resources: {CPU: 4}, max_workers: 2}\n"  # fmt: skip
    _cluster(monkeypatch, {"CPU": 2.0}, autoscaling=True, bootstrap=boot, tmp=tmp_path)
    if workers * cpu > 10:
        with pytest.raises(UserError, match="CPU=10 \\(at most, with the autoscaler's largest size\\)"):
            check_resources(spec)
    else:
        check_resources(spec)  # it can grow to 10 CPUs: waits for the autoscaler
    _cluster(monkeypatch, {"CPU": 2.0}, autoscaling=True)  # size unknown: not refused
    check_resources(spec)


def test_trial_processes_are_bounded_by_memory(tmp_path: Path, monkeypatch) -> None:
    from study.run import shapes
    from study.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "s.yaml"), ["resources.cpu=0.25"])  # 8 trials by CPU on 2 cores
    _cluster(monkeypatch, {"CPU": 2.0, "memory": 3.5 * 2**30})
    assert shapes.max_concurrent(spec) == 3  # 1 GiB per trial process
    _cluster(monkeypatch, {"CPU": 2.0, "memory": 0.5 * 2**30})
    assert shapes.max_concurrent(spec) == 1  # never 0: one trial always runs
    ddp = load_spec(write_spec(tmp_path / "d.yaml"), ["resources.workers=2", "resources.cpu=0.5"])
    _cluster(monkeypatch, {"CPU": 4.0, "memory": 3.5 * 2**30})
    assert shapes.max_concurrent(ddp) == 1  # 2 worker processes per trial: memory for one trial at once
    capped = load_spec(write_spec(tmp_path / "c.yaml"), ["search.max_concurrent=2"])
    _cluster(monkeypatch, {"CPU": 2.0, "memory": 64 * 2**30})
    assert shapes.max_concurrent(capped) == 2
    _cluster(monkeypatch, {"CPU": 2.0}, autoscaling=True)  # unknown size, no memory figure: Tune's own limit
    assert shapes.max_concurrent(spec) is None


@pytest.mark.e2e
def test_study_run_with_more_workers_than_cpus_is_one_line_not_a_hang(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import REPO, study_cmd

    spec = write_spec(tmp_path / "ddp.yaml", name="ddp", repeats=1)
    t0 = time.time()
    workers = (os.cpu_count() or 2) + 1
    proc = subprocess.run(study_cmd("run", str(spec), "--storage", str(tmp_path / "studies"), "--set",
                                    f"resources.workers={workers}"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{workers} workers x cpu=1 need CPU={workers}" in proc.stderr
    assert "done," not in proc.stdout and time.time() - t0 < 120  # no progress lines: nothing started


@pytest.mark.fault
def test_ray_processes_and_trial_workers_end_with_a_killed_run(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess

    from study.run.reaper import _stat, descendants
    from tests.conftest import REPO, study_cmd

    # 3000 epochs: the run is killed long before its trials could end, on any machine
    spec = write_spec(
        tmp_path / "k.yaml", name="k", repeats=2, fixed={"epochs": 3000, "batch_size": 50, "lr": 0.01}
    )  # killed long before the end
    log = tmp_path / "out.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(study_cmd("run", str(spec), "--storage", str(tmp_path / "studies")), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not re.search(r" [12] running", log.read_text()):
            time.sleep(1)
        time.sleep(3)  # the watcher has seen the trial workers
        tree = descendants(proc.pid)
        assert any(b"ImplicitFunc" in Path(f"/proc/{p}/cmdline").read_bytes() for p in tree if _stat(p)), (
            log.read_text()
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    t0 = time.time()
    while time.time() - t0 < 30 and [p for p, s in tree.items() if (_stat(p) or (0, None))[1] == s]:
        time.sleep(0.5)
    left = [p for p, s in tree.items() if (_stat(p) or (0, None))[1] == s]
    for p in left:  # leave nothing behind, whatever the outcome
        os.kill(p, signal.SIGKILL)
    assert not left and time.time() - t0 < 20  # was 60-100 s (the agents) and the workers trained on


@pytest.mark.fault
def test_sigterm_to_the_runs_process_group_stops_it_gracefully(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess

    from study.run.reaper import _stat, descendants
    from tests.conftest import REPO, study_cmd

    # 3000 epochs: the run is stopped long before its trials could end, on any machine
    spec = write_spec(
        tmp_path / "g.yaml", name="g", repeats=2, fixed={"epochs": 3000, "batch_size": 50, "lr": 0.01}
    )  # killed long before the end
    log, errs = tmp_path / "out.txt", tmp_path / "err.txt"
    with log.open("w") as out, errs.open("w") as err:
        proc = subprocess.Popen(study_cmd("run", str(spec), "--storage", str(tmp_path / "studies"), "--no-report"),
                                cwd=REPO, stdout=out, stderr=err, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not re.search(r" [12] running", log.read_text()):
            time.sleep(1)
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)  # as `timeout`, `kill -- -PGID` or a batch system sends it
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text, err = log.read_text(), errs.read_text()
    assert code == 143 and err == "study: terminated (SIGTERM); run the same command again to resume\n", err[-2000:]
    assert "interrupted with " in text and "trial(s) unfinished" in text and "GCS" not in text + err, text[-2000:]
    t0 = time.time()
    while time.time() - t0 < 20 and [p for p, s in tree.items() if (_stat(p) or (0, None))[1] == s]:
        time.sleep(0.5)
    assert not [p for p, s in tree.items() if (_stat(p) or (0, None))[1] == s]
