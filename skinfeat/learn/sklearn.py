"""``FusionHeadClassifier``: the fusion head as a scikit-learn estimator.

For users who want the head in their own pipelines (``Pipeline``, ``cross_val_score``,
``GridSearchCV``): ``X`` is the image embedding, optionally with the encoded metadata as its
last ``meta_dim`` columns; ``y`` any class labels. A thin adapter over the head model
(``HeadModel``, the one training loop), early-stopping on a stratified ``val_fraction`` of the rows
it is
given, and predicts with the softmax of the head's logits (no calibration: that is the
bundle's job, with a validation part of its own).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InputError


class FusionHeadClassifier(ClassifierMixin, BaseEstimator):
    """A fusion head on (embedding [, metadata]) rows.

    ``meta_dim``: the last ``meta_dim`` columns of ``X`` are encoded metadata (0: the whole row
    is the embedding). ``head``: ``reference`` or ``film``. ``inputs``: fused, image or meta.
    ``max_epochs`` / ``patience``: early stopping on the held-out ``val_fraction`` (no rows to
    spare, fewer than two per class: the training rows themselves). ``random_state`` seeds the
    weights, the dropout and the held-out rows.
    """

    def __init__(self, meta_dim: int = 0, head: str = "reference", inputs: str = "fused",
                 max_epochs: int = 40, patience: int = 5, lr: float = 1e-3,
                 batch_size: int = 64, dense_width: int = 64, meta_dropout: float = 0.0,
                 class_weight: Literal["balanced", "none"] = "balanced",
                 val_fraction: float = 0.1,
                 random_state: int = 42):
        self.meta_dim, self.head, self.inputs = meta_dim, head, inputs
        self.max_epochs, self.patience, self.lr = max_epochs, patience, lr
        self.batch_size, self.dense_width, self.meta_dropout = batch_size, dense_width, \
            meta_dropout
        self.class_weight, self.val_fraction = class_weight, val_fraction
        self.random_state = random_state

    def _parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.meta_dim)
        if not 0 <= k <= X.shape[1]:
            raise InputError(f"meta_dim={k}: X has {X.shape[1]} columns")
        x = X.astype(np.float32)
        return x[:, :x.shape[1] - k], x[:, x.shape[1] - k:]

    def _holdout(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(y))
        counts = np.bincount(y)
        n_val = int(round(self.val_fraction * len(y)))
        if counts.min() < 2 or n_val < len(counts) or len(y) - n_val < len(counts):
            return rows, rows
        from sklearn.model_selection import train_test_split
        return train_test_split(rows, test_size=n_val, stratify=y,
                                random_state=self.random_state)

    def fit(self, X, y) -> FusionHeadClassifier:
        from .head import HeadConfig
        from .head_model import HeadModel

        check_head_classifier(self)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputError(f"FusionHeadClassifier needs at least 2 classes in y, got "
                             f"{len(self.classes_)} class")
        image, meta = self._parts(X)
        tr, va = self._holdout(codes)
        cfg = HeadConfig(head=self.head, inputs=self.inputs, lr=self.lr,
                         batch_size=self.batch_size, max_epochs=self.max_epochs,
                         patience=self.patience, class_weight=self.class_weight,
                         seed=int(self.random_state), meta_dropout=self.meta_dropout,
                         dense_width=self.dense_width)
        model = HeadModel(cfg).fit((image[tr], meta[tr], codes[tr]),
                                   (image[va], meta[va], codes[va]), n_classes=len(self.classes_))
        self.model_, self.n_iter_ = model, model.best_epoch_
        return self

    @property
    def net_(self):
        """The trained ``FusionHead``."""
        return self.model_.net

    def decision_function(self, X) -> np.ndarray:
        """The head's logits, (N, K); for two classes, the positive class's margin (N,)."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.model_.logits(*self._parts(X)).astype(np.float64)

    def predict_proba(self, X) -> np.ndarray:
        z = self._logits(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        best = np.argmax(self._logits(X), axis=1)
        return self.classes_[best]


def _number(est: Any, name: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False) -> None:
    """A parameter that must be a number (an integer) in a range: TypeError for another kind
    of value, ValueError for one out of range, each naming the estimator and the parameter."""
    value, who = getattr(est, name), type(est).__name__
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{who}: {name} must be {'an integer' if integer else 'a number'}, "
                        f"got {value!r} ({type(value).__name__})")
    number = float(value)
    lo = low is not None and (number <= low if low_open else number < low)
    hi = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or lo or hi:
        span = (f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                if high is not None else f"{'>' if low_open else '>='} {low:g}")
        raise ValueError(f"{who}: {name} must be {span}, got {value!r}")


def _choice(est: Any, name: str, choices: Sequence[str]) -> None:
    value = getattr(est, name)
    if value not in choices:
        raise ValueError(f"{type(est).__name__}: {name} must be one of "
                         f"{', '.join(map(repr, choices))}, got {value!r}")


def check_head_classifier(est: Any) -> None:
    """``FusionHeadClassifier``'s parameters, checked at ``fit`` as scikit-learn estimators do
    (``__init__`` only stores them, so ``set_params`` and ``clone`` keep working)."""
    from .head import HEADS, INPUTS

    _choice(est, "head", HEADS)
    _choice(est, "inputs", INPUTS)
    _choice(est, "class_weight", ("balanced", "none"))
    _number(est, "meta_dim", integer=True, low=0)
    for name in ("max_epochs", "patience", "batch_size", "dense_width"):
        _number(est, name, integer=True, low=1)
    _number(est, "lr", low=0, low_open=True)
    _number(est, "meta_dropout", low=0, high=1, high_open=True)
    _number(est, "val_fraction", low=0, high=1, high_open=True)
    _number(est, "random_state", integer=True, low=0)
