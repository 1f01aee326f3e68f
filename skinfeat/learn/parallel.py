"""Independent tasks on joblib's workers: the scheduler under ``cv``'s folds.

``run_unordered(fn, tasks, shared, jobs)`` calls ``fn(task, shared)`` for every task, ``jobs`` at
a time, and yields (task number, result) as each finishes. Workers are joblib's (loky processes
by default, as scikit-learn's ``n_jobs``), or the backend of the caller's
``joblib.parallel_backend``: threads, Dask, Ray. Each call runs on one torch thread
(``head.one_thread``): small steps gain nothing from intra-op threads, and on a busy machine
OpenMP threads wait on each other at every barrier.

The shared array (the embeddings) is saved once and mapped by each worker, not pickled per
task; tasks are made as they are needed, so workers start while later ones are still being
carved. ``fn`` must be a module-level function (it is pickled by name into the workers).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, TypeVar

import numpy as np

from .head import one_thread

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _mapped(path: str) -> np.ndarray:
    """The array saved by ``run_unordered``, mapped once per worker (copy-on-write: pages are
    shared until written)."""
    return np.load(path, mmap_mode="c")


@one_thread
def _run_saved(index: int, fn: Callable[[Any, np.ndarray], T], task: Any,
               path: str) -> tuple[int, T]:
    """One task in a joblib worker, on the mapped array, one torch thread."""
    return index, fn(task, _mapped(path))


def run_unordered(fn: Callable[[Any, np.ndarray], T], tasks: Iterable[Any], shared: np.ndarray,
                  jobs: int) -> Iterator[tuple[int, T]]:
    """``fn(task, shared)`` for every task, ``jobs`` at a time: (task number, result) as each
    finishes. With ``jobs=1`` the tasks run here, one after the other."""
    from joblib import Parallel, delayed

    if jobs <= 1:
        for i, task in enumerate(tasks):
            yield i, one_thread(fn)(task, shared)
        return
    with TemporaryDirectory(prefix="skinfeat-cv-") as tmp:
        path = str(Path(tmp) / "embeddings.npy")
        np.save(path, shared)
        run = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="n_jobs")
        try:
            yield from run(delayed(_run_saved)(i, fn, task, path) for i, task in enumerate(tasks))
        finally:
            _mapped.cache_clear()   # threads map it in this process: let the file go
