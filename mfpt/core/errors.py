"""The base class of every error a user can cause and fix (a config, a path, a name, a file, a version).

The CLI prints such an error as one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem in what the user gave; the message names the offending value and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that is missing, unknown, of the wrong type or impossible; the message names the key."""


def error_line(reason: str, limit: int = 300) -> str:
    """One readable line of an error reason: Flower's "<class 'm.TypeError'>:<'boom'>" wrapping and its
    ClientAppException preamble removed, the last line of a traceback kept, at most `limit` characters."""
    text = str(reason).strip()
    wrapped = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", text, flags=re.DOTALL)
    if wrapped:
        kind, text = wrapped.group(1), wrapped.group(2).strip()
        inner = re.search(r"Exception ClientAppException occurred\. Message: (.*)", text, flags=re.DOTALL)
        text = inner.group(1).strip() if inner else (text if kind == "ClientAppException" else f"{kind}: {text}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "(no reason given)"
    return line if len(line) <= limit else line[: limit - 3] + "..."
