"""Where a tune study lives: a database URL checked before Optuna opens it (the URL, its folder,
its file, its driver: each a one-line error, the password hidden), or the journal file of local
workers, whose torn last line (a kill, a full disk) is set aside before the study resumes."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..atomic import write_artifact
from ..errors import InputError

log = logging.getLogger(__name__)

JOURNAL = "study.journal"   # the study of local workers (--jobs) when no --storage is given


def storage_of(cfg, out: Path, *, repair: bool = False):
    """The storage of the study a ``TuneConfig`` describes: the given URL; with local workers and
    none given, a journal file
    in ``out`` (Optuna's file storage for several processes); else in memory. ``repair``
    (the main process, before any worker starts) sets a torn last line of the journal aside.
    A storage that cannot be opened is a one-line error naming it and the reason."""
    if cfg.storage:
        return url_storage(cfg.storage)
    if cfg.jobs <= 1:
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(out) / JOURNAL
    if repair:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        # Every line is JSON (check_journal), but not a record Optuna can replay.
        raise InputError(f"{path}: not a study journal Optuna can replay ({exc!r}); move it "
                         "away to start the study afresh") from exc


def url_storage(url: str):
    """An Optuna RDB storage for ``url``, or a ValueError naming the URL (its password hidden)
    and why it cannot be used."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise InputError(f"--storage {url}: not a database URL (e.g. sqlite:///tune.db, "
                         "postgresql://user@host/db)") from exc
    shown = parsed.render_as_string(hide_password=True)

    def fail(reason: str) -> InputError:
        return InputError(f"--storage {shown}: {reason}")

    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise fail("an in-memory database stores nothing and is not shared by workers; "
                       "name a file (sqlite:///tune.db) or leave --storage out")
        db = Path(parsed.database)
        if not db.parent.is_dir():
            raise fail(f"the folder {db.parent} does not exist")
        if db.is_dir():
            raise fail(f"{db} is a folder, not a database file")
        if db.is_file() and db.stat().st_size:
            with open(db, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise fail(f"{db} is not an SQLite database")
    try:
        return optuna.storages.get_storage(url)
    except NoSuchModuleError as exc:
        raise fail(f"unknown database kind {parsed.drivername!r} (SQLAlchemy URLs: sqlite, "
                   "postgresql, mysql, ...)") from exc
    except ImportError as exc:
        cause = exc.__cause__ or exc
        raise fail(f"the {parsed.drivername} driver is not installed ({cause})") from exc
    except (SQLAlchemyError, TypeError, ValueError) as exc:   # the latter: bad URL options
        raise fail(f"cannot open the database ({first_line(exc)})") from exc
    except RuntimeError as exc:   # e.g. tables made by another Optuna version
        raise fail(first_line(exc)) from exc


def first_line(exc: BaseException) -> str:
    """An error's first line; for a database error, the driver's own (SQLAlchemy appends SQL
    and a link)."""
    exc = getattr(exc, "orig", None) or exc
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_journal(path: Path) -> None:
    """Before a study resumes from its journal, every line must be a complete JSON record.

    A torn last line (no newline at its end: a kill or a full disk cut an append short) is set
    aside in ``study.journal.torn`` (or ``.torn.N``) with a warning, and the study resumes
    without it: Optuna's own reader never replays a line without its newline, so the workers
    never saw that record, and left in place the next append would glue onto it and corrupt
    the journal. A bad line before the last is corruption, not an interruption: an error
    naming the file and the line."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file():
        return
    lock = JournalFileSymlinkLock(str(path))   # the lock Optuna's appends take
    lock.acquire()
    try:
        data = path.read_bytes()
        *lines, torn = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                reason = f"not a JSON record ({exc})"
            else:
                if isinstance(record, dict) and "op_code" in record:
                    continue
                reason = "a JSON value that is not a study record"
            raise InputError(f"{path} line {number}: {reason}; the journal is corrupt (an "
                             "interrupted append tears only the last line, leaving it without "
                             "a newline), so the study cannot resume from it: restore it from "
                             "a backup, or move it away to start the study afresh")
        if torn:
            side = path.with_name(path.name + ".torn")
            n = 0
            while side.exists():
                n += 1
                side = path.with_name(f"{path.name}.torn.{n}")
            write_artifact(side, lambda tmp: tmp.write_bytes(torn))
            os.truncate(path, len(data) - len(torn))
            log.warning("%s line %d: a torn last record (%d bytes without a newline: an append "
                        "cut short by a kill or a full disk) was set aside in %s; the study "
                        "resumes without it", path, len(lines) + 1, len(torn), side)
    finally:
        lock.release()
