"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (spec file, CLI flag, path, data). Message is one line naming what to fix."""
