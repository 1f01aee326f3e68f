"""Independent tasks on joblib's workers: the scheduler under ``cv``'s folds.

``run_unordered(fn, tasks, shared, jobs)`` calls ``fn(task, shared)`` for every task, ``jobs`` at
a time, and yields (task number, result) as each finishes. Each call runs on one torch thread
(``head.one_thread``): small steps gain nothing from intra-op threads, and on a busy machine
OpenMP threads wait on each other at every barrier.

Where the tasks run:

- By default (no ``joblib.parallel_backend`` chosen, or loky chosen): here and on ``jobs - 1``
  of joblib's loky worker processes (its reusable executor, as ``Parallel`` uses), each taking
  the next task when it is free. This process would otherwise sit idle while ``jobs`` workers
  each import torch and the package (seconds of CPU and 0.4 GB each): one worker fewer took
  ``cv --models head`` at ``--jobs 2`` from 38.2 to 32.0 CPU-seconds and 1.52 to 1.10 GB
  (benchmarks/stage_two.py's cv-head; docs/performance.md). The workers start (and import
  what ``fn`` needs) while this process carves the first task and runs it; a task is handed to
  a worker only once it is warm.
- Under the caller's ``joblib.parallel_backend`` (threads, Dask, Ray): ``joblib.Parallel`` with
  ``jobs`` workers of that backend, and none of the tasks here.

The shared array (the embeddings) is saved once and mapped by each worker process, not pickled
per task; tasks are made as they are needed. ``fn`` must be a module-level function (it is
pickled by name into the workers).
"""
from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, TypeVar

import numpy as np

from .head import one_thread

T = TypeVar("T")

# Seconds an idle loky worker waits for more work before it exits (joblib's own default): a
# second cv or tune in the same process reuses the started workers.
IDLE_WORKER_TIMEOUT = 300


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


def _warm_up(fn: Callable) -> None:
    """Nothing: unpickling ``fn`` in a fresh worker imports its module (torch, the package)."""


def callers_backend() -> bool:
    """Whether the caller chose a joblib backend other than loky (threads, Dask, Ray, ...)."""
    from joblib.parallel import LokyBackend, get_active_backend

    return not isinstance(get_active_backend()[0], LokyBackend)


def run_unordered(fn: Callable[[Any, np.ndarray], T], tasks: Iterable[Any], shared: np.ndarray,
                  jobs: int) -> Iterator[tuple[int, T]]:
    """``fn(task, shared)`` for every task, ``jobs`` at a time: (task number, result) as each
    finishes. With ``jobs=1`` the tasks run here, one after the other."""
    if jobs <= 1:
        for i, task in enumerate(tasks):
            yield i, one_thread(fn)(task, shared)
        return
    with TemporaryDirectory(prefix="skinfeat-cv-") as tmp:
        path = str(Path(tmp) / "embeddings.npy")
        np.save(path, shared)
        try:
            if callers_backend():
                yield from _on_backend(fn, tasks, path, jobs)
            else:
                yield from _here_and_on_workers(fn, tasks, shared, path, jobs)
        finally:
            _mapped.cache_clear()   # threads map it in this process: let the file go


def _on_backend(fn: Callable, tasks: Iterable[Any], path: str,
                jobs: int) -> Iterator[tuple[int, Any]]:
    """Every task on ``jobs`` workers of the caller's joblib backend."""
    from joblib import Parallel, delayed

    run = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="n_jobs")
    yield from run(delayed(_run_saved)(i, fn, task, path) for i, task in enumerate(tasks))


_DONE = object()


def _here_and_on_workers(fn: Callable, tasks: Iterable[Any], shared: np.ndarray, path: str,
                         jobs: int) -> Iterator[tuple[int, Any]]:
    """This process and ``jobs - 1`` loky workers each take the next task when they are free.

    A feeder thread hands tasks to the workers (it only waits; the work is in the processes)
    and puts their results on a queue, which this generator empties between its own tasks."""
    from joblib.externals.loky import get_reusable_executor

    pending = enumerate(tasks)
    lock, stop = threading.Lock(), threading.Event()
    done: queue.SimpleQueue = queue.SimpleQueue()   # (number, result), an exception, or _DONE

    def take() -> tuple[int, Any] | None:
        with lock:   # tasks are made here, one caller at a time
            return None if stop.is_set() else next(pending, None)

    workers = jobs - 1
    pool = get_reusable_executor(max_workers=workers, timeout=IDLE_WORKER_TIMEOUT,
                                 env={"OMP_NUM_THREADS": "1"})
    # Started now: each imports what fn needs while this process makes and runs its first task
    # (tasks come heaviest first; one handed to a cold worker would wait seconds for it).
    warm = [pool.submit(_warm_up, fn) for _ in range(workers)]

    def feed() -> None:
        running: set[Future] = set()
        try:
            for f in warm:
                f.result()
            while True:
                while len(running) < workers and (nxt := take()) is not None:
                    running.add(pool.submit(_run_saved, nxt[0], fn, nxt[1], path))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    done.put(f.result())
        except BaseException as exc:   # raised by the generator, in the caller's thread
            stop.set()
            done.put(exc)
            for f in running:
                f.cancel()
        finally:
            done.put(_DONE)

    feeder = threading.Thread(target=feed, name="skinfeat-feeder", daemon=True)
    feeder.start()
    fed = False

    def ready(block: bool) -> Iterator[tuple[int, Any]]:
        nonlocal fed
        while not fed:
            try:
                item = done.get(block=block)
            except queue.Empty:
                return
            if item is _DONE:
                fed = True
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    try:
        while (nxt := take()) is not None:
            yield nxt[0], one_thread(fn)(nxt[1], shared)
            yield from ready(block=False)
        yield from ready(block=True)
    finally:
        stop.set()
        feeder.join()
