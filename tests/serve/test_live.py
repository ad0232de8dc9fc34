"""The explorer's incremental reader gives the tables `study.results.collect` gives (one set of
rules), reading only what changed: on the awkward study of tests/study/test_collect.py, and while
its files grow the way Tune writes them (lines appended, a line half written, a resumed trial
reporting epochs again, a file rewritten)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from study.results import collect, study_counts
from study.serve.live import LiveStudy, ResultFile
from tests.serve.conftest import grow, write_tune_study
from tests.study.test_collect import _write_study


def check_same(live: LiveStudy, study: Path, spec) -> None:
    snap = live.snapshot()
    assert snap.error is None
    trials, epochs = collect(study, spec)
    pd.testing.assert_frame_equal(snap.trials, trials)
    pd.testing.assert_frame_equal(live.epochs(), epochs)
    assert snap.counts == study_counts(study)  # the counts `study status` prints


def test_live_tables_match_collect_as_files_grow(tmp_path: Path) -> None:
    study, spec = _write_study(tmp_path)
    live = LiveStudy("s", study, tmp_path / "work")
    check_same(live, study, spec)
    first = live.snapshot().version
    assert live.snapshot().version == first  # nothing changed: same version, nothing read
    reads = {tid: f.reads for tid, f in live._files.items()}
    assert all(live._files[t].reads == reads[t] for t in reads)

    running = study / "trial_e" / "result.json"
    lines = running.read_text().splitlines()
    row = json.loads(lines[-1])
    size = running.stat().st_size
    # half a line (Tune is writing it), then the rest of it and one more
    third = json.dumps({**row, "epoch": 3, "test_acc": 0.8})
    with open(running, "a") as f:
        f.write(third[:20])
    check_same(live, study, spec)
    with open(running, "a") as f:
        f.write(third[20:] + "\n" + json.dumps({**row, "epoch": 4, "test_acc": 0.85, "new_metric": 1.5}) + "\n")
    before = live._files["e"].reads
    check_same(live, study, spec)
    assert live.snapshot().version != first
    assert live._files["e"].reads - before < running.stat().st_size - size + 5  # from the last complete line on
    # a resumed trial reports epoch 4 again (the later report counts): the file is read again
    with open(running, "a") as f:
        f.write(json.dumps({**row, "epoch": 4, "test_acc": 0.9}) + "\n")
    check_same(live, study, spec)
    # rewritten from the start (shorter): read from the start
    running.write_text(lines[0] + "\n")
    check_same(live, study, spec)
    # deleted
    running.unlink()
    check_same(live, study, spec)


def test_growing_study_matches_collect(tmp_path: Path) -> None:
    from study.spec import load_spec

    d = write_tune_study(tmp_path, "g", n_running=3, epochs=4)
    live = LiveStudy("g", d, tmp_path / "work")
    spec = load_spec(d / "spec.yaml")
    check_same(live, d, spec)
    versions = {live.snapshot().version}
    for _ in range(3):
        grow(d, epochs=1, finish=1)
        check_same(live, d, spec)
        versions.add(live.snapshot().version)
    assert len(versions) == 4
    results = live.results()  # through the Parquet files `study report` reads, outside the storage
    assert len(results.trials) == len(live.snapshot().trials)
    assert not (d / "results").exists()


def test_result_file_reads_only_new_bytes(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    rows = [{"epoch": e, "test_acc": 0.1 * e, "time_total_s": e} for e in range(1, 51)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rf = ResultFile()
    assert rf.read(path).epochs == list(range(1, 51))
    full = rf.reads
    with open(path, "a") as f:
        f.write(json.dumps({"epoch": 51, "test_acc": 5.1, "time_total_s": 51}) + "\n")
    view = rf.read(path)
    assert view.epochs[-1] == 51 and view.metrics["test_acc"][-1] == 5.1
    assert rf.reads - full < 100  # the new line (and the first bytes, to see the file is the same one)
