"""Train / validation / test splits and k-folds, grouped by lesion unless asked otherwise.

HAM10000 has up to six images of one lesion. An image-level split (the reference recipe) puts
images of one lesion on both sides and inflates every score, so ``lesion`` is the default and
``image`` exists only to reproduce the reference. ``check_grouped`` is the guard: it raises when a
lesion sits on two sides of a lesion-level split.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from .atomic import atomic_write

log = logging.getLogger(__name__)

SPLIT_KINDS = ("lesion", "image")
PROTOCOLS = {
    "lesion": "lesion-grouped, stratified by dx: no lesion on both sides",
    "image": "image-level stratified (the reference's protocol): images of one lesion may sit "
             "on both sides, which inflates scores",
}


def protocol(kind: str, group: str = "lesion") -> str:
    """The split's description for reports, in the dataset's own words (lesion, patient)."""
    if group == "lesion":
        return PROTOCOLS[kind]
    if kind == "lesion":
        return (f"{group}-grouped, stratified by class: no {group} on both sides"
                if group != "image" else "image-level stratified (the set has no groups)")
    return (f"image-level stratified: images of one {group} may sit on both sides, which "
            "inflates scores")


def _check_kind(kind: str) -> None:
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; expected one of {SPLIT_KINDS}")


def fold_ids(table: pd.DataFrame, n_folds: int, kind: str = "lesion", seed: int = 42,
             strict: bool = True) -> np.ndarray:
    """Fold number (0..n_folds-1) of every row: stratified by dx, grouped by lesion for ``lesion``.

    ``strict`` refuses a class with fewer lesions (images) than folds, since some fold would
    then score without it; a single hold-out (``holdout_mask``) tolerates that.
    """
    _check_kind(kind)
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    unit = "lesion_id" if kind == "lesion" else "image_id"
    units = table.groupby("dx")[unit].nunique()
    too_few = units[units < n_folds]
    if strict and len(too_few):
        raise ValueError(
            f"{n_folds} folds need at least {n_folds} {unit.split('_')[0]}s per class; "
            + ", ".join(f"{dx} has {n}" for dx, n in too_few.items())
            + f". Use fewer folds (at most {int(units.min())}) or more data.")
    folds = np.empty(len(table), dtype=np.int64)
    y = table["dx"].to_numpy()
    if kind == "lesion":
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(table)), y, groups=table["lesion_id"].to_numpy())
    else:
        parts = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(table)), y)
    with warnings.catch_warnings():
        # sklearn warns about the small classes that strict mode has already ruled on.
        warnings.filterwarnings("ignore", message="The least populated class")
        for k, (_, test_idx) in enumerate(parts):
            folds[test_idx] = k
    return folds


def holdout_mask(table: pd.DataFrame, fraction: float, kind: str = "lesion",
                 seed: int = 42) -> np.ndarray:
    """Boolean mask of a stratified held-out part of about ``fraction`` of the rows."""
    _check_kind(kind)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if kind == "image":
        few = table["dx"].value_counts()
        few = few[few < 2]
        if len(few):  # sklearn's own message names no class
            raise ValueError("a stratified image-level split needs at least 2 images per class; "
                             + ", ".join(f"{dx} has {n}" for dx, n in few.items())
                             + ". The data set is too small for it")
        # Exactly the reference: train_test_split(stratify=y, test_size=0.2, random_state=42).
        _, test_idx = train_test_split(np.arange(len(table)), test_size=fraction,
                                       stratify=table["dx"].to_numpy(), random_state=seed)
        mask = np.zeros(len(table), dtype=bool)
        mask[test_idx] = True
        return mask
    n_folds = max(2, int(round(1.0 / fraction)))
    lesions = table["lesion_id"].nunique()
    if lesions < n_folds:
        raise ValueError(f"a {fraction:.0%} lesion-level hold-out needs at least {n_folds} "
                         f"lesions, got {lesions}; the data set is too small for it")
    return fold_ids(table, n_folds, "lesion", seed, strict=False) == 0


def assign_split(table: pd.DataFrame, kind: str = "lesion", test_size: float = 0.2,
                 val_size: float = 0.1, seed: int = 42) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row. ``val`` (early stopping) is carved from the
    non-test rows, so the rows that pick the epoch are never the rows that are scored."""
    split = pd.Series("train", index=table.index, dtype=object)
    test = holdout_mask(table, test_size, kind, seed)
    split[test] = "test"
    rest = table[~test]
    val = holdout_mask(rest, val_size / (1.0 - test_size), kind, seed)
    split.loc[rest.index[val]] = "val"
    check_split(table, split, kind)
    return split


def check_grouped(lesions: pd.Series, split: pd.Series) -> None:
    """Raise if any lesion has images on more than one side of ``split``."""
    sides = pd.DataFrame({"lesion": lesions.to_numpy(), "side": split.to_numpy()})
    crossing = sides.groupby("lesion")["side"].nunique()
    crossing = crossing[crossing > 1]
    if len(crossing):
        raise ValueError(f"{len(crossing)} lesion(s) on both sides of a lesion-level split, "
                         f"e.g. {', '.join(crossing.index[:3])}")


def check_split(table: pd.DataFrame, split: pd.Series, kind: str) -> None:
    """Leakage guard plus the basic sanity every later step relies on."""
    if kind == "lesion":
        check_grouped(table["lesion_id"], split)
    train_classes = set(table.loc[split == "train", "dx"])
    absent = sorted(set(table["dx"]) - train_classes)
    if absent:
        raise ValueError(f"class(es) {', '.join(absent)} have no training images in this split; "
                         "the data set is too small for it")


def save_split(table: pd.DataFrame, split: pd.Series, path: Path, kind: str, seed: int) -> None:
    out = table[["image_id", "lesion_id", "dx"]].assign(split=split.to_numpy(), kind=kind, seed=seed)
    atomic_write(Path(path), lambda tmp: out.to_csv(tmp, index=False))


def load_split(table: pd.DataFrame, path: Path) -> tuple[pd.Series, str, int]:
    """The saved split aligned to ``table``, its kind and seed; refuses a split made for other
    images."""
    saved = pd.read_csv(path, dtype=str)
    by_id = saved.set_index("image_id")["split"]
    missing = table["image_id"][~table["image_id"].isin(by_id.index)]
    if len(missing):
        raise ValueError(f"{path}: {len(missing)} image(s) of the data set are not in the saved "
                         f"split, e.g. {', '.join(missing[:3])}; use a new --out folder")
    kind, seed = str(saved["kind"].iloc[0]), int(saved["seed"].iloc[0])
    split = pd.Series(by_id.reindex(table["image_id"]).to_numpy(), index=table.index, dtype=object)
    check_split(table, split, kind)
    return split, kind, seed
