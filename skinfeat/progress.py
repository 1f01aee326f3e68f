"""Progress of the library's long loops, silent unless an entry point asks for bars.

A loop over more than a few seconds of work (the linear probe's inner C search, the group
bootstraps) wraps its steps in :func:`track` or :func:`counter`. With no factory installed (the
library default) these return the iterable unchanged and do nothing: the library only logs. The
command line installs one with :func:`bars` (``commands.console.tqdm_factory``: a tqdm bar with
a total and an ETA, on standard error); a notebook may install its own::

    from functools import partial
    from tqdm.auto import tqdm
    with skinfeat.progress.bars(partial(tqdm, leave=False)):
        ...

A factory is any callable ``factory(total=..., desc=...)`` returning an object with
``update(n)`` and ``close()`` (tqdm's interface). Bars are closed when their loop ends, also on
an error, so an error line starts on a line of its own.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
Factory = Callable[..., Any]

_FACTORY: ContextVar[Factory | None] = ContextVar("skinfeat_progress_factory", default=None)
_OPEN: list[Any] = []   # the bars open now, innermost last


def current() -> Factory | None:
    """The installed bar factory, or None (silent)."""
    return _FACTORY.get()


@contextmanager
def bars(factory: Factory | None) -> Iterator[None]:
    """Within the block, :func:`track` and :func:`counter` show bars made by ``factory``
    (None: silent)."""
    token = _FACTORY.set(factory)
    before = len(_OPEN)
    try:
        yield
    finally:
        _FACTORY.reset(token)
        # A loop that raised leaves its generator (and bar) alive in the traceback: close its
        # bar here, before the caller prints the error.
        while len(_OPEN) > before:
            _OPEN.pop().close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def counter(total: int | None, desc: str = "") -> Iterator[Any]:
    """A bar to ``update(n)`` by hand (steps of unequal size); a no-op without a factory."""
    factory = _FACTORY.get()
    if factory is None:
        yield _Silent()
        return
    bar = factory(total=total, desc=desc)
    _OPEN.append(bar)
    try:
        yield bar
    finally:
        if bar in _OPEN:
            _OPEN.remove(bar)
            bar.close()


def track(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """``iterable`` itself without a factory; else its items, one bar step each."""
    if _FACTORY.get() is None:
        return iterable
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    return _tracked(iterable, total, desc)


def _tracked(iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    with counter(total, desc) as bar:
        for item in iterable:
            yield item
            bar.update(1)

