"""Who does it fail? Per-subgroup scores with group-bootstrap intervals and the best-worst gap.

For each subgroup field (sex, an age band, the acquisition source, ...) and each of its values
("missing" is a value of its own): images and groups, the headline (balanced accuracy, or ROC
AUC for a binary task), sensitivity per class and class-wise ECE, with a 95 % interval from the
same group bootstrap as the headline metrics (``metrics.group_resamples``). Every subgroup of a
replicate reads the same resampled groups, so the gap between the best and the worst subgroup
is a paired difference with its own interval. Subgroups with fewer than ``min_groups`` groups
are shown, flagged, and never ranked.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from .metrics import _weighted_auc, classwise_calibration, group_resamples, pd_codes

MISSING = "missing"
MIN_GROUPS = 30
FLAG = " \u2020"


@dataclass
class SubgroupRow:
    """One value of one field."""
    value: str
    n_images: int
    n_groups: int
    headline: float | None
    ci95: list[float] | None
    balanced_accuracy: float | None
    sensitivity: dict[str, float | None]
    classwise_ece: float
    flagged: bool                      # fewer than min_groups groups: shown, never ranked


@dataclass
class FieldTable:
    """Every value of one field, and the gap between its best and worst ranked value."""
    field: str
    rows: list[SubgroupRow]
    best: str | None = None
    worst: str | None = None
    gap: float | None = None
    gap_ci95: list[float] | None = None


@dataclass
class SubgroupResult:
    """The subgroup tables of one scored set (``to_dict`` for metrics.json)."""
    metric: str                        # "balanced_accuracy" or "auc"
    classes: list[str]
    group_name: str
    min_groups: int
    n_boot: int
    overall: float | None
    overall_ci95: list[float] | None
    fields: list[FieldTable] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def field(self, name: str) -> FieldTable:
        return next(f for f in self.fields if f.field == name)

    def to_markdown(self, heading: str = "## Subgroups") -> str:
        return "\n".join(markdown_lines(self, heading)) + "\n"


def plot_name(field_name: str) -> str:
    """The forest plot's file name of one field (``subgroups_<field>.png``)."""
    return "subgroups_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in field_name) \
        + ".png"


def value_labels(column: pd.Series) -> np.ndarray:
    """Each row's subgroup value as text; NaN / None / blank is ``missing``."""
    text = column.astype(object).where(column.notna(), None)
    out = np.array([MISSING if v is None or str(v).strip() == "" else str(v) for v in text],
                   dtype=object)
    return out


def _ordered_values(labels: np.ndarray, column: pd.Series) -> list[str]:
    """Band order for banded fields (categorical dtype), else most images first;
    ``missing`` last."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(labels)
        order = [str(c) for c in column.cat.categories if str(c) in present]
    else:
        values, counts = np.unique(labels[labels != MISSING].astype(str), return_counts=True)
        order = [str(v) for v in values[np.argsort(-counts, kind="stable")]]
    return order + ([MISSING] if (labels == MISSING).any() else [])


class _Scorer:
    """The headline of any row subset under any resample weights, vectorised over replicates."""

    def __init__(self, y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray, k: int):
        self.y, self.proba, self.k = y_true, proba, k
        self.onehot = np.zeros((len(y_true), k * k))
        self.onehot[np.arange(len(y_true)), y_true * k + y_pred] = 1.0

    def recalls(self, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(B, k) recall per class (NaN where a class has no image in the resample)."""
        cm = (w[:, rows] @ self.onehot[rows]).reshape(len(w), self.k, self.k)
        support = cm.sum(2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diagonal(cm, axis1=1, axis2=2) / np.where(support > 0, support, np.nan)

    def balanced_accuracy(self, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Mean recall over the classes the subset has (all of its rows): a resample that lacks
        one of them is NaN (left out of the interval) rather than averaged over fewer classes,
        which would move a subgroup whose rare class scores 0 up and out of its own interval."""
        r = self.recalls(w, rows)
        present = np.bincount(self.y[rows], minlength=self.k) > 0
        if not present.any():
            return np.full(len(w), np.nan)
        return r[:, present].mean(1)

    def auc(self, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _weighted_auc(self.proba[rows, 1], self.y[rows] == 1, w[:, rows])

    def headline(self, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.auc(w, rows) if self.k == 2 else self.balanced_accuracy(w, rows)


class _SubsetAUC:
    """ROC AUC of one row subset under any resample weights, with the sort done once: per
    resample, one cumulative sum of the negatives' weights in score order, read at each
    positive's place (ties counted half). Mann-Whitney as ``metrics._weighted_auc`` computes it,
    a few times faster on a large set with few positives (ISIC 2024: 400k rows, 0.1 % positive),
    where the subgroup tables of a cv would otherwise take longer than its fits."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, rows: np.ndarray):
        s, pos = scores[rows], positive[rows]
        neg_order = np.argsort(s[~pos], kind="mergesort")
        self.neg = rows[~pos][neg_order]
        self.pos = rows[pos]
        neg_scores = s[~pos][neg_order]
        # cumulative negative weight strictly below / at most each positive's score
        self.left = np.searchsorted(neg_scores, s[pos], side="left")
        self.right = np.searchsorted(neg_scores, s[pos], side="right")

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """(B,) AUCs of the (B, N) resample weights ``w``; NaN where a side is empty."""
        cum = np.zeros((len(w), len(self.neg) + 1))
        np.cumsum(w[:, self.neg], axis=1, out=cum[:, 1:])
        below, upto = cum[:, self.left], cum[:, self.right]
        wp = w[:, self.pos]
        n_pos, n_neg = wp.sum(1), cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (wp * (below + 0.5 * (upto - below))).sum(1) / (n_pos * n_neg)


class _AllSubsets:
    """The balanced accuracy of many row subsets under the same resample weights at once: one
    sparse product gives every subset's weighted confusion matrix, instead of a dense product
    over a copy of the weights per subset (which cost about as long as the head's training in
    fit-head). The same numbers as ``_Scorer.balanced_accuracy`` (counts are whole numbers;
    classes a subset lacks add exact zeros)."""

    def __init__(self, scorer: _Scorer, subsets: list[np.ndarray]):
        from scipy import sparse

        k, kk = scorer.k, scorer.k * scorer.k
        cells = scorer.onehot.argmax(1)   # each row's (true, predicted) cell
        rows = np.concatenate(subsets)
        cols = np.concatenate([i * kk + cells[r] for i, r in enumerate(subsets)])
        self.matrix = sparse.csc_matrix((np.ones(len(rows)), (rows, cols)),
                                        shape=(len(scorer.y), len(subsets) * kk))
        self.k, self.n = k, len(subsets)
        self.present = np.stack([np.bincount(scorer.y[r], minlength=k) > 0 for r in subsets])

    def balanced_accuracy(self, w: np.ndarray) -> np.ndarray:
        """(subsets, B) balanced accuracies of the (B, N) resample weights ``w``."""
        cm = np.asarray((self.matrix.T @ w.T).T).reshape(len(w), self.n, self.k, self.k)
        support = cm.sum(3)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.diagonal(cm, axis1=2, axis2=3) / np.where(support > 0, support, np.nan)
            scores = np.where(self.present, recall, 0.0).sum(2) / self.present.sum(1)
        return scores.T


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _interval(draws: np.ndarray, alpha: float) -> list[float] | None:
    v = draws[np.isfinite(draws)]
    if len(v) == 0:
        return None
    return [float(np.percentile(v, 100 * alpha / 2)),
            float(np.percentile(v, 100 * (1 - alpha / 2)))]


def subgroup_table(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray,
                   groups: np.ndarray, columns: pd.DataFrame, classes: Sequence[str], *,
                   min_groups: int = MIN_GROUPS, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05, group_name: str = "lesion",
                   chunk: int = 100) -> SubgroupResult:
    """Subgroup tables of calibrated ``proba`` (N, K) and decisions ``y_pred`` for every column
    of ``columns`` (N rows, aligned with ``y_true``; band numeric fields first with
    ``subgroup_fields.band``). ``groups`` are the lesion / patient ids the bootstrap resamples."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n, k = len(y_true), len(classes)
    if not (len(proba) == len(y_pred) == len(groups) == len(columns) == n):
        raise InputError(f"subgroup_table: {n} labels but {len(proba)} probabilities, "
                         f"{len(y_pred)} decisions, {len(groups)} groups, {len(columns)} rows "
                         "of subgroup columns")
    codes = pd_codes(groups)
    scorer = _Scorer(y_true, proba, y_pred, k)
    everything = np.arange(n)
    # Every (field, value) subset, scored under each replicate of one shared set of resamples.
    subsets: list[tuple[str, str, np.ndarray]] = []
    labels_of: dict[str, list[str]] = {}
    for name in columns.columns:
        labels = value_labels(columns[name])
        labels_of[name] = _ordered_values(labels, columns[name])
        subsets += [(name, v, np.flatnonzero(labels == v)) for v in labels_of[name]]
    draws = np.empty((len(subsets) + 1, n_boot))
    done = 0
    all_rows = [everything] + [r for _, _, r in subsets]
    if k == 2:
        aucs = [_SubsetAUC(proba[:, 1], y_true == 1, r) for r in all_rows]
    else:
        every = _AllSubsets(scorer, all_rows)
    for w in group_resamples(n, groups, n_boot, seed, chunk):
        if k == 2:
            for i, auc in enumerate(aucs):
                draws[i, done:done + len(w)] = auc(w)
        else:
            draws[:, done:done + len(w)] = every.balanced_accuracy(w)
        done += len(w)
    ones = np.ones((1, n))
    overall = float(scorer.headline(ones, everything)[0])
    result = SubgroupResult("auc" if k == 2 else "balanced_accuracy", list(classes), group_name,
                            min_groups, n_boot, _finite(overall), _interval(draws[0], alpha))
    at = 1
    for name in columns.columns:
        rows_out, ranked = [], []
        for value in labels_of[name]:
            rows = subsets[at - 1][2]
            point = float(scorer.headline(ones, rows)[0])
            recall = scorer.recalls(ones, rows)[0]
            n_groups = int(len(np.unique(codes[rows])))
            flagged = n_groups < min_groups
            rows_out.append(SubgroupRow(
                value, int(len(rows)), n_groups, _finite(point), _interval(draws[at], alpha),
                _finite(float(scorer.balanced_accuracy(ones, rows)[0])),
                {c: _finite(r) for c, r in zip(classes, recall, strict=False)},
                float(classwise_calibration(y_true[rows], proba[rows], classes)["classwise_ece"]),
                flagged))
            if not flagged and math.isfinite(point):
                ranked.append((point, at, value))
            at += 1
        table = FieldTable(name, rows_out)
        if len(ranked) >= 2:
            (hi, i_hi, best), (lo, i_lo, worst) = max(ranked), min(ranked)
            table.best, table.worst, table.gap = best, worst, hi - lo
            table.gap_ci95 = _interval(draws[i_hi] - draws[i_lo], alpha)
        result.fields.append(table)
    return result


def _fmt(x: float | None, pct: bool) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def markdown_lines(result: SubgroupResult, heading: str) -> list[str]:
    pct = result.metric == "balanced_accuracy"
    label = "balanced accuracy (%)" if pct else "ROC AUC"
    g = result.group_name
    ci = result.overall_ci95
    lines = [heading, "",
             f"{label} per subgroup, 95 % intervals from the {g} bootstrap ({result.n_boot} "
             f"resamples, shared by every subgroup so gaps are paired). Overall: "
             f"{_fmt(result.overall, pct)}"
             + (f" ({_fmt(ci[0], pct)} to {_fmt(ci[1], pct)})" if ci else "") + ". Rows with "
             f"fewer than {result.min_groups} {g}s are flagged (\u2020) and never ranked; "
             "sensitivity in %.", ""]
    for t in result.fields:
        lines += [f"### {t.field}", "",
                  f"| {t.field} | images | {g}s | {label} | 95 % CI | "
                  + " | ".join(f"sens. {c}" for c in result.classes) + " | class-wise ECE |",
                  "|---|---|---|---|---|" + "---|" * len(result.classes) + "---|"]
        for r in t.rows:
            c = f"{_fmt(r.ci95[0], pct)} to {_fmt(r.ci95[1], pct)}" if r.ci95 else "n/a"
            lines.append(f"| {r.value}{FLAG if r.flagged else ''} | {r.n_images} | "
                         f"{r.n_groups} | {_fmt(r.headline, pct)} | {c} | "
                         + " | ".join(_fmt(r.sensitivity[cl], True) for cl in result.classes)
                         + f" | {r.classwise_ece:.3f} |")
        lines.append("")
        if t.gap is None:
            lines.append(f"Gap: not ranked (fewer than two values with {result.min_groups} or "
                         f"more {g}s).")
        else:
            gc = t.gap_ci95
            lines.append(f"Gap best - worst: **{_fmt(t.gap, pct)}** "
                         + (f"({_fmt(gc[0], pct)} to {_fmt(gc[1], pct)})" if gc else "")
                         + f", `{t.best}` - `{t.worst}`"
                         + ("; the interval excludes 0" if gc and (gc[0] > 0 or gc[1] < 0)
                            else "; the interval includes 0") + ".")
        lines += ["", f"![{t.field}]({plot_name(t.field)})", ""]
    return lines
