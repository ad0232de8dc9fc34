"""The module paths `study` had before it was split still import, with every name they re-export:
scripts use them, and the callbacks older studies pickled into their ``tuner.pkl`` look names up
there when such a study resumes."""

from __future__ import annotations

import importlib
import signal

import pytest

# looked up by name by pickled objects of older studies (callbacks by value, Spec by reference)
PICKLED = {
    "study.runner": ("request_stop", "free_space_needed", "trial_entry"),
    "study.results": ("error_line", "prune_checkpoints", "_is_number", "_short_value", "_fmt_duration"),
    "study.shapes": ("member_count", "pack_entry", "ddp_entry"),
    "study.tune_state": ("state_files", "backup_snapshot"),
    "study.spec": ("Spec", "Grid", "Choice", "Data", "Search", "CoverValue"),
    "study.errors": ("one_line", "short", "UserError"),
}


@pytest.mark.parametrize("module", ["study.spec", "study.results", "study.runner", "study.shapes",
                                    "study.tune_state", "study.trial_rows", "study.errors"])  # fmt: skip
def test_every_re_exported_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", ())
    assert names, f"{module} lists no names"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module}: {missing}"


@pytest.mark.parametrize(("module", "names"), PICKLED.items(), ids=list(PICKLED))
def test_names_older_pickles_look_up_still_exist(module: str, names: tuple[str, ...]) -> None:
    mod = importlib.import_module(module)
    for name in names:
        assert callable(getattr(mod, name)), f"{module}.{name}"


def test_request_stop_reaches_the_current_run() -> None:
    from study.run import stop
    from study.runner import request_stop

    run = stop.begin_run()
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # no Tune loop here (an earlier in-process run left its handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # so stopped as Ctrl-C
            request_stop("disk_full", "1 MB free")
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert (run.reason, run.detail) == ("disk_full", "1 MB free")
