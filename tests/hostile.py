"""Shared assertions for the hostile-input suites (``tests/test_hostile_*.py``).

Every hostile case runs one CLI command on a bad input and checks the promise of the README's
"Bad input and faults" section: exit code 1, no traceback, one ``Error: ...`` line that names
the file and/or the field at fault, and every artifact that existed before the command is
byte-identical afterwards (nothing half-overwritten, nothing "fixed" behind the user's back).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from click.testing import CliRunner, Result

from skinfeat.cli import main


def cli(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args) -> Result:
    """Run a command that must succeed (the set-up of a hostile case)."""
    r = cli(*args)
    assert r.exit_code == 0 and r.exception is None, r.output
    assert "Traceback" not in r.output
    return r


def snapshot(paths: Iterable[str | Path]) -> dict[str, str]:
    """sha256 of every file under the given files or folders."""
    digests: dict[str, str] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def refused(args: Iterable, *needles: str, protect: Iterable[str | Path] = ()) -> str:
    """Run ``skinfeat ARGS`` and assert a clean refusal; returns the ``Error:`` line.

    ``needles`` must all appear in the error line (the file, the key, the expected type...).
    ``protect`` are files or folders that must be byte-identical after the command."""
    protect = list(protect)
    before = snapshot(protect)
    r = cli(*args)
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    lines = r.output.strip().splitlines()
    errors = [x for x in lines if x.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    after = snapshot(protect)
    assert after == before, "an earlier artifact changed: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
    return errors[0]
