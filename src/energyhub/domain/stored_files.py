"""Plain files that one service writes and another reads (day-ahead profiles, plaza bookings): written whole or
not at all, a cheap test whether a folder of them changed, and why one could not be read."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import ValidationError

__all__ = ["first_error", "folder_stamp", "write_atomic"]


def first_error(exc: Exception) -> str:
    """Why a stored file could not be used, in a line: its first validation error with where, or the OS error."""
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    return str(exc)


def write_atomic(target: Path, text: str) -> Path:
    """Write ``text`` to ``target`` so that a reader never sees half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_text(text)
    os.replace(partial, target)
    return target


def folder_stamp(folder: Path, pattern: str = "*/*.json") -> tuple[int, int]:
    """Number of files and the newest change: changes when a file is added, rewritten or removed."""
    count, newest = 0, 0
    if folder.is_dir():
        for path in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, path.stat().st_mtime_ns)
                count += 1
    return count, newest
