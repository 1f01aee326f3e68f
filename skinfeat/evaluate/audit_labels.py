"""Label issues: the images whose given label their out-of-fold model finds least likely.

The ranking is cleanlab's ``find_label_issues`` (confident learning; optional dependency, the
``audit`` extra) on out-of-fold probabilities: from cv's ``oof_predictions.csv`` (averaged over
every model, input set and seed it holds), or from a quick linear-probe cv the workflow runs.
Nothing here changes a label: the result is a list to look at.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.tables import DataError


def _cleanlab():
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise ImportError("label issues need cleanlab: pip install 'skinfeat[audit]'") from None
    return find_label_issues


def read_oof(path: str | Path, table: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    """Out-of-fold class probabilities (rows of ``table``, columns ``classes``) from cv's
    ``oof_predictions.csv``; a file of another data set (ids or classes that do not match)
    is a one-line error naming it."""
    path = Path(path)
    try:
        oof = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the out-of-fold predictions ({exc})") from None
    cols = [f"p_{c}" for c in classes]
    missing = [c for c in ["image_id", *cols] if c not in oof.columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]}: out-of-fold predictions of another "
                        f"data set or task (this one's classes: {', '.join(classes)})")
    mean = oof.groupby("image_id")[cols].mean()
    absent = ~table["image_id"].astype(str).isin(mean.index)
    if absent.any():
        ids = table["image_id"][absent].astype(str)
        raise DataError(f"{path}: {absent.sum()} of the data set's {len(table)} images have no "
                        f"out-of-fold prediction (e.g. {', '.join(ids[:3])}): from another data "
                        "set?")
    proba = mean.reindex(table["image_id"].astype(str)).to_numpy(dtype=np.float64)
    return proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)


def label_issues(table: pd.DataFrame, proba: np.ndarray, classes: tuple[str, ...],
                 top: int | None = None) -> pd.DataFrame:
    """The flagged images, most likely mislabelled first: id, group, given label, suggested
    label (the model's most likely class), the model's probability of each, and the rank."""
    labels = table["label"].to_numpy(dtype=int)
    present = np.unique(labels)
    if len(present) < 2:
        return _frame(table, proba, classes, np.zeros(0, dtype=int))
    ranked = _cleanlab()(labels, proba, return_indices_ranked_by="self_confidence",
                         filter_by="prune_by_noise_rate")
    if top is not None:
        ranked = ranked[:top]
    return _frame(table, proba, classes, np.asarray(ranked, dtype=int))


def _frame(table: pd.DataFrame, proba: np.ndarray, classes: tuple[str, ...],
           rows: np.ndarray) -> pd.DataFrame:
    labels = table["label"].to_numpy(dtype=int)[rows]
    suggested = proba[rows].argmax(1) if len(rows) else np.zeros(0, dtype=int)
    cls = np.asarray(classes, dtype=object)
    return pd.DataFrame({"rank": np.arange(1, len(rows) + 1),
                         "image_id": table["image_id"].to_numpy()[rows],
                         "group_id": table["group_id"].to_numpy()[rows],
                         "given_label": cls[labels], "suggested_label": cls[suggested],
                         "p_given": proba[rows, labels].round(4) if len(rows) else [],
                         "p_suggested": proba[rows, suggested].round(4) if len(rows) else []})
