"""The `study` CLI: exit codes, one-line errors, validate/ls/status output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from study.cli import main
from tests.conftest import REPO, study_cmd, write_spec


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_all_shipped_spaces(capsys) -> None:
    paths = sorted(str(p) for p in (REPO / "search_spaces").glob("*.yaml"))
    code, out, _ = run(capsys, "validate", *paths)
    assert code == 0
    assert out.count(": ok (") == len(paths)
    assert "digit_pairs_grid.yaml: ok (digit_pairs, 800 trials, metric test_acc max)" in out


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["validate", "missing.yaml"], "study: error: missing.yaml: no such spec file"),
        (["validate", "search_spaces/quickstart.yaml", "--set", "fixed.nope=1"],
         "study: error: search_spaces/quickstart.yaml: fixed.nope: unknown config key for trainable digit_pairs"),
        (["validate", "search_spaces/quickstart.yaml", "--set", "repeats"], "study: error: --set 'repeats': must be KEY=VALUE"),
        (["run", "search_spaces/quickstart.yaml", "--set", "data.source=cifar"],
         "study: error: search_spaces/quickstart.yaml: data.source: Input should be 'mnist', 'mnist-5k', 'cifar10'"),
        (["run", "search_spaces/quickstart.yaml", "--set", "data.source=cifar10"],
         "study: error: search_spaces/quickstart.yaml: data.source: digit_pairs reads mnist, mnist-5k, not 'cifar10'"),
        (["report", "nope", "--storage", "/nonexistent-dir"], "study: error: /nonexistent-dir/nope: no study named 'nope'"),
        (["run", "search_spaces/quickstart.yaml", "--name", ""], "study: error: --name '': must be 1-100 letters"),
        (["status", "x" * 300], f"study: error: {REPO}/studies/{'x' * 300}: no study named"),
        (["report", "../etc"], f"study: error: {REPO}/studies/../etc: no study named '../etc'"),
        (["compare", "a", "a"], "study: error: compare a a: a study is named twice"),
        (["run", "search_spaces/quickstart.yaml", "--set", "fixed.lr=abc"],  # caught before any trial starts
         "study: error: search_spaces/quickstart.yaml: fixed.lr: Input should be a valid number (got 'abc')"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, argv: list[str], expected: str) -> None:
    monkeypatch.chdir(REPO)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_storage_is_exit_2(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "run", str(REPO / "search_spaces/quickstart.yaml"), "--storage", str(blocker / "sub"))
    assert code == 2 and "directory cannot be written" in err and err.count("\n") == 1


def test_debug_shows_traceback(capsys) -> None:
    code, _, err = run(capsys, "--debug", "validate", "missing.yaml")
    assert code == 2 and "Traceback" in err


def test_unknown_flag_exit_2() -> None:
    proc = subprocess.run(study_cmd("run", "x.yaml", "--bogus"), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_ls_and_status_on_empty_and_missing(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "ls", "--storage", str(tmp_path))
    assert code == 0 and "no studies" in out
    code, _, err = run(capsys, "status", "x", "--storage", str(tmp_path))
    assert code == 2 and "no study named 'x'" in err


@pytest.mark.e2e
def test_run_ls_status_report_cli(ray_local, capsys, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "cli.yaml", name="cli", repeats=1, fixed={"epochs": 1, "batch_size": 50})
    code, out, err = run(capsys, "run", str(spec), "--storage", str(tmp_path / "s"), "--no-report")
    assert code == 0, err
    assert "[study] cli: 2 trials of digit_pairs" in out and "2/2 done" in out and "2 terminated" in out
    code, out, _ = run(capsys, "ls", "--storage", str(tmp_path / "s"))
    assert code == 0 and out.split() == ["cli", "2", "terminated"]
    code, out, _ = run(capsys, "status", "cli", "--storage", str(tmp_path / "s"))
    assert code == 0 and "cli: 2 terminated" in out


@pytest.mark.e2e
def test_impossible_resources_on_fixed_cluster_exit_2(ray_local, capsys, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "gpu.yaml", name="gpu", resources={"cpu": 1, "gpu": 1})
    code, _, err = run(capsys, "run", str(spec), "--storage", str(tmp_path))
    assert code == 2
    assert err.startswith(
        "study: error: resources: a trial asks for cpu=1, gpu=1 but no node of this fixed-size cluster"
    )
    assert err.count("\n") == 1
