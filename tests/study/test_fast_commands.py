"""`study ls` and `study status` answer from the saved state, ``spec.yaml`` and ``study.json``: they
import no torch, Ray, pandas, plotly or scipy (each command is run in a fresh interpreter and its
``sys.modules`` listed), and their counts use the family facts of ``study.json`` (the default
number of epochs) exactly as the family itself gives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.results.counts import study_counts
from study.results.facts import family_facts, read_facts, write_facts

REPO = Path(__file__).parents[2]
HEAVY = ("torch", "torchvision", "ray", "pandas", "plotly", "scipy", "pyarrow", "pydantic", "analysis", "trainables")


def write_study(root: Path, name: str, epochs_run: int = 3, trials: int = 4, facts: bool = True) -> Path:
    """A finished synthetic digit-pair study in Tune's layout; the spec sets no epochs (the family's
    default applies) and each trial ran `epochs_run` epochs."""
    d = root / name
    d.mkdir(parents=True)
    spec = {"name": name, "trainable": "digit_pairs", "data": {"source": "mnist-5k"},
            "space": {"arch": {"grid": ["ConvNet", "Siamese"]}}, "repeats": trials // 2}  # fmt: skip
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    entries = []
    for i in range(trials):
        tid = f"t{i:04d}"
        config = {"arch": ["ConvNet", "Siamese"][i % 2], "seed": i // 2}
        rows = [{"epoch": e, "test_acc": 0.5, "params": 10, "diverged": 0, "time_total_s": e} for e in range(1, epochs_run + 1)]
        (d / f"trial_{tid}").mkdir()
        (d / f"trial_{tid}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        trial = {"trial_id": tid, "status": "TERMINATED", "config": config, "relative_logdir": f"trial_{tid}"}
        entries.append([json.dumps(trial), json.dumps({"last_result": rows[-1]})])
    (d / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    if facts:
        write_facts(d, "digit_pairs")
    return d


def modules_after(*argv: str) -> tuple[str, list[str]]:
    """(stdout, sorted sys.modules) of ``study ARGV`` run in a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from study.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = main({list(argv)!r})\n"
        "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["out"]
    return result["out"], result["modules"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    for i in range(3):
        write_study(root, f"s{i}", epochs_run=family_facts("digit_pairs")["epochs_default"])
    return root


@pytest.mark.parametrize("command", [["ls"], ["status", "s1"]], ids=["ls", "status"])
def test_ls_and_status_import_nothing_heavy(storage: Path, command: list[str]) -> None:
    out, modules = modules_after(*command, "--storage", str(storage))
    assert "4 terminated" in out
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"study {command[0]} imported {heavy[:10]}"


def test_counts_use_the_family_default_from_study_json(tmp_path: Path) -> None:
    """The spec sets no epochs: a trial that ran 3 epochs is MISSING its last ones (no scheduler) when the
    family's default is more, TERMINATED when study.json says the default is 3; without the file
    (an older study) the family itself is asked, with the same answer as the file would give."""
    default = family_facts("digit_pairs")["epochs_default"]
    assert default > 3
    short = write_study(tmp_path, "short", epochs_run=3)
    assert read_facts(short)["epochs_default"] == default
    assert study_counts(short) == {"MISSING": 4}
    (short / "study.json").write_text(json.dumps({**read_facts(short), "epochs_default": 3}))
    assert study_counts(short) == {"TERMINATED": 4}
    older = write_study(tmp_path, "older", epochs_run=default, facts=False)
    assert read_facts(older) is None and study_counts(older) == {"TERMINATED": 4}


def test_facts_of_another_trainable_are_not_used(tmp_path: Path) -> None:
    d = write_study(tmp_path, "s", epochs_run=3)
    (d / "study.json").write_text(json.dumps({"trainable": "wsms", "epochs_default": 3}))
    assert study_counts(d) == {"MISSING": 4}  # digit_pairs' own default, not another family's


def _full(rows_bytes: bytes, tmp_path: Path) -> tuple[list[int], dict]:
    from study.results import state as tune_state

    by_epoch = {}
    for r in tune_state.rows_of_jsonl(rows_bytes):
        e = r.get("epoch")
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            by_epoch[int(e)] = r
    order = sorted(by_epoch)
    return order, (by_epoch[order[-1]] if order else {})


def _line(e: object, **extra: object) -> str:
    return json.dumps({"epoch": e, "test_acc": 0.5, **extra}) + "\n"


FILES = {
    "in order": "".join(_line(e) for e in range(1, 6)),
    "one row": _line(1),
    "no final newline": "".join(_line(e) for e in range(1, 4)).rstrip("\n"),
    "resumed, repeats": "".join(_line(e) for e in [1, 2, 3, 2, 3, 4]),
    "same count, a gap and a repeat": "".join(_line(e) for e in [1, 1, 3]),
    "a cut line": "".join(_line(e) for e in [1, 2]) + '{"epoch": 3, "te\n' + _line(3),
    "a line cut before its epoch, then written on": _line(1) + '{"test_a' + _line(2) + _line(3),
    "a blank line": _line(1) + "\n" + _line(2),
    "nested epoch key": _line(1, config={"epoch": 2}) + _line(2, config={"epoch": 2}),
    "float epochs": "".join(_line(float(e)) for e in range(1, 4)),
    "starts at 2": "".join(_line(e) for e in range(2, 5)),
    "bool epoch": _line(True) + _line(2),
    "carriage returns": _line(1).replace("\n", "\r\n") + _line(2).replace("\n", "\r\n"),
    "non-ascii": _line(1, note="é") + _line(2, note="\u2028"),
    "epoch in a string": _line(1, note='"epoch": 2,') + _line(2),
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_epochs_on_record_fast_path_answers_as_the_full_parse(name: str, tmp_path: Path) -> None:
    """The epochs and last row told from a result file's bytes are those of parsing it whole."""
    from study.results.trials import epochs_on_record

    (tmp_path / "trial_a").mkdir()
    data = FILES[name].encode()
    (tmp_path / "trial_a" / "result.json").write_bytes(data)
    epochs, last, problem = epochs_on_record(tmp_path, {"logdir": "trial_a", "meta": {}})
    assert problem is None
    assert (epochs, last) == _full(data, tmp_path)


def test_epochs_on_record_fast_path_is_taken_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of epochs 1..n in order is not parsed whole (the fast path answers)."""
    from study.results import state as tune_state
    from study.results.trials import epochs_on_record

    (tmp_path / "trial_a").mkdir()
    (tmp_path / "trial_a" / "result.json").write_text(FILES["in order"])
    monkeypatch.setattr(tune_state, "rows_of_jsonl", lambda data: pytest.fail("parsed whole"))
    epochs, last, _ = epochs_on_record(tmp_path, {"logdir": "trial_a", "meta": {}})
    assert epochs == [1, 2, 3, 4, 5] and last["epoch"] == 5
