"""Metric values computed by hand, and the fast bootstrap against sklearn's functions."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from skinfeat.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    majority_baseline,
)

CLASSES = ["a", "b", "c"]


def onehot(pred, k=3):
    p = np.zeros((len(pred), k))
    p[np.arange(len(pred)), pred] = 1.0
    return p


def test_hand_computed_values():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    m = classification_metrics(y, onehot(pred), CLASSES)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # recalls 3/4, 1/2, 1 -> balanced accuracy 0.75
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # F1: a = 2*3/(4+4) = .75, b = 2*1/(2+2) = .5, c = 1 -> macro .75
    assert m["macro_f1"] == pytest.approx(0.75)
    assert m["weighted_f1"] == pytest.approx((4 * 0.75 + 2 * 0.5 + 2 * 1.0) / 8)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)


def test_majority_baseline_is_the_reference_floor():
    y_train = np.array([1] * 67 + [0] * 33)
    y_test = np.array([1] * 6 + [0] * 3 + [2])
    b = majority_baseline(y_train, y_test, CLASSES)
    assert b["predicts"] == "b" and b["accuracy"] == pytest.approx(0.6)
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)


def test_ece_by_hand():
    # Two bins used: confidence .9 (both right: gap .1) and .6 (one of two right: gap .1).
    proba = np.array([[0.9, 0.1, 0], [0.9, 0.1, 0], [0.6, 0.4, 0], [0.4, 0.6, 0]])
    y = np.array([0, 0, 0, 0])
    assert expected_calibration_error(y, proba) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)


def test_bootstrap_matches_sklearn_on_the_same_draws():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    proba = rng.random((120, 3))
    proba[np.arange(120), y] += rng.random(120)
    ci = bootstrap_ci(y, proba, CLASSES, n_boot=200, seed=5)
    draws = np.random.default_rng(5)
    pred = proba.argmax(1)
    bal, f1 = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(200):
            i = draws.integers(0, 120, 120)
            bal.append(balanced_accuracy_score(y[i], pred[i]))
            f1.append(f1_score(y[i], pred[i], labels=np.unique(y[i]), average="macro",
                               zero_division=0))
    assert ci["balanced_accuracy"] == pytest.approx(list(np.percentile(bal, [2.5, 97.5])))
    assert ci["macro_f1"] == pytest.approx(list(np.percentile(f1, [2.5, 97.5])))


def test_auc_intervals_match_sklearn_on_the_same_resamples():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    proba = rng.random((90, 3))
    proba[np.arange(90), y] += 0.5 * rng.random(90)
    proba = np.round(proba, 1)  # ties, counted half as sklearn does
    ci = bootstrap_ci(y, proba, CLASSES, n_boot=100, seed=3)
    draws = np.random.default_rng(3).integers(0, 90, (100, 90))
    macro = [np.mean([roc_auc_score(y[i] == c, proba[i, c]) for c in range(3)]) for i in draws]
    assert ci["macro_auc"] == pytest.approx(list(np.percentile(macro, [2.5, 97.5])))
    assert "auc" not in ci
    yb = (y == 0).astype(int)
    pb = np.c_[1 - proba[:, 0], proba[:, 0]]
    binary = bootstrap_ci(yb, pb, ["rest", "a"], n_boot=100, seed=3)
    auc = [roc_auc_score(yb[i], pb[i, 1]) for i in draws]
    assert binary["auc"] == pytest.approx(list(np.percentile(auc, [2.5, 97.5])))


def test_one_group_per_row_is_the_row_bootstrap():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    proba = rng.random((60, 3))
    rows = bootstrap_ci(y, proba, CLASSES, n_boot=300, seed=1)
    groups = bootstrap_ci(y, proba, CLASSES, n_boot=300, seed=1,
                          groups=np.array([f"L{i}" for i in range(60)]))
    assert rows == groups


def test_duplicated_images_widen_the_group_interval():
    # 40 lesions, each photographed 5 times with the very same outcome: the image bootstrap
    # treats 200 images as independent, the lesion bootstrap knows there are only 40 draws.
    rng = np.random.default_rng(5)
    y1 = rng.integers(0, 3, 40)
    right = rng.random(40) < 0.6
    pred1 = np.where(right, y1, (y1 + 1) % 3)
    y, pred = np.repeat(y1, 5), np.repeat(pred1, 5)
    lesions = np.repeat(np.arange(40), 5)
    by_image = bootstrap_ci(y, onehot(pred), CLASSES, n_boot=2000, seed=0)
    by_lesion = bootstrap_ci(y, onehot(pred), CLASSES, n_boot=2000, seed=0, groups=lesions)
    # Width scales with 1 / sqrt(draws): about sqrt(5) = 2.2 times wider.
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        w_img = by_image[k][1] - by_image[k][0]
        w_les = by_lesion[k][1] - by_lesion[k][0]
        assert 1.7 < w_les / w_img < 2.8, (k, w_les / w_img)
    # ... and equals the bootstrap of the 40 distinct lesions, resampled as rows.
    assert by_lesion["accuracy"] == pytest.approx(
        bootstrap_ci(y1, onehot(pred1), CLASSES, n_boot=2000, seed=0)["accuracy"])


def test_classwise_calibration_by_hand():
    from skinfeat.evaluate.metrics import classwise_calibration
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    cw = classwise_calibration(y, proba, ["a", "b"], n_bins=2)
    # class a: bin (0, .5]: p .2 (y 0) -> gap .2; bin (.5, 1]: p .9 .7 .6, hits 1 1 0 -> 2.2 - 2
    assert cw["per_class"]["a"]["ece"] == pytest.approx((0.2 + 0.2) / 4)
    assert cw["per_class"]["a"]["mean_proba"] == pytest.approx(0.6)
    assert cw["per_class"]["a"]["prevalence"] == pytest.approx(0.5)
    assert cw["max_prior_ratio"] == pytest.approx(0.5 / 0.4)  # class b: .4 vs .5
