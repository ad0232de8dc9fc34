"""The local Ray of a `study run` dies with it, also after ``kill -9``.

Ray's own fate sharing ends the GCS and the raylet with the driver that started them, but the
trial workers keep training (and writing into the study) and the dashboard and runtime-env agents
wait a minute or more on a GCS that is gone. `start` launches this file as a small watcher process
(standard library only, its own session so that a signal to the driver's group spares it): every
second it records the driver's descendants (pid and start time), and once the driver is gone it
sends them SIGTERM, then SIGKILL to those still running 3 s later. A process is signalled only
when its start time is the one recorded, so a reused pid is never hit. Linux only (``/proc``).

Run as ``python reaper.py DRIVER_PID DRIVER_START``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 1.0
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), fields[19].decode()


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
                starts[int(name)] = st[1]
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out and child in starts:
                out[child] = starts[child]
                todo.append(child)
    return out


def _signal(procs: dict[int, str], sig: int) -> dict[int, str]:
    """Send `sig` to those of `procs` still running with their recorded start time; returns them."""
    hit = {}
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, sig)
                hit[pid] = start
            except OSError:
                pass
    return hit


def watch(driver: int, driver_start: str) -> None:
    """Record `driver`'s descendants until it is gone, then end them."""
    known: dict[int, str] = {}
    while True:
        st = _stat(driver)
        if st is None or st[1] != driver_start:
            break
        known.update(descendants(driver))
        known.pop(os.getpid(), None)  # not this watcher itself
        known = {p: s for p, s in known.items() if (_stat(p) or (0, None))[1] == s}
        time.sleep(POLL_S)
    left = _signal(known, signal.SIGTERM)
    deadline = time.time() + GRACE_S
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = {p: s for p, s in left.items() if (_stat(p) or (0, None))[1] == s}
    _signal(left, signal.SIGKILL)


def start() -> subprocess.Popen | None:
    """Start the watcher for this process (Linux; None elsewhere or when it cannot be started)."""
    me = _stat(os.getpid()) if sys.platform.startswith("linux") else None
    if me is None:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), me[1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    except OSError:
        return None


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
