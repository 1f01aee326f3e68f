"""Calibration that survives class weights: the prior-correcting calibrators on a shifted model."""
from __future__ import annotations

import numpy as np
import pytest

from skinfeat.evaluate.metrics import classwise_calibration, softmax
from skinfeat.learn.calibration import Calibrator, fit_temperature


def prior_shifted(n: int, seed: int):
    """A well-calibrated 3-class model at prevalence (.8, .15, .05), its logits shifted by the
    log balanced class weights (what class-weighted training does) and made over-confident."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.8, 0.15, 0.05])
    y = rng.choice(3, n, p=prior)
    true_logits = np.log(prior) + 1.5 * np.eye(3)[y] + rng.normal(0, 1, (n, 3))
    weights = 1.0 / (3 * prior)
    return 2.0 * (true_logits + np.log(weights)), y, weights


@pytest.mark.parametrize("method", ["logit_adjust", "bias_temperature"])
def test_prior_correction_beats_temperature_alone(method):
    val_logits, val_y, w = prior_shifted(3000, 0)
    test_logits, test_y, _ = prior_shifted(6000, 1)
    classes = ["a", "b", "c"]
    temp = Calibrator("temperature").fit(val_logits, val_y, w)
    fixed = Calibrator(method).fit(val_logits, val_y, w)
    before = classwise_calibration(test_y, temp(test_logits), classes)
    after = classwise_calibration(test_y, fixed(test_logits), classes)
    assert after["classwise_ece"] < 0.6 * before["classwise_ece"]
    assert after["max_prior_ratio"] < 1.35 < 3 < before["max_prior_ratio"]
    assert np.allclose(fixed(test_logits).sum(1), 1.0)


def test_temperature_method_is_fit_temperature():
    logits, y, w = prior_shifted(500, 2)
    cal = Calibrator("temperature").fit(logits, y, w)
    assert cal.temperature == pytest.approx(fit_temperature(logits, y))
    np.testing.assert_allclose(cal(logits), softmax(logits, cal.temperature))


@pytest.mark.parametrize("method", ["temperature", "logit_adjust", "bias_temperature"])
def test_round_trip_and_old_bundles(method):
    from skinfeat.deploy.bundle_config import migrate

    logits, y, w = prior_shifted(400, 3)
    cal = Calibrator(method).fit(logits, y, w)
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(cal(logits), again(logits))
    # a bundle that stored only "temperature": 1.7, upgraded on load (bundle_config.migrate)
    old = Calibrator.from_dict(migrate({"model_type": "head", "temperature": 1.7})["calibration"])
    assert old.method == "temperature" and old.temperature == 1.7
    np.testing.assert_allclose(old(logits), softmax(logits, 1.7))
    with pytest.raises(ValueError, match="calibration method"):
        Calibrator("platt")


def test_nothing_to_fit_is_the_identity():
    cal = Calibrator("bias_temperature").fit(np.zeros((0, 3)), np.zeros(0, int))
    np.testing.assert_allclose(cal(np.array([[1.0, 2.0, 3.0]])), softmax(np.array([[1., 2, 3]])))


def test_predict_keeps_the_balanced_decision():
    val_logits, val_y, w = prior_shifted(3000, 0)
    test_logits, test_y, _ = prior_shifted(6000, 1)
    cal = Calibrator("bias_temperature").fit(val_logits, val_y, w)

    def balanced(pred):
        return np.mean([(pred[test_y == c] == c).mean() for c in range(3)])

    # The calibrated probabilities' argmax is the natural-prior decision (mostly class 0);
    # predict() divides by the prior again, as balanced accuracy asks.
    assert balanced(cal.predict(test_logits)) > balanced(cal(test_logits).argmax(1)) + 0.05
    assert abs(balanced(cal.predict(test_logits)) - balanced(test_logits.argmax(1))) < 0.02
    assert Calibrator("temperature").fit(val_logits, val_y, w).decision_offset is None


def test_a_present_class_given_probability_zero_has_an_unbounded_prior_ratio():
    """A subgroup where the model gives a present class exactly 0 (underflow: the default
    ensemble's geometric mean on separable rows) raised ZeroDivisionError in fit-head's
    subgroup tables before."""
    y = np.array([0, 1, 1, 0])
    proba = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = classwise_calibration(y, proba, ["a", "b"])
    assert out["max_prior_ratio"] == np.inf and np.isfinite(out["classwise_ece"])
