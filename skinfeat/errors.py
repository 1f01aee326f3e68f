"""One base for every error skinfeat raises on purpose: ``except SkinfeatError`` catches what the
package refuses (a bad value, a missing file, a cache or bundle that does not fit), and nothing
else. The command line prints these as one ``Error: ...`` line; any other exception is a bug (or
a case not checked yet) and keeps its traceback (``skinfeat -v``).

Each error class also keeps the built-in base that callers caught before it existed
(``ValueError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` still works.
"""
from __future__ import annotations


class SkinfeatError(Exception):
    """Raised on purpose by skinfeat; ``str()`` is the one-line message for the user."""


class InputError(SkinfeatError, ValueError):
    """A value the user gave (an argument, an option, a file's content) that skinfeat refuses."""


class ArgumentTypeError(SkinfeatError, TypeError):
    """An argument of the Python API of the wrong type (a dict where a Recipe is expected)."""


class MissingFileError(SkinfeatError, FileNotFoundError):
    """A file or folder the user named is not there (or is not what it should be)."""


class ReadError(SkinfeatError, OSError):
    """A file that exists but cannot be read as what it should be."""
