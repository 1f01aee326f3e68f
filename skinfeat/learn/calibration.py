"""Calibration of the head's logits, fitted on the validation split and stored in the bundle.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) is one
scalar T: softmax(logits / T). It cannot undo a prior shift: balanced class weights train the
head towards p(c | x) * w_c / Z, so rare classes (df, vasc) are over-predicted several times
over, and one T fitted at natural prevalence only trades their over-confidence against nv's.
``Calibrator`` therefore offers

- ``temperature``: T only (the reference-era behaviour);
- ``logit_adjust``: subtract log w_c (the training class weights) to restore the natural prior
  (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021), then fit T;
- ``bias_temperature``: softmax(logits / T + b), T and a per-class bias b fitted together on the
  validation NLL (vector scaling with one shared scale; Guo et al. 2017, Alexandari et al.,
  "Maximum Likelihood with Bias-Corrected Calibration is Hard-To-Beat at Label Shift
  Adaptation", ICML 2020).

The default, ``logit_adjust``, was chosen on held-out folds of real HAM10000 embeddings
(``benchmarks/missing_metadata.py --study calibration``): it and ``bias_temperature`` both cut the
class-wise ECE about tenfold (0.072 -> 0.007) and bring every class's mean predicted probability
to within 1.13x (bias: 1.22x) of its prevalence (temperature alone: df 7.5x), with one fitted
parameter instead of K + 1. Without class weights it is temperature scaling.

Every method is a monotone map of each logit plus per-class offsets: ``temperature`` never moves
the argmax; the other two do, towards the natural prior (more nv), which is what calibrated
probabilities mean but not what balanced accuracy rewards. ``predict`` therefore decides with
the balanced rule, argmax p(c | x) / prior(c): the probabilities say how likely each class is,
the decision is the one that a class-balanced metric scores (the prior comes from the training
class weights, w_c ~ 1 / prior(c), so the rule is argmax of the calibrated logits + log w_c).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from ..errors import InputError

METHODS = ("temperature", "logit_adjust", "bias_temperature")
T_BOUNDS = (0.05, 20.0)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    log_p = _log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises validation NLL (1.0 when there is nothing to fit)."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or not np.isfinite(logits).all():
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))),
                          bounds=tuple(np.log(T_BOUNDS)), method="bounded")
    return float(np.exp(res.x)) if res.success else 1.0


def _fit_bias_temperature(logits: np.ndarray, y: np.ndarray,
                          ridge: float = 1e-3) -> tuple[float, np.ndarray]:
    """T and b minimising NLL(softmax(z / T + b)) + ridge * |b|^2 (the ridge only pins the
    constant that softmax ignores and keeps a class absent from ``y`` finite)."""
    z = np.asarray(logits, np.float64)
    n, k = z.shape
    onehot = np.eye(k)[y]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, b = params[0], params[1:]
        t = np.exp(log_t)
        log_p = _log_softmax(z / t + b)
        p = np.exp(log_p)
        value = -log_p[np.arange(n), y].mean() + ridge * (b @ b)
        resid = (p - onehot) / n                         # d loss / d (z / T + b)
        grad_b = resid.sum(0) + 2 * ridge * b
        grad_log_t = float((resid * (-z / t)).sum())
        return float(value), np.concatenate([[grad_log_t], grad_b])

    start = np.concatenate([[np.log(fit_temperature(z, y))], np.zeros(k)])
    bounds = [tuple(np.log(T_BOUNDS))] + [(-20.0, 20.0)] * k
    res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    params = res.x if np.isfinite(res.fun) else start
    return float(np.exp(params[0])), params[1:] - params[1:].mean()


class Calibrator:
    """``fit(val_logits, val_y, class_weights)`` then ``calibrator(logits) -> probabilities``."""

    def __init__(self, method: str = "logit_adjust"):
        if method not in METHODS:
            raise InputError(f"calibration method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.temperature = 1.0
        self.adjust: list[float] | None = None   # subtracted from the logits before T
        self.bias: list[float] | None = None     # added after T
        self.decision_offset: list[float] | None = None  # log w_c: the balanced decision rule

    def fit(self, logits: np.ndarray, y: np.ndarray,
            class_weights: np.ndarray | Sequence[float] | None = None) -> Calibrator:
        logits = np.asarray(logits, np.float64)
        y = np.asarray(y, dtype=np.int64)
        k = logits.shape[1]
        self.adjust, self.bias, self.decision_offset = None, None, None
        if class_weights is not None and self.method != "temperature":
            w = np.asarray(class_weights, np.float64)
            # A class absent from training has weight 0: leave its logit alone.
            log_w = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0).tolist()
            self.decision_offset = log_w
            if self.method == "logit_adjust":
                self.adjust = log_w
        if len(y) == 0 or not np.isfinite(logits).all():
            self.temperature = 1.0
            return self
        if self.method == "bias_temperature":
            self.temperature, bias = _fit_bias_temperature(logits, y)
            self.bias = bias.tolist()
        else:
            self.temperature = fit_temperature(self._adjusted(logits, k), y)
        return self

    def _adjusted(self, logits: np.ndarray, k: int) -> np.ndarray:
        return logits - np.asarray(self.adjust) if self.adjust is not None else logits

    def logits(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits: their softmax is the calibrated probability."""
        z = np.asarray(logits, np.float64)
        z = self._adjusted(z, z.shape[1]) / self.temperature
        return z + np.asarray(self.bias) if self.bias is not None else z

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return np.exp(_log_softmax(self.logits(logits)))

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Class indices by the balanced decision rule (see the module docstring)."""
        z = self.logits(logits)
        return (z + np.asarray(self.decision_offset) if self.decision_offset is not None
                else z).argmax(1)

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """The model's decisions from its calibrated probabilities: with two classes and a
        ``threshold`` (chosen on validation), p(class 1) >= threshold; otherwise the balanced
        rule of ``predict``, argmax p(c | x) * w_c (the same class: the calibrated logits and
        log p differ by a constant per row)."""
        proba = np.asarray(proba, np.float64)
        if threshold is not None and proba.shape[1] == 2:
            return (proba[:, 1] >= threshold).astype(np.int64)
        with np.errstate(divide="ignore"):
            score = np.log(proba)
        return (score + np.asarray(self.decision_offset) if self.decision_offset is not None
                else score).argmax(1)

    def to_dict(self) -> dict:
        return {"method": self.method, "temperature": self.temperature, "adjust": self.adjust,
                "bias": self.bias, "decision_offset": self.decision_offset}

    @classmethod
    def from_dict(cls, state: object, n_classes: int | None = None,
                  key: str = "calibration") -> Calibrator:
        """From ``to_dict`` (an older bundle's bare ``temperature`` was made such a table by
        ``deploy.bundle_config.migrate``).

        Every value is checked, since a bundle's config.json may have been edited: a temperature
        of 0 or a NaN bias would make every probability NaN. With ``n_classes``, the vectors must
        have that length. Errors name the key under ``key``."""
        def bad(where: str, why: str, value: object) -> InputError:
            text = repr(value)
            return InputError(f"key '{key}{where}': invalid calibration state: {why}, got "
                              f"{text if len(text) <= 40 else text[:37] + '...'}")

        def finite(value: object) -> TypeGuard[int | float]:
            return isinstance(value, (int, float)) and not isinstance(value, bool) \
                and bool(np.isfinite(value))

        if not isinstance(state, dict):
            raise bad("", "expected a table (method, temperature, ...)", state)
        known = ("method", "temperature", "adjust", "bias", "decision_offset")   # to_dict's
        unknown = sorted(str(k) for k in state if k not in known)
        if unknown:   # strict, as every typed schema: a misspelt key is an error, not a default
            raise bad(f".{unknown[0]}", f"unknown key (expected {', '.join(known)})", unknown)
        if state.get("method") not in METHODS:
            raise bad(".method", f"calibration method must be one of {METHODS}",
                      state.get("method"))
        cal = cls(state["method"])
        given = state.get("temperature")
        if not finite(given) or given <= 0:
            raise bad(".temperature", "temperature must be a positive number", given)
        cal.temperature = float(given)
        for name in ("adjust", "bias", "decision_offset"):
            v = state.get(name)
            if v is None:
                continue
            if not isinstance(v, list) or not all(map(finite, v)) or not v \
                    or (n_classes is not None and len(v) != n_classes):
                size = f"{n_classes} " if n_classes is not None else ""
                raise bad(f".{name}", f"expected a list of {size}finite numbers (one per "
                          "class) or null", v)
            setattr(cal, name, [float(x) for x in v])
        return cal

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature scaling (T = {self.temperature:.3f})"
        if self.method == "logit_adjust":
            return (f"logit adjustment by the training class weights, then temperature "
                    f"(T = {self.temperature:.3f})")
        return f"per-class bias + temperature fitted on validation NLL (T = {self.temperature:.3f})"
