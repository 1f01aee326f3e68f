"""``learn.parallel.run_unordered``: where the tasks run. Under joblib's default (loky) backend
this process runs tasks too, beside ``jobs - 1`` worker processes (no worker is started only
to leave this process idle); under the caller's backend, none run here (tests/test_cv.py)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from skinfeat.learn.parallel import run_unordered


def _where(task: int, shared: np.ndarray) -> tuple[int, int, float]:
    time.sleep(0.05)   # long enough for both sides to take tasks once the worker is up
    return task, os.getpid(), float(shared.sum())


def _fail_on_three(task: int, shared: np.ndarray) -> int:
    if task == 3:
        raise ValueError("task 3 failed")
    return task


@pytest.mark.slow   # starts a worker process
def test_tasks_run_here_and_on_jobs_minus_one_workers():
    shared = np.arange(6.0)
    got = dict(run_unordered(_where, range(40), shared, jobs=2))
    assert sorted(got) == list(range(40))
    assert all(task == i and total == 15.0 for i, (task, _, total) in got.items())
    pids = {pid for _, pid, _ in got.values()}
    assert os.getpid() in pids    # this process took tasks (the first one at least)
    assert len(pids) <= 2         # and one worker process, not two
    with pytest.raises(ValueError, match="task 3 failed"):   # here or in the worker
        list(run_unordered(_fail_on_three, range(8), shared, jobs=2))
