"""Reading files the platform did not write: bounded in size, regular files only, paths kept inside.

Everything under a study directory may come from someone else (shared storage, a copied study, a
crafted one), so a reader never trusts a file's kind, size, depth or the paths it names:

- `read_bounded` reads a regular file of at most `limit` bytes. A FIFO, a device (``/dev/zero``),
  a socket or a directory is refused before it is opened for reading (``os.stat`` and
  ``stat.S_ISREG``), and it is opened with ``O_NONBLOCK`` so that a file swapped for a FIFO in
  between cannot hang the reader; a larger file is refused, never read whole. `read_tail` reads
  the last bytes of such a file (the exception line of a long traceback).
- `loads_json` parses JSON of any depth or size without an uncaught ``RecursionError``.
- `confined` resolves a path named by a file (a trial's error file, a checkpoint, a remote key, a
  link met while walking a tree) and returns it only when it stays inside the directory it belongs
  to; `safe_relpath` is the same rule on the text alone, for keys of a remote listing.

Every refusal is an `UnsafeFile` (a `UserError`: one line naming the file and the rule).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from core.errors import UserError, one_line

KIB, MIB = 2**10, 2**20
# Size limits of the files read from a study directory (bytes).
STATE_LIMIT = 1024 * MIB  # Tune's experiment_state-*.json (about 5 KB per trial)
RESULT_LIMIT = 256 * MIB  # a trial's result.json or pack.jsonl (about 1 KB per epoch)
SMALL_LIMIT = 16 * MIB  # spec.yaml (a long grid), study.json, spec_file.txt, .study.lock
ERROR_TAIL = 64 * KIB  # the end of a trial's error file: its last line is the exception


class UnsafeFile(UserError):
    """A file that is not read: not a regular file, too large, too deep, or outside its directory."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: str | Path) -> tuple[int, int]:
    """(file descriptor, size) of a regular file; `UnsafeFile` for anything else, before it is read."""
    st = os.stat(path)  # follows links: the file a link points at is what would be read
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path}: {_kind(st.st_mode)}, not a regular file: not read")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # the file opened, not the one checked a moment ago
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: {_kind(st.st_mode)}, not a regular file: not read")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _read_fd(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 8 * MIB))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; `UnsafeFile` (one line) for a
    FIFO, device, socket or directory, or a file larger than `limit`. `OSError` as `open` raises it
    (``FileNotFoundError`` for a missing file)."""
    fd, size = _open_regular(path)
    try:
        if size > limit:
            raise UnsafeFile(f"{path}: {size:,} bytes, more than the {limit:,} this file may have: not read")
        data = _read_fd(fd, limit + 1)  # a file growing meanwhile is cut off, not read on and on
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnsafeFile(f"{path}: more than the {limit:,} bytes this file may have: not read")
    return data


def read_tail(path: str | Path, limit: int = ERROR_TAIL) -> bytes:
    """The last `limit` bytes (at most) of the regular file `path`; `UnsafeFile` for other kinds."""
    fd, size = _open_regular(path)
    try:
        if size > limit:
            os.lseek(fd, size - limit, os.SEEK_SET)
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def loads_json(data: str | bytes, where: str) -> Any:
    """`json.loads`, with JSON nested too deeply for the parser refused as `UnsafeFile` (never an
    uncaught ``RecursionError``); `ValueError` (``json.JSONDecodeError``) for text that is not JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise UnsafeFile(f"{where}: JSON nested too deeply to be read: not read") from None


def safe_relpath(rel: str) -> bool:
    """True for a relative path of plain names (no ``..`` or ``.``, no empty part or leading ``/``, no
    backslash, no NUL, no drive letter): a key of a remote listing or a path named in a file may be used
    below its directory only when this holds."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return False
    return not any(p in ("", ".", "..") or ":" in p[:2] for p in rel.split("/"))


def confined(root: str | Path, path: str | Path) -> Path | None:
    """`path` (relative to `root`, or absolute) resolved, links followed, when it stays inside
    `root` (itself resolved); None when it leads outside."""
    base = Path(root).resolve()
    target = (base / path).resolve()
    return target if target == base or base in target.parents else None


_noticed: set[str] = set()


def notice(line: str, *, stream: Any = None) -> None:
    """Print ``[study] warning: LINE`` once per distinct line (a file ignored, a path refused) on stderr."""
    text = one_line(line, 400)
    if text in _noticed:
        return
    _noticed.add(text)
    print(f"[study] warning: {text}", file=stream or sys.stderr, flush=True)
