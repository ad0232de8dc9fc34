"""Kept for scripts that import ``study.errors``: the errors live in `core.errors`."""

from core.errors import ConfigError, DiskFull, UserError, is_disk_full, one_line, printable, short

__all__ = ["ConfigError", "DiskFull", "UserError", "is_disk_full", "one_line", "printable", "short"]
