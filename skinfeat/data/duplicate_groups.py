"""Join the groups (lesions, patients) that near-duplicate images connect, before any split.

Two images of "different" lesions that are one photograph at another size would otherwise land
on both sides of a grouped split: the model is then scored on an image it was trained on.
``merge_groups`` joins every group connected by a flagged pair (union-find, so chains A-B, B-C
become one group) and names the joined group after its smallest member id, so the same pairs
always give the same groups (and the same folds for a seed).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import DataError, Dataset

PAIR_COLUMNS = ("image_id_a", "image_id_b")


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def merge_groups(groups: pd.Series, image_ids: pd.Series,
                 pairs: list[tuple[str, str]]) -> tuple[pd.Series, int]:
    """The group of each row after joining the groups of every pair of image ids (pairs with an
    id not in ``image_ids`` are skipped: another set's image), and how many groups disappeared
    into others (0: nothing changed)."""
    groups = groups.astype(str)
    names = sorted(set(groups))
    code = {g: i for i, g in enumerate(names)}
    of_image = dict(zip(image_ids.astype(str), groups.map(code), strict=False))
    uf = UnionFind(len(names))
    merged = sum(uf.union(of_image[a], of_image[b]) for a, b in pairs
                 if a in of_image and b in of_image)
    roots = uf.roots()
    first: dict[int, str] = {}
    for i, r in enumerate(roots):      # names sorted: the first member seen is the smallest
        first.setdefault(r, names[i])
    new = groups.map(lambda g: first[roots[code[g]]])
    return new.rename(groups.name), int(merged)


def read_audit_file(path: str | Path, name: str, columns: tuple[str, ...],
                    flag: str) -> pd.DataFrame:
    """One of an audit's CSV files (``path``: the file, or the audit folder holding ``name``);
    a missing file or column is a one-line error naming the file and ``flag``."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise DataError(f"{path}: no such file ({flag} wants an audit's {name} or its folder)")
    table = pd.read_csv(path, dtype=str)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not an audit's {name} (no column {missing[0]})")
    return table


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The flagged pairs of an audit (its ``duplicates.csv``, or the audit folder holding it);
    only pairs within one set are used (``kind`` other than across_sets)."""
    table = read_audit_file(path, "duplicates.csv", PAIR_COLUMNS, "--merge-duplicate-groups")
    if "kind" in table.columns:
        table = table[table["kind"] != "across_sets"]
    return list(zip(table["image_id_a"], table["image_id_b"], strict=True))


def merge_duplicate_groups(table: pd.DataFrame, pairs_file: str | Path) -> tuple[pd.DataFrame, int]:
    """``table`` with its ``group_id`` joined across the pairs of an audit's duplicates.csv
    (a copy; ``attrs["merged_groups"]`` and the count returned say how many groups were
    merged). Refuses a file none of whose pairs belongs to this data set."""
    pairs = read_pairs(pairs_file)
    ids = set(table["image_id"].astype(str))
    if pairs and not any(a in ids and b in ids for a, b in pairs):
        raise DataError(f"{pairs_file}: none of its {len(pairs)} pairs is of this data set's "
                        "images (an audit of another set?)")
    out = table.copy()
    out["group_id"], merged = merge_groups(table["group_id"], table["image_id"], pairs)
    out.attrs["merged_groups"] = merged
    out.attrs["merged_groups_file"] = str(pairs_file)
    return out, merged


def groups_frame(table: pd.DataFrame, merged: pd.Series) -> pd.DataFrame:
    """The groups CSV of an audit: each image's group before and after the merge (give
    ``merged_group_id`` to ``--group-col`` or a spec file's group column)."""
    return pd.DataFrame({"image_id": table["image_id"].to_numpy(),
                         "group_id": table["group_id"].astype(str).to_numpy(),
                         "merged_group_id": merged.to_numpy()})


def drop_label_issues(data: Dataset, issues_file: str | Path) -> Dataset:
    """``data`` without the images an audit's ``label_issues.csv`` lists (its table and
    described columns; the dropped ids in ``table.attrs["dropped_label_issues"]``). Refuses a
    file of another set."""
    table = data.table
    listed = read_audit_file(issues_file, "label_issues.csv", ("image_id",),
                             "--drop-label-issues")
    ids = table["image_id"].astype(str)
    drop = ids.isin(set(listed["image_id"]))
    if len(listed) and not drop.any():
        raise DataError(f"{issues_file}: none of its {len(listed)} images is in this data "
                        "set (an audit of another set?)")
    out = table[~drop].reset_index(drop=True)
    out.attrs = {**table.attrs, "dropped_label_issues": ids[drop].tolist()}
    described = None if data.described is None else \
        data.described[~drop.to_numpy()].reset_index(drop=True)
    return replace(data, table=out, described=described)
