"""Atomic file writes: every artifact reaches its final name by a rename, never half-written."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


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


def disk_full_hint(exc: BaseException) -> str:
    return " (disk full)" if getattr(exc, "errno", None) == errno.ENOSPC else ""
