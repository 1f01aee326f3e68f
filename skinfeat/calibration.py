"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One scalar T, fitted on the validation split by minimising the negative log-likelihood of
softmax(logits / T); argmax and therefore accuracy are unchanged. Stored in the bundle and
applied at predict time.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises validation NLL (1.0 when there is nothing to fit)."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or not np.isfinite(logits).all():
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x)) if res.success else 1.0
