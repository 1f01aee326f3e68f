"""The stage-two model protocol: what every model on cached embeddings offers.

The way scikit-learn estimators share ``fit`` / ``predict_proba``, every stage-two model (the
fusion head, LightGBM, the linear probe, a user's own) is one class with one frozen config
class of its own::

    model = LinearProbe(LinearConfig(cs=(0.1, 1.0))).fit(train, val, groups, n_classes=7)
    model.best_epoch_, model.class_weights_, model.logits(image, meta)

``fit`` returns the model itself, with what it learned in trailing-underscore attributes
(``best_epoch_``, ``epochs_run_``, ``class_weights_``). A model that trains several at once
(the head: one batched network) sets ``batched = True`` and overrides ``fit_batched``.
Training, calibration, bundles, predict, explain and export dispatch on the protocol and its
capability attributes (``batched``, ``exportable``, ``differentiable``, ``folds_fallback``),
never on ``kind`` strings; ``learn.models`` (the registry) is the only other place that names
a model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..errors import SkinfeatError

Part = tuple  # (image (N, D) or (N, 1+V, D), meta (N, M), y (N,))
T = TypeVar("T")


class NotFittedError(SkinfeatError, AttributeError):
    """A model used before ``fit`` (or ``from_bundle``) gave it its fitted state."""


class StageTwoModel(ABC):
    """One stage-two model. Subclasses set the class attributes below and implement the
    abstract methods; ``config`` is an instance of ``config_class`` (a frozen dataclass with
    at least ``inputs`` and ``seed`` fields, ``to_dict`` and ``check``)."""

    kind: ClassVar[str]                  # the bundle's model_type, the recipe's ``model``
    title: ClassVar[str]                 # for messages: "fusion head", "LightGBM", ...
    config_class: ClassVar[type]         # its own config dataclass
    # "safetensors" (a state dict), "text" (a blob) or "folder" (several files: ``to_bundle``
    # gives {relative path: text or state dict}, ``from_bundle`` a function reading one back)
    weights_format: ClassVar[str]
    weights_file: ClassVar[str | None] = None   # None: model.safetensors or model.KIND.txt
    batched: ClassVar[bool] = False      # fit_batched trains several as one (cv batches folds)
    exportable: ClassVar[str | None] = None   # None: ONNX export works; else why it cannot
    differentiable: ClassVar[bool] = False    # gradients flow from logits to the embedding
    meta_attribution: ClassVar[str | None] = None   # a native per-field attribution, if any
    # True: a member fitted on all-zero metadata folds into an exact image-only model
    # (``image_only``), so the model can carry the missing-metadata fallback (learn/fallback.py)
    folds_fallback: ClassVar[bool] = False

    @property
    def chosen(self) -> dict:
        """Hyperparameters the fit chose itself, for reports (the linear probe: its C)."""
        return {}

    # Fitted state (set by fit; None where the model has no such thing).
    best_epoch_: int | None = None       # epoch, boosting round or None
    epochs_run_: int | None = None
    class_weights_: list[float] | None = None   # of the training loss: the prior it shifted

    def __init__(self, config: Any = None):
        self.config = self.config_class() if config is None else config

    @classmethod
    def file_name(cls) -> str:
        """Where its weights go in a bundle."""
        if cls.weights_file:
            return cls.weights_file
        return "model.safetensors" if cls.weights_format == "safetensors" \
            else f"model.{cls.kind}.txt"

    @abstractmethod
    def fit(self, train: Part, val: Part, groups: np.ndarray | None = None, *,
            n_classes: int | None = None, meta_fields: list | None = None) -> StageTwoModel:
        """Fit on ``train``; ``val`` may stop early (never the scored rows). ``groups``: the
        training rows' groups (lesions, patients), for a model that cross-validates inside.
        ``n_classes``: the task's (default: the largest label + 1); ``meta_fields``: the
        metadata encoder's ``dropout_fields()``. Returns ``self``."""

    @classmethod
    def fit_batched(cls, config, trains: Sequence[Part], vals: Sequence[Part],
                    groups: Sequence[np.ndarray | None], *, n_classes: int,
                    meta_fields: Sequence[list | None], batched: bool = True
                    ) -> Sequence[StageTwoModel]:
        """One fitted model per (train, val) pair, all with ``config``; a model that trains
        several at once (``batched = True``) overrides this."""
        return [cls(config).fit(t, v, g, n_classes=n_classes, meta_fields=f)
                for t, v, g, f in zip(trains, vals, groups, meta_fields, strict=False)]

    @property
    def inputs(self) -> str:
        return self.config.inputs

    def config_dict(self) -> dict:
        """The config as plain values: the bundle's ``head`` section (without the sizes)."""
        return self.config.to_dict()

    @classmethod
    def config_from(cls, d: dict):
        """The config from a bundle's ``head`` section (its own keys; sizes and older extra
        keys left out)."""
        names = {f.name for f in fields(cls.config_class)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()
                  if k in names}
        return cls.config_class(**values)

    @classmethod
    def describe(cls, config) -> str:
        """What the model is, in a word or two, for reports ("reference", "lightgbm")."""
        return cls.title

    @classmethod
    def report_line(cls, config) -> str:
        """Its recipe in one line of a report (the config's fields, by default)."""
        return ", ".join(f"{k} {v}" for k, v in config.to_dict().items())

    @abstractmethod
    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, K) uncalibrated logits; with ``tta`` and (N, 1+V, D) embeddings, over the views."""

    def predict_proba(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, K) uncalibrated probabilities: the softmax of ``logits``."""
        z = self.logits(image, meta, tta=tta)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    @abstractmethod
    def to_bundle(self) -> tuple[dict, dict | str]:
        """(the model's own state for config.json's ``state`` entry, or {}; weights: a
        safetensors state dict or a text blob)."""

    @classmethod
    @abstractmethod
    def from_bundle(cls, config: dict, weights, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> StageTwoModel:
        """The model from its bundle's ``config.json`` (``head``: its config and sizes;
        ``state``: what ``to_bundle`` stored) and weights; ``dims`` is (embed_dim, meta_dim,
        n_classes); ``load_state(module, state)`` loads a torch state strictly."""

    def torch_module(self):
        """An ``nn.Module`` (image, meta) -> logits, for a differentiable / exportable model."""
        raise NotImplementedError(f"{self.kind} has no torch module")

    @classmethod
    def config_with(cls, config, values: dict):
        """``config`` with a run's settings (flags, a file's values, the shared ``inputs`` and
        ``seed``) that it has fields for; None values are not given."""
        return with_fields(config, **values)

    @classmethod
    def can_fold_fallback(cls, config) -> bool:
        """Can a model of this config carry the missing-metadata fallback? ``folds_fallback``;
        a model made of others (the ensemble) asks its members."""
        return cls.folds_fallback

    def image_only(self, embed_dim: int, n_classes: int) -> StageTwoModel:
        """This model, fitted on all-zero metadata, as the exact ``inputs="image"`` model it is
        (``folds_fallback`` models only)."""
        raise NotImplementedError(f"{self.kind} cannot fold an image-only fallback")


def fitted(model: StageTwoModel, value: T | None) -> T:
    """``value``, a fitted attribute of ``model``; ``NotFittedError`` while it is None."""
    if value is None:
        raise NotFittedError(f"this {model.title} is not fitted: call fit, or load it from a "
                             "bundle")
    return value


def with_fields(config, **values):
    """``config`` with those of ``values`` that are its fields replaced (a run's shared
    ``inputs``, ``seed`` or a flag): each model's config has the fields it has."""
    names = {f.name for f in fields(config)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    return replace(config, **given) if given else config


def log_proba(proba: np.ndarray) -> np.ndarray:
    """Logits of a probability model: the log of its probabilities (softmax gives them back)."""
    return np.log(np.clip(proba, 1e-12, None))


def default_classes(y: np.ndarray, n_classes: int | None) -> int:
    """The number of classes: given, or the largest label + 1."""
    return int(n_classes) if n_classes is not None else int(np.max(y)) + 1


def view_mean(predict: Callable, image: np.ndarray, meta: np.ndarray, tta: bool) -> np.ndarray:
    """``predict(image, meta)`` probabilities, averaged over the views with ``tta`` and (N, V, D)
    embeddings, else from view 0, the original image."""
    if image is not None and image.ndim == 3:
        views = range(image.shape[1]) if tta else (0,)
        return np.mean([predict(image[:, v], meta) for v in views], axis=0)
    return predict(image, meta)
