"""Free space on local storage: a run refuses to start, or stops, before the disk is full."""

from __future__ import annotations

import os
import shutil

from core.errors import DiskFull, one_line
from study.results import state as tune_state
from study.storage import Store

MIN_FREE_MB = float(os.environ.get("STUDY_MIN_FREE_MB", "4"))  # stop before the storage is full


def free_space_needed(state_bytes: int) -> float:
    """Bytes a run keeps free on local storage: a margin plus two copies of the experiment state
    (Tune rewrites it every few seconds; the tables need about as much)."""
    return MIN_FREE_MB * 1e6 + 2 * state_bytes


def check_disk_space(store: Store, name: str) -> None:
    """Refuse to start (DiskFull, exit 1) on local storage with less than `free_space_needed` free."""
    if store.remote:
        return
    files = tune_state.state_files(store.local_dir(name))
    need = free_space_needed(max((f.stat().st_size for f in files), default=0))
    free = shutil.disk_usage(store.root).free
    if free < need:
        raise DiskFull(f"--storage {store.root}: no space left on device ({free / 1e6:.1f} MB free, a run needs "
                       f"{need / 1e6:.1f} MB); free some space, then run the same command again")  # fmt: skip


def disk_full_line(store: Store, resume_cmd: str, detail: str) -> str:
    """The one line a run stopped by a full disk ends with (how much is free, how to resume)."""
    free = ""
    if not store.remote:
        try:
            free = f", {shutil.disk_usage(store.root).free / 1e6:.1f} MB free"
        except OSError:
            pass
    return (
        f"--storage {store.root}: no space left on device{free} ({one_line(detail, 160)}); the study was stopped "
        f"with nothing lost: free some space, then run the same command again to resume: {resume_cmd}"
    )
