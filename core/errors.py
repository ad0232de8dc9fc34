"""Errors a user can fix: the CLI prints them as one line and exits with status 2.

`UserError` is bad input (spec file, CLI flag, path, data file, size); `ConfigError` is one config
key's rule, raised by model code and turned by the spec checker into a line naming the section of
the file the key came from. `DiskFull` (exit 1) is the one run failure with its own line: the
storage filled up; the study is resumable once space is freed. `short` keeps values quoted in
messages to one short line; `one_line` is the CLI's last guard (control characters removed, so a
string from a file cannot move the cursor or recolour the terminal).
"""

from __future__ import annotations

import errno
import re
import reprlib


class UserError(Exception):
    """Bad input (spec file, CLI flag, path, data). Message is one line naming what to fix."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range.

    Args:
        family: the trainable family whose rule it is.
        key: the config key.
        detail: the rule and the value, e.g. ``must be >= 1, got 0``.
    """

    def __init__(self, family: str, key: str, detail: str) -> None:
        self.family, self.key, self.detail = family, key, detail
        super().__init__(f"trainable {family}: {key}: {detail}")


class DiskFull(Exception):
    """The storage (or the local disk) has no space left; the message is one line naming it."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3

# C0 and C1 control characters and DEL (ESC sequences, bells, carriage returns) but not the space
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def short(value: object, limit: int = 100) -> str:
    """`repr(value)` cut to about `limit` characters (nested and long values elided with ...), without
    building the whole repr first: a value expanded from nested YAML aliases can be huge."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """`text` without control characters (terminal escape sequences from a file are not printed raw)."""
    return _CONTROL.sub("", str(text))


def one_line(message: str, limit: int = 1000) -> str:
    """A message as one line of at most `limit` characters, control characters removed."""
    text = " ".join(printable(message).split())
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text) - limit + 40} characters left out)"


def is_disk_full(e: BaseException | None) -> bool:
    """True for "no space left on device" (and quota exceeded) from Python, pyarrow or Ray, also when
    wrapped in another exception's message or cause."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
