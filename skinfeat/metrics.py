"""Pure metric functions: arrays in, plain dicts of floats out (straight to JSON)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc")
# A binary task leads with ROC AUC, then sensitivity at fixed specificities and the balanced
# accuracy at the threshold chosen on validation.
SPECIFICITIES = (0.80, 0.90, 0.95)
BINARY_HEADLINE = ("auc", "balanced_accuracy", *(f"sensitivity_at_{round(100 * s)}_specificity"
                                                 for s in SPECIFICITIES), "accuracy", "macro_f1")


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


def binary_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float | None) -> dict:
    """ROC AUC of the positive class (index 1) and sensitivity at fixed specificities."""
    score = proba[:, 1]
    both = 0 < (y_true == 1).sum() < len(y_true)
    out = {"auc": float(roc_auc_score(y_true == 1, score)) if both else None,
           "threshold": threshold}
    for s in SPECIFICITIES:
        out[f"sensitivity_at_{round(100 * s)}_specificity"] = \
            sensitivity_at_specificity(y_true, score, s)
    return out


def classification_metrics(y_true: np.ndarray, proba: np.ndarray,
                           classes: Sequence[str], threshold: float | None = None) -> dict:
    """Accuracy, balanced accuracy, macro / weighted F1, per-class P/R/F1/AUC, confusion matrix.

    Averages run over the classes present in ``y_true`` (sklearn's behaviour for balanced
    accuracy); a class absent from ``y_true`` gets ``null`` recall and AUC. With two classes,
    also ROC AUC and sensitivity at fixed specificities; ``threshold`` (on the probability of
    class 1) then decides the predicted class instead of the argmax.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(classes)
    y_pred = (proba[:, 1] >= threshold).astype(np.int64) if k == 2 and threshold is not None \
        else proba.argmax(axis=1)
    labels = np.arange(k)
    present = np.unique(y_true)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = {}
    for c in labels:
        pos = y_true == c
        aucs[c] = float(roc_auc_score(pos, proba[:, c])) if 0 < pos.sum() < len(pos) else None
    per_class = {classes[c]: {"precision": float(p[c]), "recall": float(r[c]) if s[c] else None,
                              "f1": float(f[c]), "support": int(s[c]), "auc": aucs[c]}
                 for c in labels}
    valid_auc = [a for a in aucs.values() if a is not None]
    extra = binary_metrics(y_true, proba, threshold) if k == 2 else {}
    return {**extra,
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean([(y_pred[y_true == c] == c).mean() for c in present])),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
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
    for lo, hi in zip(edges[:-1], edges[1:]):
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


def bootstrap_ci(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap (1 - alpha) intervals of the headline metrics, resampling rows.

    Each resample's metrics come from its confusion matrix (one bincount), which gives the same
    numbers as sklearn's functions (averages over the classes present in the resample) at a
    fraction of the cost: 1,000 sklearn calls took over a second of every fit-head.
    """
    rng = np.random.default_rng(seed)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(proba).argmax(1)
    k = len(classes)
    draws: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "macro_f1": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(y_true), len(y_true))
        cm = np.bincount(y_true[i] * k + y_pred[i], minlength=k * k).reshape(k, k)
        tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
        present = support > 0
        f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
        draws["accuracy"].append(float(tp.sum() / len(i)))
        draws["balanced_accuracy"].append(float((tp[present] / support[present]).mean()))
        draws["macro_f1"].append(float(f1[present].mean()))
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    return {k: [float(np.percentile(v, q[0])), float(np.percentile(v, q[1]))]
            for k, v in draws.items()}


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else \
        (math.nan, math.nan)
