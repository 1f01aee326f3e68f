"""Rows of the one embedding array, held as indices: a split side without a copy.

At ISIC 2024 scale (401,059 x 768 float32: 1.2 GB) a fancy-index copy per split side, per fold
and per input set is what runs a machine out of memory. ``Rows(base, index)`` stands where a
side's (N, D) or (N, V, D) image array stood: it has the array's ``shape``, ``ndim``, ``dtype``
and ``len``, and gathers rows only when asked: ``gather`` for a batch, ``chunks`` for a pass
over the side (logits, a PCA projection), ``np.asarray`` for a consumer that needs the whole
side at once (a linear probe's design matrix). ``base`` may be float32, float16 or a
memory-mapped array; what is gathered comes back as float32.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 32_768   # rows per gathered chunk: 100 MB of 768-d float32, whatever the side's size


class Rows:
    """Rows ``index`` of ``base`` (N_all, D) or (N_all, V, D), gathered when asked."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index),) + tuple(self.base.shape[1:])

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, take: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Rows ``take`` of this side (positions within it), as a float32 array."""
        return np.asarray(self.base[self.index[take]], dtype=np.float32)

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        for start in range(0, len(self.index), size):
            yield self.gather(slice(start, start + size))

    def view(self, v: int) -> Rows:
        """View ``v`` of an (N, V, D) side: the same rows of ``base[:, v]`` (a numpy view)."""
        return Rows(self.base[:, v], self.index)

    def __getitem__(self, key):
        # ``image[:, v]``: view v of every row, still without a copy; anything else gathers.
        if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) \
                and isinstance(key[1], (int, np.integer)):
            return self.view(int(key[1]))
        return self.gather()[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.gather()
        return out if dtype is None else out.astype(dtype, copy=False)


def as_rows(image: np.ndarray | Rows) -> Rows:
    """``image`` as Rows (an array: all of its rows)."""
    return image if isinstance(image, Rows) else Rows(image, np.arange(len(image)))


def chunked(fn, image: np.ndarray | Rows, *rest: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """``fn(image_chunk, *rest_chunks)`` over chunks of rows, concatenated: a pass over a side
    holds one gathered chunk at a time, never the side. Row-wise ``fn`` only (logits)."""
    if not isinstance(image, Rows):
        return fn(image, *rest)
    if len(image) <= size:
        return fn(image.gather(), *rest)
    parts = [fn(chunk, *(r[start:start + size] for r in rest))
             for start, chunk in zip(range(0, len(image), size), image.chunks(size), strict=False)]
    return np.concatenate(parts, axis=0)
