"""Pure metric functions: arrays in, plain dicts of floats out (straight to JSON)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc")
# A binary task leads with ROC AUC and pAUC, then sensitivity at fixed specificities and the
# balanced accuracy at the threshold chosen on validation.
SPECIFICITIES = (0.80, 0.90, 0.95)
# pAUC above 80 % TPR is the ISIC 2024 challenge's metric (0 to 0.2).
PAUC_MIN_TPR = 0.80
BINARY_HEADLINE = ("auc", "pauc80", "balanced_accuracy",
                   *(f"sensitivity_at_{round(100 * s)}_specificity" for s in SPECIFICITIES),
                   "accuracy", "macro_f1")


def headline(n_classes: int) -> tuple[str, ...]:
    """The metrics every report leads with, for a task with ``n_classes`` classes."""
    return BINARY_HEADLINE if n_classes == 2 else HEADLINE


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sensitivity_at_specificity(y_true: np.ndarray, score: np.ndarray,
                               specificity: float) -> float | None:
    """Share of positives caught at the strictest threshold that keeps at least
    ``specificity`` of the negatives below it (``None`` without both classes)."""
    pos, neg = score[y_true == 1], np.sort(score[y_true == 0])
    if len(pos) == 0 or len(neg) == 0:
        return None
    # The threshold t with at least `specificity` of the negatives strictly below it.
    k = int(np.ceil(specificity * len(neg)))
    t = neg[k - 1] if k > 0 else -np.inf
    return float((pos > t).mean())


def _weighted_pauc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray,
                   min_tpr: float = PAUC_MIN_TPR) -> np.ndarray:
    """Area under the ROC curve where TPR >= ``min_tpr``, for each row of ``weights`` (B, N):
    the integral of (1 - FPR) over TPR from ``min_tpr`` to 1, along the ROC with tied scores as
    one diagonal step (as sklearn draws it). That is the ISIC 2024 score: the challenge flips
    labels and scores and takes sklearn's partial AUC up to FPR 1 - min_tpr, de-McClished, which
    is this same area seen with the axes swapped. NaN where a resample lacks a side."""
    order = np.argsort(-scores, kind="mergesort")                # highest score first
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    zero = np.zeros((len(w), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate([zero, np.cumsum(pos, 1)], 1) / pos.sum(1, keepdims=True)
        fpr = np.concatenate([zero, np.cumsum(neg, 1)], 1) / neg.sum(1, keepdims=True)
        t0, t1, f0, f1 = tpr[:, :-1], tpr[:, 1:], fpr[:, :-1], fpr[:, 1:]
        a, b = np.clip(t0, min_tpr, None), np.clip(t1, min_tpr, None)   # the part above the floor
        slope = np.where(t1 > t0, (f1 - f0) / np.where(t1 > t0, t1 - t0, 1), 0)
        fa, fb = f0 + slope * (a - t0), f0 + slope * (b - t0)
        area = ((b - a) * (1 - (fa + fb) / 2)).sum(1)
    return np.where(np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1]), area, np.nan)


def partial_auc(y_true: np.ndarray, score: np.ndarray, min_tpr: float = PAUC_MIN_TPR,
                sample_weight: np.ndarray | None = None) -> float | None:
    """pAUC above ``min_tpr`` TPR, ISIC 2024's metric (0 to 1 - min_tpr; a random score gets
    (1 - min_tpr)^2 / 2, 0.02 at 0.8); ``None`` without both classes."""
    y = np.asarray(y_true) == 1
    if not 0 < y.sum() < len(y):
        return None
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return float(_weighted_pauc(np.asarray(score, np.float64), y, w[None], min_tpr)[0])


def binary_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float | None) -> dict:
    """ROC AUC of the positive class (index 1), pAUC above 80 % TPR and sensitivity at fixed
    specificities."""
    score = proba[:, 1]
    both = 0 < (y_true == 1).sum() < len(y_true)
    out = {"auc": float(roc_auc_score(y_true == 1, score)) if both else None,
           "pauc80": partial_auc(y_true, score), "threshold": threshold}
    for s in SPECIFICITIES:
        out[f"sensitivity_at_{round(100 * s)}_specificity"] = \
            sensitivity_at_specificity(y_true, score, s)
    return out


def classification_metrics(y_true: np.ndarray, proba: np.ndarray,
                           classes: Sequence[str], y_pred: np.ndarray | None = None,
                           threshold: float | None = None) -> dict:
    """Accuracy, balanced accuracy, macro / weighted F1, per-class P/R/F1/AUC, confusion matrix.

    Averages run over the classes present in ``y_true`` (sklearn's behaviour for balanced
    accuracy); a class absent from ``y_true`` gets ``null`` recall and AUC. ``y_pred`` defaults
    to the argmax of ``proba`` (give it when decisions follow another rule, e.g.
    ``Calibrator.predict``), or with two classes and a ``threshold`` (on the probability of
    class 1), to that threshold's decisions; AUC and ECE always come from ``proba``. With two
    classes, also ROC AUC and sensitivity at fixed specificities.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(classes)
    if y_pred is None:
        y_pred = (proba[:, 1] >= threshold).astype(np.int64) if k == 2 and threshold is not None \
            else proba.argmax(axis=1)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = np.arange(k)
    present = np.unique(y_true)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = {}
    for c in range(k):
        pos = y_true == c
        aucs[c] = float(roc_auc_score(pos, proba[:, c])) if 0 < pos.sum() < len(pos) else None
    per_class = {classes[c]: {"precision": float(p[c]), "recall": float(r[c]) if s[c] else None,
                              "f1": float(f[c]), "support": int(s[c]), "auc": aucs[c]}
                 for c in range(k)}
    valid_auc = [a for a in aucs.values() if a is not None]
    extra = binary_metrics(y_true, proba, threshold) if k == 2 else {}
    return {**extra,
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean([(y_pred[y_true == c] == c).mean() for c in present])),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro",
                                   zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted",
                                      zero_division=0)),
        "macro_auc": float(np.mean(valid_auc)) if valid_auc else None,
        "ece": expected_calibration_error(y_true, proba),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def majority_baseline(y_train: np.ndarray, y_true: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics of always predicting the most frequent training class (66.95 % on HAM10000)."""
    major = int(np.bincount(np.asarray(y_train), minlength=len(classes)).argmax())
    proba = np.zeros((len(y_true), len(classes)))
    proba[:, major] = 1.0
    out = classification_metrics(y_true, proba, classes)
    out["predicts"] = classes[major]
    return out


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> dict:
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    acc = [float(correct[idx == b].mean()) if (idx == b).any() else math.nan for b in range(n_bins)]
    cnf = [float(conf[idx == b].mean()) if (idx == b).any() else math.nan for b in range(n_bins)]
    return {"edges": edges.tolist(), "accuracy": acc, "confidence": cnf}


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of ``scores`` for each row of ``weights`` (B, N): a resample given as
    how often each original row was drawn. Mann-Whitney with tied scores counted half, which is
    sklearn's roc_auc_score on the expanded resample; NaN where a resample lacks a side."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])       # groups of tied scores
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)


def bootstrap_ci(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 groups: np.ndarray | None = None, chunk: int = 100,
                 y_pred: np.ndarray | None = None) -> dict:
    """Percentile bootstrap (1 - alpha) intervals of the headline metrics.

    ``groups`` (a lesion or patient id per row) resamples whole groups, the cluster bootstrap:
    images of one lesion are not independent, and resampling images makes the intervals too
    narrow on a lesion-level split. Without ``groups`` it resamples rows. Intervals are given for
    accuracy, balanced accuracy, macro F1, macro one-vs-rest AUC and, for two classes, the AUC
    and pAUC above 80 % TPR.
    Each resample is a vector of draw counts per row, so its confusion matrix is one weighted
    bincount and its AUCs one sort per class: the same numbers as sklearn's functions on the
    expanded resample, at a fraction of the cost.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    k, n = len(classes), len(y_true)
    cells = y_true * k + y_pred
    draws: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "macro_f1": [],
                                     "macro_auc": []}
    binary = k == 2
    if binary:
        draws["auc"], draws["pauc80"] = [], []
    aucs_for = [c for c in range(k) if 0 < (y_true == c).sum() < n]
    for weights in group_resamples(n, groups, n_boot, seed, chunk):
        size = len(weights)
        for w in weights:
            cm = np.bincount(cells, weights=w, minlength=k * k).reshape(k, k)
            tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
            present = support > 0
            f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k),
                           where=support + predicted > 0)
            draws["accuracy"].append(float(tp.sum() / w.sum()))
            draws["balanced_accuracy"].append(float((tp[present] / support[present]).mean()))
            draws["macro_f1"].append(float(f1[present].mean()))
        per_class = np.stack([_weighted_auc(proba[:, c], y_true == c, weights)
                              for c in aucs_for], 1) if aucs_for else np.full((size, 1), np.nan)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)          # a resample with no class
            draws["macro_auc"] += np.nanmean(per_class, 1).tolist()
        if binary:
            draws["auc"] += _weighted_auc(proba[:, 1], y_true == 1, weights).tolist()
            draws["pauc80"] += _weighted_pauc(proba[:, 1], y_true == 1, weights).tolist()
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    out = {}
    for name, drawn in draws.items():
        v = np.asarray(drawn, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = [float(np.percentile(v, q[0])), float(np.percentile(v, q[1]))] if len(v) \
            else None
    return out


def group_resamples(n: int, groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                    chunk: int = 100) -> Iterator[np.ndarray]:
    """The resamples of ``bootstrap_ci``, ``chunk`` at a time: (size, n) arrays of how often each
    row was drawn, whole groups at a time (rows alone without ``groups``). Callers that need
    several statistics of one resample (subgroup tables, paired gaps) read the same draws."""
    from ..progress import counter  # stdlib only: metrics stays numpy and sklearn

    rng = np.random.default_rng(seed)
    codes = np.arange(n) if groups is None else pd_codes(groups)
    n_groups = int(codes.max()) + 1 if n else 0
    with counter(n_boot, "bootstrap") as bar:   # a bar (from the command line) per resample
        for first in range(0, n_boot, chunk):
            size = min(chunk, n_boot - first)
            picked = rng.integers(0, n_groups, (size, n_groups))
            per_group = np.stack([np.bincount(row, minlength=n_groups) for row in picked])
            yield per_group[:, codes].astype(np.float64)
            bar.update(size)


def pd_codes(groups: np.ndarray) -> np.ndarray:
    """Group ids -> 0..G-1 in order of first appearance (so distinct ids per row give 0..N-1)."""
    _, first, inverse = np.unique(np.asarray(groups, dtype=object).astype(str),
                                  return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.ravel()]


def classwise_calibration(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                          n_bins: int = 15) -> dict:
    """Per class: one-vs-rest ECE of p(class) (equal-width bins), mean predicted probability and
    prevalence; plus their means over classes. A prior shift shows as mean probability far from
    prevalence (balanced class weights push rare classes up), which top-label ECE hides."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    per_class = {}
    for c, name in enumerate(classes):
        p, hit = proba[:, c], (y_true == c).astype(np.float64)
        idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
        counts = np.bincount(idx, minlength=n_bins)
        gap = np.abs(np.bincount(idx, hit, n_bins) - np.bincount(idx, p, n_bins))
        per_class[name] = {"ece": float(gap.sum() / max(len(p), 1)),
                           "mean_proba": float(p.mean()) if len(p) else math.nan,
                           "prevalence": float(hit.mean()) if len(p) else math.nan,
                           "n_bins_used": int((counts > 0).sum())}
    eces = [v["ece"] for v in per_class.values()]
    ratio = [v["mean_proba"] / v["prevalence"] for v in per_class.values() if v["prevalence"] > 0]
    # a present class given probability 0 throughout (underflow) is off by an unbounded factor
    worst = (max(max(ratio), 1 / min(ratio)) if min(ratio) > 0 else math.inf) if ratio \
        else math.nan
    return {"per_class": per_class, "classwise_ece": float(np.mean(eces)),
            "max_prior_ratio": float(worst)}


def calibrated_metrics(y_true: np.ndarray, logits: np.ndarray, proba: np.ndarray,
                       classes: Sequence[str], y_pred: np.ndarray) -> dict:
    """``classification_metrics`` of a model's calibrated probabilities and decisions, plus
    calibration before and after (top-label ECE of the raw softmax, class-wise both ways)."""
    raw = softmax(logits)
    metrics = classification_metrics(y_true, proba, classes, y_pred=y_pred)
    metrics["ece_uncalibrated"] = expected_calibration_error(y_true, raw)
    metrics["classwise_calibration"] = classwise_calibration(y_true, proba, classes)
    metrics["classwise_calibration_uncalibrated"] = classwise_calibration(y_true, raw, classes)
    return metrics


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else \
        (math.nan, math.nan)
