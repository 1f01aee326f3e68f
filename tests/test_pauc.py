"""pAUC above 80 % TPR (ISIC 2024's metric): hand-computed ROC areas, the challenge's own
formula, and its place in the metrics and the group bootstrap."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinfeat.evaluate.metrics import bootstrap_ci, classification_metrics, headline, partial_auc


def challenge_pauc(y, score, min_tpr=0.8):
    """The ISIC 2024 scoring code: labels and scores flipped, sklearn's McClish-standardised
    partial AUC up to FPR 1 - min_tpr, mapped back to the raw area."""
    max_fpr = 1 - min_tpr
    scaled = roc_auc_score(1 - np.asarray(y), -np.asarray(score), max_fpr=max_fpr)
    return 0.5 * max_fpr ** 2 + (max_fpr - 0.5 * max_fpr ** 2) / 0.5 * (scaled - 0.5)


def test_a_hand_computed_roc():
    # Scores high to low: P P N P P N P N N (5 positives, 4 negatives). The ROC walks
    # (0,0) (0,.2) (0,.4) (.25,.4) (.25,.6) (.25,.8) (.5,.8) (.5,1) (.75,1) (1,1): the last
    # fifth of the positives (TPR .8 -> 1) is reached at FPR .5, so the strip above TPR .8 is
    # .2 high and 1 - .5 wide: 0.1.
    y = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0])
    score = np.linspace(0.9, 0.1, 9)
    assert partial_auc(y, score) == pytest.approx(0.1)
    assert challenge_pauc(y, score) == pytest.approx(0.1)


def test_a_tie_across_the_floor_is_one_diagonal_step():
    # P .9, P .8, P .7, then P P N tied at .6, then N N N. The ROC climbs to (0,.6), then the tie
    # is one straight step to (.25, 1). Above TPR .8 it runs from FPR .125 to .25, so the area is
    # .2 * (1 - (.125 + .25) / 2) = 0.1625.
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    score = np.array([.9, .8, .7, .6, .6, .6, .5, .4, .3])
    assert partial_auc(y, score) == pytest.approx(0.1625)
    assert challenge_pauc(y, score) == pytest.approx(0.1625)


def test_range_and_the_challenge_formula_on_random_sets():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.1).astype(int)
    assert partial_auc(y, y.astype(float)) == pytest.approx(0.2)        # perfect
    assert partial_auc(y, -y.astype(float)) == pytest.approx(0.0)       # reversed
    assert partial_auc(y, np.zeros(300)) == pytest.approx(0.02)         # one tie: the diagonal
    for seed in range(30):
        r = np.random.default_rng(seed)
        n = int(r.integers(8, 200))
        y = (r.random(n) < r.uniform(0.05, 0.5)).astype(int)
        y[:2] = [0, 1]
        score = np.round(r.random(n) + y * r.uniform(0, 1), int(r.integers(1, 3)))  # with ties
        assert partial_auc(y, score) == pytest.approx(challenge_pauc(y, score), abs=1e-12)
        assert partial_auc(y, score, min_tpr=0.0) == pytest.approx(roc_auc_score(y, score))
    assert partial_auc(np.zeros(5), np.arange(5.0)) is None


def test_weights_count_rows():
    y = np.array([1, 0, 1, 0, 0, 1])
    score = np.array([.3, .2, .9, .4, .1, .5])
    w = np.array([2, 1, 1, 3, 1, 2])
    assert partial_auc(y, score, sample_weight=w) == pytest.approx(
        partial_auc(np.repeat(y, w), np.repeat(score, w)))


def test_reported_next_to_roc_auc_with_a_group_bootstrap_interval():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.15).astype(int)
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 400), 0, 1)
    proba = np.c_[1 - p, p]
    keys = headline(2)
    assert keys.index("pauc80") == keys.index("auc") + 1
    assert "pauc80" not in headline(7)
    m = classification_metrics(y, proba, ["benign", "malignant"])
    assert m["pauc80"] == pytest.approx(challenge_pauc(y, p))
    groups = np.repeat(np.arange(100), 4)
    ci = bootstrap_ci(y, proba, ["benign", "malignant"], n_boot=200, seed=0, groups=groups)
    low, high = ci["pauc80"]
    assert 0 <= low < m["pauc80"] < high <= 0.2
    # The same resamples, drawn by hand: group draw counts as row weights.
    draws, rng2 = [], np.random.default_rng(0)
    for _ in range(2):   # bootstrap_ci draws chunks of 100 resamples
        picked = rng2.integers(0, 100, (100, 100))
        for row in picked:
            w = np.bincount(row, minlength=100)[groups]
            draws.append(partial_auc(y, p, sample_weight=w) if 0 < (w * y).sum() < w.sum()
                         else np.nan)
    assert ci["pauc80"] == pytest.approx(list(np.nanpercentile(draws, [2.5, 97.5])))
