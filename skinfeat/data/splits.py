"""Train / validation / test splits and k-folds, grouped by the dataset's groups unless asked
otherwise.

HAM10000 has up to six images of one lesion; ISIC 2020 and 2024 many lesions of one patient. An
image-level split (the reference recipe) puts images of one group on both sides and inflates
every score, so ``group`` (the validated table's ``group_id``: lesion or patient; the older
spelling ``lesion`` is accepted) is the default and ``image`` exists only to reproduce the
reference. ``check_grouped`` is the guard: it raises when a
lesion sits on two sides of a lesion-level split.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..atomic import atomic_write
from ..errors import InputError

log = logging.getLogger(__name__)

SPLIT_KINDS = ("group", "image")
# Older spellings, still accepted on the command line, in spec and config files and in saved
# splits: "lesion" meant "by the dataset's groups" (lesions, or patients for ISIC 2020).
ALIASES = {"lesion": "group"}
# by:COLUMN (cv: one fold per value) and by:COLUMN=VALUE (fit-head: that value held out)
BY = "by:"
PROTOCOLS = {
    "none": "no test part: every row trains except a lesion-grouped validation part that stops "
            "early and calibrates (a model to deploy; its scores come from cv)",
    "group": "lesion-grouped, stratified by dx: no lesion on both sides",
    "image": "image-level stratified (the reference's protocol): images of one lesion may sit "
             "on both sides, which inflates scores",
}


@dataclass(frozen=True)
class SplitKind:
    """A parsed ``--split``: ``group`` (alias ``lesion``), ``image``, ``none``, or a held-out
    column: ``by:COLUMN``
    (each value is one fold: leave-one-source-out) or ``by:COLUMN=VALUE`` (train on the other
    values, score that one). ``str()`` gives the text back (splits.csv, config.json)."""
    kind: str
    column: str | None = None
    value: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ALIASES.get(self.kind, self.kind))

    @property
    def by(self) -> bool:
        return self.kind == "by"

    def __str__(self) -> str:
        if not self.by:
            return self.kind
        return f"{BY}{self.column}" + (f"={self.value}" if self.value is not None else "")


def parse_split(text: str | SplitKind) -> SplitKind:
    """``--split`` text to a ``SplitKind``; column and value compared lower-case (the validated
    table's column names and categories are)."""
    if isinstance(text, SplitKind):
        return text
    text = str(text).strip()
    text = ALIASES.get(text, text)
    if text in (*SPLIT_KINDS, "none"):
        return SplitKind(text)
    if text.lower().startswith(BY):
        column, eq, value = text[len(BY):].partition("=")
        column, value = column.strip().lower(), value.strip().lower()
        if column and (not eq or value):
            return SplitKind("by", column, value if eq else None)
    raise InputError(f"--split {text!r}: use group (or lesion), image, none, by:COLUMN (cv: each "
                     "value of "
                     "COLUMN is one fold) or by:COLUMN=VALUE (fit-head: score that value, train "
                     "on the others), e.g. by:dataset=rosendahl")


def protocol(kind: str | SplitKind, group: str = "lesion") -> str:
    """The split's description for reports, in the dataset's own words (lesion, patient)."""
    split = parse_split(kind)
    if split.by:
        grouped = f"; no {group} in two values" if group != "image" else ""
        if split.value is None:
            return (f"leave-one-{split.column}-out: each value of {split.column} is one fold, "
                    f"scored by a model trained on the other values{grouped}")
        return (f"held-out {split.column}: scored on {split.column} = {split.value}, trained on "
                f"the other values{grouped}")
    kind = split.kind
    if group == "image" and kind == "none":
        return ("no test part: every row trains except an image-level validation part (the set "
                "has no groups) that stops early and calibrates (a model to deploy; its scores "
                "come from cv)")
    if group == "lesion" or kind == "none":
        return PROTOCOLS[kind].replace("lesion", group) if group != "image" else PROTOCOLS[kind]
    if kind == "group":
        return (f"{group}-grouped, stratified by class: no {group} on both sides"
                if group != "image" else "image-level stratified (the set has no groups)")
    return (f"image-level stratified: images of one {group} may sit on both sides, which "
            "inflates scores")


def _check_kind(kind: str | SplitKind) -> SplitKind:
    split = kind if isinstance(kind, SplitKind) else \
        parse_split(kind) if str(kind).lower().startswith(BY) else \
        SplitKind(ALIASES.get(str(kind), str(kind)))
    if not split.by and split.kind not in SPLIT_KINDS:
        raise InputError(f"unknown split kind {kind!r}; expected one of {SPLIT_KINDS} or "
                         "by:COLUMN")
    return split


def source_values(table: pd.DataFrame, kind: str | SplitKind) -> list[str]:
    """The values of a ``by:`` split's column, sorted: fold k of ``fold_ids`` scores value k.
    Refuses a column the table lacks, rows without a value, and a group (lesion, patient) whose
    images sit in two values (a held-out source would then share groups with training)."""
    split = parse_split(kind)
    col = split.column
    if col not in table.columns:
        raise InputError(f"--split {split}: the table has no column {col!r} (columns: "
                         f"{', '.join(c for c in table.columns if c not in ('path', 'label'))}); "
                         "name a column the set records, e.g. a subgroup column of the spec")
    values = table[col].astype(object).where(table[col].notna(), None)
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        raise InputError(f"--split {split}: {int(blank.sum())} row(s) have no {col} value, e.g. "
                         f"{', '.join(table.loc[blank, 'image_id'].astype(str)[:3])}; every row "
                         "needs one to hold values out")
    values = values.astype(str)
    crossing = pd.Series(values.to_numpy()).groupby(table["group_id"].to_numpy()).nunique()
    crossing = crossing[crossing > 1]
    if len(crossing):
        n_images = int(table["group_id"].isin(crossing.index).sum())
        raise InputError(f"--split {split}: {len(crossing)} group(s) ({n_images} images) have "
                         f"images in more than one {col} value, e.g. "
                         f"{', '.join(map(str, crossing.index[:3]))}; a held-out value would "
                         "share them with training (pass --crossing-groups drop or majority; "
                         "Python: splits.drop_crossing_groups)")
    found = sorted(set(values))
    if len(found) < 2:
        raise InputError(f"--split {split}: {col} has one value ({found[0]}); holding it out "
                         "leaves nothing to train on")
    if split.value is not None and split.value not in found:
        raise InputError(f"--split {split}: no row has {col} = {split.value!r}; the values are "
                         f"{', '.join(found)}")
    return found


def drop_crossing_groups(table: pd.DataFrame, column: str) -> tuple[pd.DataFrame, list[str]]:
    """``table`` without the groups whose images sit in more than one value of ``column``, and
    the image ids left out (to report): HAM10000 has 9 melanoma lesions (26 images) in both
    vidir_modern and vidir_molemax. Opt-in: ``source_values`` refuses them otherwise."""
    values = table[column].astype(object).where(table[column].notna(), "")
    n = pd.Series(values.astype(str).to_numpy()).groupby(table["group_id"].to_numpy()).nunique()
    crossing = table["group_id"].isin(n.index[n > 1]).to_numpy()
    if crossing.any():
        log.warning("by:%s: %d image(s) of %d group(s) in more than one %s value left out",
                    column, int(crossing.sum()), int((n > 1).sum()), column)
    return (table[~crossing].reset_index(drop=True),
            table.loc[crossing, "image_id"].astype(str).tolist())


def _by_folds(table: pd.DataFrame, split: SplitKind, n_folds: int) -> np.ndarray:
    if split.value is not None:
        raise InputError(f"--split {split}: cv takes by:{split.column} (every value is one fold "
                         f"in turn); by:COLUMN=VALUE holds one value out for fit-head")
    found = source_values(table, split)
    if n_folds != len(found):
        log.info("--split %s: %d folds, one per value (%s); the fold count %d is not used",
                 split, len(found), ", ".join(found), n_folds)
    return np.searchsorted(np.asarray(found, dtype=object),
                           table[split.column].astype(str).to_numpy()).astype(np.int64)


def fold_ids(table: pd.DataFrame, n_folds: int, kind: str = "group", seed: int = 42,
             strict: bool = True) -> np.ndarray:
    """Fold number (0..n_folds-1) of every row: stratified by dx, grouped by ``group_id`` for
    ``group``.

    ``strict`` refuses a class with fewer lesions (images) than folds, since some fold would
    then score without it; a single hold-out (``holdout_mask``) tolerates that.
    """
    split = _check_kind(kind)
    if split.by:
        return _by_folds(table, split, n_folds)
    kind = split.kind
    if n_folds < 2:
        raise InputError(f"need at least 2 folds, got {n_folds}")
    unit = "group_id" if kind == "group" else "image_id"
    units = table.groupby("dx")[unit].nunique()
    too_few = units[units < n_folds]
    if strict and len(too_few):
        raise InputError(
            f"{n_folds} folds need at least {n_folds} {unit.split('_')[0]}s per class; "
            + ", ".join(f"{dx} has {n}" for dx, n in too_few.items())
            + f". Use fewer folds (at most {int(units.min())}) or more data.")
    y = table["dx"].to_numpy()
    if kind == "group":
        return stratified_group_folds(y, table["group_id"].to_numpy(), n_folds, seed)
    folds = np.empty(len(table), dtype=np.int64)
    parts = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
        np.zeros(len(table)), y)
    with warnings.catch_warnings():
        # sklearn warns about the small classes that strict mode has already ruled on.
        warnings.filterwarnings("ignore", message="The least populated class")
        for k, (_, test_idx) in enumerate(parts):
            folds[test_idx] = k
    return folds


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_folds: int,
                           seed: int) -> np.ndarray:
    """Fold of every row, exactly as sklearn's ``StratifiedGroupKFold(n_folds, shuffle=True,
    random_state=seed)`` assigns them (tests/test_splits.py compares the two), about 10x faster.

    sklearn's greedy loop tries each fold for each group with a handful of NumPy calls per
    try: 2 s per split of HAM10000's 7,470 lesions, the largest part of a ``fit-head`` run and
    one second per fold of ``cv``. Here the n_folds tries of a group are one array operation,
    with the same arithmetic in the same order, so ties break identically.
    """
    rng = np.random.RandomState(seed)   # check_random_state(int)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    if np.all(n_folds > y_cnt):
        raise InputError(f"n_splits={n_folds} cannot be greater than the number of members in "
                         "each class.")
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    n_groups, n_classes = len(groups_cnt), len(y_cnt)
    if n_folds > n_groups:
        raise InputError(f"Cannot have number of splits n_splits={n_folds} greater than the "
                         f"number of groups: {n_groups}.")
    per_group = np.zeros((n_groups, n_classes))
    np.add.at(per_group, (groups_inv.ravel(), y_inv.ravel()), 1)
    perm = np.arange(n_groups)
    rng.shuffle(perm)
    per_group = per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    groups_inv = inv_perm[groups_inv.ravel()]
    order = np.argsort(-np.std(per_group, axis=1), kind="stable")
    per_fold = np.zeros((n_folds, n_classes))
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    diag = np.arange(n_folds)
    y_cnt = y_cnt.reshape(1, 1, -1)
    for g in order:
        counts = per_group[g]
        tries = np.broadcast_to(per_fold, (n_folds, n_folds, n_classes)).copy()
        tries[diag, diag] += counts                     # try i: the group added to fold i
        evals = np.std(tries / y_cnt, axis=1).mean(axis=1).tolist()
        sizes = per_fold.sum(axis=1).tolist()
        best, min_eval, min_size = 0, np.inf, np.inf
        for i, (ev, size) in enumerate(zip(evals, sizes, strict=False)):
            close = min_eval != np.inf and abs(ev - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)
            if ev < min_eval or (close and size < min_size):
                best, min_eval, min_size = i, ev, size
        per_fold[best] += counts
        fold_of_group[g] = best
    return fold_of_group[groups_inv]


def holdout_mask(table: pd.DataFrame, fraction: float, kind: str = "group",
                 seed: int = 42) -> np.ndarray:
    """Boolean mask of a stratified held-out part of about ``fraction`` of the rows (a ``by:``
    split's inner part, from rows of the training values, is lesion-grouped)."""
    kind = "group" if _check_kind(kind).by else _check_kind(kind).kind
    if not 0.0 < fraction < 1.0:
        raise InputError(f"holdout fraction must be in (0, 1), got {fraction}")
    if kind == "image":
        few = table["dx"].value_counts()
        few = few[few < 2]
        if len(few):  # sklearn's own message names no class
            raise InputError("a stratified image-level split needs at least 2 images per class; "
                             + ", ".join(f"{dx} has {n}" for dx, n in few.items())
                             + ". The data set is too small for it")
        # Exactly the reference: train_test_split(stratify=y, test_size=0.2, random_state=42).
        _, test_idx = train_test_split(np.arange(len(table)), test_size=fraction,
                                       stratify=table["dx"].to_numpy(), random_state=seed)
        mask = np.zeros(len(table), dtype=bool)
        mask[test_idx] = True
        return mask
    n_folds = max(2, int(round(1.0 / fraction)))
    lesions = table["group_id"].nunique()
    if lesions < n_folds:
        raise InputError(f"a {fraction:.0%} lesion-level hold-out needs at least {n_folds} "
                         f"lesions, got {lesions}; the data set is too small for it")
    return fold_ids(table, n_folds, "group", seed, strict=False) == 0


def assign_split(table: pd.DataFrame, kind: str = "group", test_size: float = 0.2,
                 val_size: float = 0.1, seed: int = 42) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row. ``val`` (early stopping) is carved from the
    non-test rows, so the rows that pick the epoch are never the rows that are scored."""
    split = pd.Series("train", index=table.index, dtype=object)
    by = _check_kind(kind) if kind != "none" else SplitKind("none")
    if by.by:   # the held-out value is the test part; validation from the others, grouped
        if by.value is None:
            raise InputError(f"--split {by}: fit-head holds one value out: by:{by.column}=VALUE "
                             f"(values: {', '.join(source_values(table, by))}); cv takes "
                             f"by:{by.column}")
        source_values(table, by)
        test = (table[by.column].astype(str) == by.value).to_numpy()
        split[test] = "test"
        rest = table[~test]
        split.loc[rest.index[holdout_mask(rest, val_size, "group", seed)]] = "val"
        check_split(table, split, by)
        return split
    kind = by.kind
    if kind == "none":   # every row trains, but a grouped validation part (stop, calibrate)
        split[holdout_mask(table, val_size, "group", seed)] = "val"
        check_split(table, split, kind)
        return split
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
        raise InputError(f"{len(crossing)} lesion(s) on both sides of a lesion-level split, "
                         f"e.g. {', '.join(crossing.index[:3])}")


def check_split(table: pd.DataFrame, split: pd.Series, kind: str | SplitKind) -> None:
    """Leakage guard plus the basic sanity every later step relies on; a ``by:`` split also
    refuses a value of its column on both the scored and the training side."""
    by = _check_kind(kind) if str(kind) != "none" else SplitKind("none")
    if by.by or by.kind in ("group", "none"):
        check_grouped(table["group_id"], split)
    if by.by:
        source_values(table, by)
        values = table[by.column].astype(str).to_numpy()
        scored = set(values[(split == "test").to_numpy()])
        both = sorted(scored & set(values[(split != "test").to_numpy()]))
        if both:
            raise InputError(f"--split {by}: {by.column} value(s) {', '.join(both)} on both the "
                             "scored and the training side")
    train_classes = set(table.loc[split == "train", "dx"])
    absent = sorted(set(table["dx"]) - train_classes)
    if absent:
        raise InputError(f"class(es) {', '.join(absent)} have no training images in this split; "
                         "the data set is too small for it")


def source_sides(table: pd.DataFrame, split: pd.Series, kind: str | SplitKind) -> dict | None:
    """For a ``by:`` split, which values trained and which scored (for the report)."""
    by = parse_split(kind) if str(kind).lower().startswith(BY) else None
    if by is None or not by.by:
        return None
    values = table[by.column].astype(str).to_numpy()
    side = split.to_numpy()
    return {"column": by.column, "trained_on": sorted(set(values[side != "test"])),
            "scored_on": sorted(set(values[side == "test"]))}


def save_split(table: pd.DataFrame, split: pd.Series, path: Path, kind: str | SplitKind,
               seed: int) -> None:
    out = table[["image_id", "group_id", "dx"]].assign(split=split.to_numpy(), kind=str(kind),
                                                        seed=seed)
    if "merged_groups" in table.attrs:   # groups joined by an audit's near-duplicate pairs
        out["merged_groups"] = table.attrs["merged_groups"]
    atomic_write(Path(path), lambda tmp: out.to_csv(tmp, index=False))


def load_split(table: pd.DataFrame, path: Path) -> tuple[pd.Series, str, int]:
    """The saved split aligned to ``table``, its kind and seed; refuses a split made for other
    images."""
    saved = pd.read_csv(path, dtype=str)
    by_id = saved.set_index("image_id")["split"]
    missing = table["image_id"][~table["image_id"].isin(by_id.index)]
    if len(missing):
        raise InputError(f"{path}: {len(missing)} image(s) of the data set are not in the saved "
                         f"split, e.g. {', '.join(missing[:3])}; use a new --out folder")
    kind, seed = str(saved["kind"].iloc[0]), int(saved["seed"].iloc[0])
    kind = ALIASES.get(kind, kind)   # a split saved before the rename
    split = pd.Series(by_id.reindex(table["image_id"]).to_numpy(), index=table.index, dtype=object)
    check_split(table, split, kind)
    return split, kind, seed
