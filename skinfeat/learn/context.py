"""Patient context ("ugly duckling") features: how a lesion stands out among its own group's.

In ISIC 2024 a malignant lesion is often the one unlike the patient's other lesions; the
published LightGBM solutions get most of their gain from such features. ``group_context``
computes them from the rows it is given and nothing else: for each numeric field the lesion's
z-score and rank within its group, and the distance of its image embedding from the group's
mean embedding. No label and no other group enters, so the same call serves a training fold
(its own rows), a validation fold, and a predict ``--csv`` (each lesion among the others of its
patient in that file). Wiring it into fit / cv / predict (``--group-context``) is separate.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

SINGLE_COLUMN = "group_single"          # 1.0 where the group has one lesion: values are neutral
DISTANCE_COLUMN = "embedding_group_distance"


def context_columns(numeric: Sequence[str], embeddings: bool = True) -> list[str]:
    """The column names ``group_context`` returns, in order."""
    cols = [f"{f}_{kind}" for f in numeric for kind in ("group_z", "group_rank")]
    return cols + ([DISTANCE_COLUMN] if embeddings else []) + [SINGLE_COLUMN]


def group_context(table: pd.DataFrame, numeric: Sequence[str], groups: Sequence | np.ndarray,
                  embeddings: np.ndarray | None = None) -> pd.DataFrame:
    """Context features of every row of ``table`` within its group.

    ``table``: the rows (a validated table or a predict table); ``numeric``: its numeric fields
    (floats, NaN where missing); ``groups``: one group id per row (a patient; the validated
    table's ``group_id`` column; a blank or missing id is a group of its own);
    ``embeddings``: (N, D) image embeddings of the same rows, or (N, V, D) with views (view 0,
    the original image, is used), or None.

    Returns a frame on ``table``'s index with, per field, ``FIELD_group_z`` ((x - group mean) /
    group std, population std; 0 where the group's values are all equal) and
    ``FIELD_group_rank`` (average rank among the group's values, 0 = lowest, 1 = highest), then
    ``embedding_group_distance`` (Euclidean distance from the group's mean embedding) and
    ``group_single`` (1.0 for a group of one). A missing value stays missing (NaN) and is left
    out of its group's statistics; a lesion that is the only one of its group with a value gets
    the neutral z 0 and rank 0.5, and a group of one lesion distance 0.
    """
    groups = np.asarray(groups, dtype=object)
    if len(groups) != len(table):
        raise InputError(f"group_context: {len(groups)} group ids for {len(table)} rows")
    missing = [f for f in numeric if f not in table.columns]
    if missing:
        raise KeyError(f"group_context: no column(s) {', '.join(missing)} in the table")
    ids = pd.Series(groups)
    blank = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy()
    # No group: a group of its own, as a new code (not a marker string: pandas < 3 hashes an
    # object string only up to its first NUL, so "\0row0" and "\0row1" were one group).
    codes = pd.factorize(ids.mask(blank))[0]
    codes[blank] = codes.max(initial=-1) + 1 + np.arange(blank.sum())
    codes = pd.Series(codes, index=table.index)
    size = codes.map(codes.value_counts())
    out: dict[str, pd.Series] = {}
    for field in numeric:
        x = pd.to_numeric(table[field], errors="coerce").astype(np.float64)
        by = x.groupby(codes)
        n = by.transform("count")
        mean, std = by.transform("mean"), codes.map(by.std(ddof=0))
        z = ((x - mean) / std.where(std > 0)).fillna(0.0)
        rank = ((by.rank(method="average") - 1) / (n - 1).where(n > 1)).fillna(0.5)
        known = x.notna()
        out[f"{field}_group_z"] = z.where(known)
        out[f"{field}_group_rank"] = rank.where(known)
    if embeddings is not None:
        emb = np.asarray(embeddings)   # no copy of an array or a memory map
        emb = emb[:, 0] if emb.ndim == 3 else emb
        if len(emb) != len(table):
            raise InputError(f"group_context: {len(emb)} embeddings for {len(table)} rows")
        out[DISTANCE_COLUMN] = pd.Series(_centre_distance(emb, codes.to_numpy(),
                                                          size.to_numpy()), index=table.index)
    out[SINGLE_COLUMN] = (size == 1).astype(np.float64)
    return pd.DataFrame(out, index=table.index)[context_columns(numeric, embeddings is not None)]


# Rows per chunk of the embedding distance: float64 work arrays of a few tens of MB, never a
# float64 copy of the whole (possibly float16 or memory-mapped) embedding array.
_CHUNK = 32768


def _centre_distance(emb: np.ndarray, codes: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Each row's Euclidean distance from its group's mean embedding, in float64, chunked."""
    n, d = emb.shape
    sums = np.zeros((int(codes.max()) + 1 if n else 0, d))
    for lo in range(0, n, _CHUNK):
        c = codes[lo:lo + _CHUNK]
        block = np.asarray(emb[lo:lo + _CHUNK], dtype=np.float64)
        _add_rows(sums, c, block)
    dist = np.empty(n)
    for lo in range(0, n, _CHUNK):
        c = codes[lo:lo + _CHUNK]
        block = np.asarray(emb[lo:lo + _CHUNK], dtype=np.float64)
        dist[lo:lo + len(c)] = np.linalg.norm(block - sums[c] / size[lo:lo + len(c), None], axis=1)
    return dist


def _add_rows(sums: np.ndarray, codes: np.ndarray, block: np.ndarray) -> None:
    """``np.add.at(sums, codes, block)`` by sorting: add.at is unbuffered and slow at scale."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    sums[c[starts]] += np.add.reduceat(block[order], starts, axis=0)


def context_matrix(table: pd.DataFrame, numeric: Sequence[str], groups: Sequence | np.ndarray,
                   embeddings: np.ndarray | None) -> np.ndarray:
    """``group_context`` as float32 model features: a missing z becomes 0 and a missing rank
    0.5, the values of a lesion alone in its group (the metadata encoder already marks the
    field as missing). What ``--group-context`` appends to the encoded metadata, at training
    and at predict time alike."""
    ctx = group_context(table, numeric, groups, embeddings)
    neutral = {c: (0.5 if c.endswith("_group_rank") else 0.0) for c in ctx.columns}
    return ctx.fillna(neutral).to_numpy(dtype=np.float32)
