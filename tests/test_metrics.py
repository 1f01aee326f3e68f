"""Metric values computed by hand, and the fast bootstrap against sklearn's functions."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from skinfeat.metrics import (bootstrap_ci, classification_metrics, expected_calibration_error,
                              majority_baseline)

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
