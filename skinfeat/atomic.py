"""Atomic file writes: every artifact reaches its final name by a rename, never half-written."""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import SkinfeatError


def atomic_write(path: Path, write: Callable[[Path], object], *, fsync: bool = False) -> None:
    """``write(tmp)`` then rename over ``path``; the temp file is removed whatever happens.

    The temp name keeps ``path``'s suffix, so writers that append a missing one (``np.savez``)
    or pick a format from it (matplotlib) write exactly the file that gets renamed.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_dir(path: Path, fill: Callable[[Path], object]) -> None:
    """``fill(tmp)`` (a fresh directory) then rename it to ``path``; the temp directory is
    removed whatever happens. A reader sees the whole directory or none of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full_hint(exc: BaseException) -> str:
    return " (disk full)" if getattr(exc, "errno", None) == errno.ENOSPC else ""


class WriteError(SkinfeatError, OSError):
    """A run artifact that could not be written; the previous file, if any, is intact."""


def write_artifact(path: Path, write: Callable[[Path], object],
                   errors: tuple[type[BaseException], ...] = (OSError,),
                   error: Callable[[str], BaseException] = WriteError) -> None:
    """``atomic_write`` whose failure is one line naming the file (and a full disk)."""
    try:
        atomic_write(path, write)
    except errors as exc:
        raise error(f"{path}: could not write{disk_full_hint(exc)}: {exc}; the previous file, "
                    "if any, is left intact") from exc


def write_text(path: Path, text: str) -> None:
    write_artifact(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
