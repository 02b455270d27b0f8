"""The base class of every error a user can cause and fix (a config, a path, a name, a file, a version).

The CLI prints such an error as one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave; the message names the offending value and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that is missing, unknown, of the wrong type or impossible; the message names the key."""
