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

from typing import Sequence

import numpy as np
import pandas as pd

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
        raise ValueError(f"group_context: {len(groups)} group ids for {len(table)} rows")
    missing = [f for f in numeric if f not in table.columns]
    if missing:
        raise KeyError(f"group_context: no column(s) {', '.join(missing)} in the table")
    ids = pd.Series(groups)
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    ids[blank] = [f"\0row{i}" for i in np.flatnonzero(blank)]   # no group: a group of its own
    codes = pd.Series(pd.factorize(ids)[0], index=table.index)
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
        emb = np.asarray(embeddings, dtype=np.float64)
        emb = emb[:, 0] if emb.ndim == 3 else emb
        if len(emb) != len(table):
            raise ValueError(f"group_context: {len(emb)} embeddings for {len(table)} rows")
        c = codes.to_numpy()
        sums = np.zeros((c.max() + 1 if len(c) else 0, emb.shape[1]))
        np.add.at(sums, c, emb)
        centre = sums[c] / size.to_numpy()[:, None]
        out[DISTANCE_COLUMN] = pd.Series(np.linalg.norm(emb - centre, axis=1), index=table.index)
    out[SINGLE_COLUMN] = (size == 1).astype(np.float64)
    return pd.DataFrame(out, index=table.index)[context_columns(numeric, embeddings is not None)]
