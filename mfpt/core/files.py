"""Atomic file writes: an interrupted run never leaves a half-written file; files get the mode the umask gives."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from mfpt.core.errors import UserError


def _umask() -> int:
    # os.umask can only be read by setting it; done once, when nothing else runs yet (at import).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file 0600 whatever the umask; results, reports and checkpoints shared with a group must be
# readable as any other file the user writes, so each file gets 0666 less the process's umask, as open() would give.
UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)  # after writing: some writers (safetensors) recreate the file 0600
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (XNLI-MT files run to about 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def json_line(row: dict[str, Any]) -> str:
    """One JSON-lines record, newline included."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Atomically rewrite `path` with its old lines plus `rows` (files stay small: one line per round x language)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    return write_text(path, old + "".join(json_line(row) for row in rows))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


class DamagedFileError(UserError, ValueError):
    """A JSON-lines file with a line that is not JSON; the message names the file, the line and what to do."""


def read_jsonl(path: str | os.PathLike, drop_cut_last_line: bool = False) -> list[dict[str, Any]]:
    """All JSON objects in a JSON-lines file (empty list if absent).

    Appends are not atomic, so a crash can cut the last line short: with `drop_cut_last_line` (a resume, which
    re-records the unfinished round anyway) that line is dropped; any other line that is not JSON is refused."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if drop_cut_last_line and number == len(lines):
                break
            raise DamagedFileError(f"{str(path)!r} line {number} is not valid JSON ({err.msg}): the file is damaged; "
                                   "restore it from a backup, or start the run again in a new folder.") from None
    return rows
