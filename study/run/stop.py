"""Stopping a run early, as Ctrl-C does: Tune saves the state and unfinished trials stay resumable.

A `StopRequest` records why the current run is being stopped (``sigterm``, ``disk_full``,
``restore_failed``) and asks Tune's run loop to end. The runner makes one per run (`begin_run`) and
hands it to what it builds (the SIGTERM handler, `RayLogGuard`); Tune pickles its callbacks into
``tuner.pkl`` and a resumed study gets them back from there, so the callbacks look the current
request up (`current`) instead of holding it.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from core.errors import is_disk_full, one_line
from study.results.state import StateError


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM (exit status 143)."""


class StopRequest:
    """Why the current run is being stopped early (`reason`, `detail`; None while it is not)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.detail: str | None = None

    def note(self, reason: str, detail: str) -> None:
        """Record the first reason (a later one does not replace it)."""
        if self.reason is None:
            self.reason, self.detail = reason, detail

    def request(self, reason: str, detail: str) -> None:
        """Record `reason` and stop the run as Ctrl-C does (from Tune's loop: its interrupt handler)."""
        self.note(reason, detail)
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and threading.current_thread() is threading.main_thread():
            handler(signal.SIGUSR1, None)  # Tune's interrupt handler: ends the run loop after this step
        else:
            raise KeyboardInterrupt

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM (kill, a batch system, docker stop) is handled as Ctrl-C."""
        first = self.reason is None
        self.note("sigterm", "SIGTERM")
        handler = signal.getsignal(signal.SIGINT)
        if first and callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)  # Tune's graceful stop while it runs
            return
        raise Terminated

    def install_sigterm(self) -> None:
        """Handle SIGTERM with `on_sigterm` (main thread only; again after ray.init, which sets its own)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.on_sigterm)


_current = StopRequest()


def begin_run() -> StopRequest:
    """A fresh `StopRequest` for a run starting now; `current` returns it until the next run."""
    global _current
    _current = StopRequest()
    return _current


def current() -> StopRequest:
    """The `StopRequest` of the run in progress (or of the last one)."""
    return _current


class RayLogGuard(logging.Filter):
    """On Tune's controller and experiment-state loggers: hides their per-trial tracebacks (the
    progress lines report failures), stops the run when Tune failed to restore a study (it would
    silently start it over), and turns a failed state upload on a full disk into a stop."""

    LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if msg.startswith("Failed to restore the run state"):
            self.stop.reason, self.stop.detail = "restore_failed", one_line(f"{type(exc).__name__}: {exc}", 300)
            raise StateError(f"Tune could not restore the study ({self.stop.detail})")
        if exc is not None and is_disk_full(exc):
            self.stop.note("disk_full", one_line(exc, 200))
            return False  # one line at the end says it
        if record.name.endswith("experiment_state"):  # other failures to save the state stay visible
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.CRITICAL

    def install(self) -> None:
        """Put this guard on Tune's loggers in place of any earlier run's."""
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            for old in [f for f in logger.filters if isinstance(f, RayLogGuard)]:
                logger.removeFilter(old)
            logger.addFilter(self)
