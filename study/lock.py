"""One `study run` per study at a time: a lock file ``STUDY/.study.lock`` naming its holder.

The lock holds the holder's host, its machine's boot id (``/proc/sys/kernel/random/boot_id``), pid
(and the pid's start time, so a reused pid is not taken for the holder) and a heartbeat the holder
rewrites every `HEARTBEAT_S` seconds. A second run is refused with one line naming the holder. A
lock left by a run that died is taken over: at once when it was written on this very machine (same
boot id) and its process is gone (kill -9); otherwise only once its heartbeat is older than
`STALE_S`, and, for a lock of a machine with this host name (two machines with one hostname on
NFS, where a pid says nothing), only when that pid is not running here either. The advice names
a pid to kill only when it is verifiably the holder (this machine, same start time); everything
printed from a lock file is stripped of control characters. Inside a SLURM job the
lock also records ``SLURM_JOB_ID`` and ``SLURM_RESTART_COUNT``: a lock of the same job with a lower
restart count is taken over at once, whatever its host (SLURM ended that run before requeueing the
job, which never runs twice at once).

Guarded: local directories and ``file://`` URIs (created with O_CREAT|O_EXCL, atomic on local
disks and on NFS v3+). Object stores (``s3://``, ``gs://``): best effort, the lock is written and
read back, so two runs started within the same second or two may both start (see the README).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import UserError, printable
from core.layout import LOCK_FILE
from core.safe_read import UnsafeFile, loads_json, read_bounded

STALE_S = float(os.environ.get("STUDY_LOCK_STALE_S", "120"))  # heartbeat age after which a lock is dead
HEARTBEAT_S = min(15.0, STALE_S / 4)
LOCK_LIMIT = 64 * 1024  # bytes: a lock file is about 300


def _boot_id() -> str | None:
    """This machine's boot id (Linux), None where unknown: tells two machines with one hostname apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _clean(holder: Any) -> dict:
    """A lock's fields as read: text stripped of control characters and cut short (a crafted lock
    must not move the cursor or recolour the terminal), numbers kept as numbers."""
    if not isinstance(holder, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in list(holder.items())[:20]:
        if isinstance(v, str):
            v = printable(v)[:200]
        elif isinstance(v, bool) or not isinstance(v, (int, float)) and v is not None:
            v = printable(repr(v))[:200]
        out[printable(str(k))[:40]] = v
    return out


def _pid_start(pid: int) -> str | None:
    """The start time of a process (Linux: field 22 of /proc/PID/stat), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _slurm() -> dict[str, Any]:
    """The SLURM job and requeue count of this process ({} outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    now = _pid_start(pid)
    return start is None or now is None or now == start  # a reused pid is a different process


class StudyLock:
    """`acquire` or raise `UserError`; `release` when done (also on errors). Context manager."""

    def __init__(self, store: Any, name: str) -> None:
        self.store, self.name = store, name
        if getattr(store, "remote", True):  # pyarrow only for a URI: `study status` stays fast on local storage
            self.fs, self.dir = store.fs_path(name)
        else:
            self.fs, self.dir = None, store.study_path(name)
        self.path = f"{self.dir}/{LOCK_FILE}"
        self.local = self.fs is None or type(self.fs).__name__ == "LocalFileSystem"
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "boot_id": _boot_id(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "heartbeat": time.time(),
            **_slurm(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.note: str | None = None  # a line about a dead run's lock taken over

    # --- file access (local: atomic create; remote: plain write) ---
    def _read(self) -> tuple[dict | None, float | None]:
        """(holder, file age in s) or (None, None) when there is no lock."""
        try:
            if self.local:
                p = Path(self.path)
                age = time.time() - p.stat().st_mtime
                try:
                    raw = read_bounded(p, LOCK_LIMIT)
                except UnsafeFile:  # a FIFO, a device, a huge file: an unreadable lock, judged by its age
                    return {}, age
            else:
                import pyarrow.fs

                info = self.fs.get_file_info(self.path)
                if info.type != pyarrow.fs.FileType.File:
                    return None, None
                with self.fs.open_input_stream(self.path) as f:
                    raw = f.read(LOCK_LIMIT + 1)
                age = time.time() - info.mtime.timestamp() if info.mtime else 0.0
        except FileNotFoundError:
            return None, None
        try:
            return _clean(loads_json(raw, self.path)), age
        except (ValueError, UserError):
            return {}, age  # being written, cut or crafted: judged by its age

    def _create(self) -> bool:
        data = json.dumps({**self.me, "heartbeat": time.time()}).encode()
        if self.local:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError:  # a full disk: leave no empty lock behind
                Path(self.path).unlink(missing_ok=True)
                raise
            return True
        holder, _ = self._read()
        if holder is not None:
            return False
        self.fs.create_dir(self.dir, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        time.sleep(1.0)  # another run writing at the same moment: the last write wins, the other backs off
        holder, _ = self._read()
        return bool(holder) and self._mine(holder)

    def _mine(self, holder: dict) -> bool:
        return holder.get("host") == self.me["host"] and holder.get("pid") == self.me["pid"]

    def _same_machine(self, holder: dict) -> bool:
        """The lock was written on this machine since its last boot (so its pid can be checked here)."""
        boot = holder.get("boot_id")
        return holder.get("host") == self.me["host"] and boot is not None and boot == self.me["boot_id"]

    def _stale(self, holder: dict, age: float) -> str | None:
        """Why the lock is dead (a reason to take it over), None while its holder may be running."""
        host, pid = holder.get("host"), holder.get("pid")
        beat = holder.get("heartbeat")
        now = time.time()
        # a heartbeat in the future (a skewed clock, a crafted file) counts as old as the file
        beat_age = now - beat if isinstance(beat, (int, float)) and beat <= now + 60 else age
        if not holder:
            return "an unreadable lock file" if age > 10 else None
        job, restart = holder.get("slurm_job"), holder.get("slurm_restart")
        if job is not None and job == self.me.get("slurm_job") and isinstance(restart, int):
            if restart < self.me["slurm_restart"]:  # an earlier run of this requeued job: SLURM ended it
                return f"run of SLURM job {job} on {host} before its requeue (restart {restart}) is gone"
        has_pid = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
        if self._same_machine(holder) and has_pid:
            if not _alive(pid, holder.get("pid_start")):
                return f"run on {host} (pid {pid}) is gone"
            if holder.get("pid_start") is not None or beat_age <= STALE_S:
                return None  # the holder itself, or a pid that cannot be told apart while it beats
            return f"run on {host} (pid {pid}) sent no heartbeat for {beat_age:.0f}s"
        if beat_age <= STALE_S:
            return None
        if host == self.me["host"] and has_pid and _alive(pid, holder.get("pid_start")):
            return None  # this host name, another machine or an older lock: its pid runs here, so wait
        return f"run on {host} (pid {pid}) sent no heartbeat for {beat_age:.0f}s"

    def vouched_pid(self, holder: dict) -> int | None:
        """The holder's pid when it is verifiably the holder: this machine, running, same start time."""
        pid, start = holder.get("pid"), holder.get("pid_start")
        if not (self._same_machine(holder) and isinstance(pid, int) and not isinstance(pid, bool) and pid > 1):
            return None
        return pid if start is not None and _pid_start(pid) == start and _alive(pid, start) else None

    def _remove_stale(self, holder: dict) -> None:
        if not self.local:
            self.fs.delete_file(self.path)
            return
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:  # another run may have taken it over between our read and the rename: give it back
            taken = _clean(loads_json(read_bounded(aside, LOCK_LIMIT) or b"{}", aside))
        except (ValueError, UserError, OSError):
            taken = {}
        if holder and taken != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.unlink(aside)

    # --- public ---
    def acquire(self) -> StudyLock:
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return self
            holder, age = self._read()
            if holder is None:
                continue  # released meanwhile
            why = self._stale(holder, age or 0.0)
            if why is None:
                raise self.refusal(holder)
            self._remove_stale(holder)
            self.note = f"taking over the lock of a run that died ({why})"
        raise UserError(f"{self.path}: could not take the study lock (other runs keep taking it); try again")

    def refusal(self, holder: dict) -> UserError:
        """The one-line refusal naming the live run that holds the lock; it says which pid to kill only
        when that pid is verifiably the holder (`vouched_pid`)."""
        holder = _clean(holder)
        host, pid = holder.get("host", "?"), holder.get("pid", "?")
        vouched = self.vouched_pid(holder)
        if vouched is not None:
            tail = f"wait for it to end or stop it (kill {vouched})"
        elif host == self.me["host"]:
            tail = (f"wait for it to end or stop it (its process cannot be confirmed from here); if no run is "
                    f"going, delete {self.path} (a dead run's lock is taken over after {STALE_S:.0f}s without heartbeat)")  # fmt: skip
        else:
            tail = (f"wait for it to end or stop it on {host}; a run that died there is taken over after "
                    f"{STALE_S:.0f}s without heartbeat")  # fmt: skip
        return UserError(
            f"{self.store.study_path(self.name)}: study {self.name} is being run by another `study run` "
            f"(host {host}, pid {pid}, started {holder.get('started', '?')}); {tail}"
        )

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    data = json.dumps({**self.me, "heartbeat": time.time()}).encode()
                    if self.local:
                        tmp = f"{self.path}.{os.getpid()}.tmp"
                        Path(tmp).write_bytes(data)
                        os.replace(tmp, self.path)
                    else:
                        with self.fs.open_output_stream(self.path) as f:
                            f.write(data)
                except Exception:  # noqa: BLE001 - a full disk must not kill the run from here
                    pass

        self._thread = threading.Thread(target=beat, name="study-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder, _ = self._read()
            if holder and self._mine(holder):
                if self.local:
                    os.unlink(self.path)
                else:
                    self.fs.delete_file(self.path)
        except Exception:  # noqa: BLE001 - a lock we cannot remove is taken over as dead later
            pass

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder_of(store: Any, name: str) -> dict | None:
    """Who holds a study's lock right now (alive by `StudyLock` rules), or None."""
    lock = StudyLock(store, name)
    holder, age = lock._read()
    if not holder or lock._stale(holder, age or 0.0):
        return None
    return holder


def refuse_if_running(spec_path: str, name: str | None, storage: str, overrides: list[str]) -> None:
    """Before the slow imports of a run: refuse at once (`UserError`) when another run holds the
    study's lock. The name comes from --name, --set name=..., or the YAML; any doubt is left to the
    full check in `run_study`, which takes the lock."""
    from study.storage import Store

    if name is None:
        for item in overrides:
            if item.startswith("name="):
                name = item.split("=", 1)[1]
    if name is None:
        try:
            import yaml

            raw = yaml.safe_load(Path(spec_path).read_text(encoding="utf-8"))
            name = raw.get("name") if isinstance(raw, dict) else None
        except Exception:  # noqa: BLE001 - the spec checker reports bad files properly
            return
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return
    try:
        store = Store.open(storage)
        holder = holder_of(store, name)
    except Exception:  # noqa: BLE001
        return
    if holder:  # only said here: the lock is taken (or a dead holder's taken over) by run_study alone
        raise StudyLock(store, name).refusal(holder)
