"""Paired statistics of two models' out-of-fold predictions on the same images: the difference
in one metric, its percentile interval from a bootstrap over GROUPS (lesions or patients; one
resample serves both entries, so the pairing is kept) and a two-sided bootstrap p-value.

Every function here is pure (arrays in, numbers out); ``workflows.compare`` reads the cv runs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .metrics import _weighted_auc, _weighted_pauc, group_resamples

# The metrics a comparison can rank on; auc and pauc80 need two classes.
COMPARE_METRICS = ("balanced_accuracy", "auc", "pauc80")
BINARY_ONLY = ("auc", "pauc80")
P_VALUE_METHOD = ("two-sided percentile-bootstrap p-value over groups: 2 x the smaller share "
                  "of resampled differences on either side of 0, each share counted as "
                  "(count + 1) / (resamples + 1), capped at 1")


@dataclass(frozen=True)
class PairedDifference:
    """``metric(b) - metric(a)`` on the same rows, with its group-bootstrap interval."""
    estimate: float          # on the full out-of-fold set (mean over seeds)
    low: float               # (1 - alpha) percentile interval
    high: float
    p_value: float           # see P_VALUE_METHOD
    n_boot: int              # resamples with a finite difference
    alpha: float = 0.05

    @property
    def within_noise(self) -> bool:
        """The interval includes 0: the data do not tell the two apart."""
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {**asdict(self), "within_noise": self.within_noise}


def check_metric(metric: str, n_classes: int) -> None:
    if metric not in COMPARE_METRICS:
        raise InputError(f"metric {metric!r}: use one of {', '.join(COMPARE_METRICS)}")
    if metric in BINARY_ONLY and n_classes != 2:
        raise InputError(f"metric {metric!r} needs a binary task; this one has {n_classes} "
                         "classes (use balanced_accuracy)")


def weighted_metric(metric: str, y: np.ndarray, proba: np.ndarray, pred: np.ndarray,
                    weights: np.ndarray) -> np.ndarray:
    """``metric`` for each row of ``weights`` (B, N): a resample given as how often each row
    was drawn (``group_resamples``). Balanced accuracy is the mean recall over the classes
    present in the resample; AUC and pAUC score ``proba[:, 1]``. NaN where undefined."""
    y = np.asarray(y, dtype=np.int64)
    if metric == "balanced_accuracy":
        k = int(max(y.max(initial=0), np.max(pred, initial=0), proba.shape[1] - 1)) + 1
        onehot = np.eye(k)[y]                                   # (N, k)
        support = weights @ onehot                              # (B, k)
        hits = weights @ (onehot * (pred == y)[:, None])
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            recall = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
            return np.nanmean(recall, axis=1)
    score = np.asarray(proba, np.float64)[:, 1]
    if metric == "auc":
        return _weighted_auc(score, y == 1, weights)
    if metric == "pauc80":
        return _weighted_pauc(score, y == 1, weights)
    raise InputError(f"metric {metric!r}: use one of {', '.join(COMPARE_METRICS)}")


def seed_mean(metric: str, y: np.ndarray, proba: np.ndarray, pred: np.ndarray,
              weights: np.ndarray) -> np.ndarray:
    """The metric of each resample, averaged over seeds: ``proba`` (S, N, K), ``pred`` (S, N)
    hold each seed's out-of-fold predictions of the same N rows."""
    per_seed = [weighted_metric(metric, y, proba[s], pred[s], weights) for s in range(len(pred))]
    return np.mean(per_seed, axis=0)


def paired_difference(metric: str, y: np.ndarray, groups: np.ndarray | None,
                      a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *,
                      n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05) -> PairedDifference:
    """``metric(b) - metric(a)``: ``a`` and ``b`` are (proba (S, N, K), pred (S, N)) of the
    same N rows (labels ``y``, ``groups`` a lesion / patient id per row; None: rows alone).
    Each resample draws whole groups with replacement and scores both entries on it."""
    y = np.asarray(y, dtype=np.int64)
    pa, da = np.asarray(a[0], np.float64), np.asarray(a[1], np.int64)
    pb, db = np.asarray(b[0], np.float64), np.asarray(b[1], np.int64)
    if pa.shape != pb.shape or da.shape != db.shape or da.shape[-1] != len(y):
        raise InputError(f"paired entries must score the same rows: {pa.shape} vs {pb.shape}")
    full = np.ones((1, len(y)))
    estimate = float(seed_mean(metric, y, pb, db, full)[0] - seed_mean(metric, y, pa, da, full)[0])
    draws = []
    for weights in group_resamples(len(y), groups, n_boot, seed):
        draws.append(seed_mean(metric, y, pb, db, weights) - seed_mean(metric, y, pa, da, weights))
    d = np.concatenate(draws) if draws else np.empty(0)
    d = d[np.isfinite(d)]
    if not len(d):
        return PairedDifference(estimate, math.nan, math.nan, math.nan, 0, alpha)
    low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    below, above = (np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)
    p = float(min(1.0, 2 * min(below, above)))
    return PairedDifference(estimate, float(low), float(high), p, int(len(d)), alpha)
