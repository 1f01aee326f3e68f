"""The stage-two model protocol: what every model on cached embeddings offers.

The way scikit-learn estimators share ``fit`` / ``predict_proba``, every stage-two model (the
fusion head, LightGBM, the linear probe) offers the same small interface: fit on (embeddings,
encoded metadata, labels) with a validation part, logits for new rows, and its state to and
from a bundle. Training, calibration, bundles, predict, explain and export dispatch on it and
on its capability attributes (``exportable``, ``differentiable``), never on ``kind`` strings.

``learn.models.MODELS`` maps each bundle ``model_type`` to its class; a new model is one class
and one entry there.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

Part = tuple  # (image (N, D) or (N, 1+V, D), meta (N, M), y (N,))


@dataclass
class Trained:
    """A model and what its fit learned besides the weights (for reports and calibration)."""
    model: "StageTwoModel"
    best_epoch: int | None = None       # epoch, boosting round or None (no such thing)
    epochs_run: int | None = None
    class_weights: list[float] | None = None   # of the training loss: the prior it shifted

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def config(self) -> dict:
        return self.model.config

    @property
    def chosen(self) -> dict:
        """Hyperparameters the fit chose itself (the linear probe's C), for reports."""
        return self.model.chosen

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        return self.model.logits(image, meta, tta=tta)


class StageTwoModel(ABC):
    """One fitted stage-two model. Subclasses set the class attributes below."""

    kind: ClassVar[str]                  # the bundle's model_type
    title: ClassVar[str]                 # for messages: "fusion head", "LightGBM", ...
    weights_format: ClassVar[str]        # "safetensors" (a state dict) or "text" (a blob)
    exportable: ClassVar[str | None] = None   # None: ONNX export works; else why it cannot
    differentiable: ClassVar[bool] = False    # gradients flow from logits to the embedding
    meta_attribution: ClassVar[str | None] = None   # a native per-field attribution, if any

    @property
    def chosen(self) -> dict:
        """Hyperparameters the fit chose itself, for reports (the linear probe: its C)."""
        return {}

    @staticmethod
    @abstractmethod
    def recipe(head_cfg, lgbm_cfg):
        """This model's recipe out of a run's head and LightGBM configs (the run's shared
        ``inputs`` and ``seed`` are set on both)."""

    @classmethod
    @abstractmethod
    def fit(cls, train: Part, val: Part, n_classes: int, recipe,
            meta_fields: list | None = None, groups: np.ndarray | None = None) -> Trained:
        """Fit on ``train``; ``val`` may stop early (never the scored rows). ``groups``: the
        training rows' groups (lesions, patients), for a model that cross-validates inside."""

    @classmethod
    def fit_many(cls, trains: Sequence[Part], vals: Sequence[Part], n_classes: int, recipe,
                 meta_fields: Sequence[list | None], groups: Sequence[np.ndarray | None],
                 batched: bool = True) -> list[Trained]:
        """One model per (train, val) pair with one recipe; a model that trains several at
        once (the head) overrides this."""
        return [cls.fit(t, v, n_classes, recipe, f, g)
                for t, v, f, g in zip(trains, vals, meta_fields, groups)]

    @property
    @abstractmethod
    def config(self) -> dict:
        """The recipe as plain values: the bundle's ``head`` section (without the sizes)."""

    @property
    def inputs(self) -> str:
        return self.config["inputs"]

    @abstractmethod
    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, K) uncalibrated logits; with ``tta`` and (N, 1+V, D) embeddings, over the views."""

    @abstractmethod
    def to_bundle(self) -> tuple[dict, dict | str]:
        """(extra config.json entries, weights: a safetensors state dict or a text blob)."""

    @classmethod
    @abstractmethod
    def from_bundle(cls, config: dict, weights, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> "StageTwoModel":
        """The model from its bundle's ``config.json`` and weights; ``dims`` is (embed_dim,
        meta_dim, n_classes); ``load_state(module, state)`` loads a torch state strictly."""

    def torch_module(self):
        """An ``nn.Module`` (image, meta) -> logits, for a differentiable / exportable model."""
        raise NotImplementedError(f"{self.kind} has no torch module")


def log_proba(proba: np.ndarray) -> np.ndarray:
    """Logits of a probability model: the log of its probabilities (softmax gives them back)."""
    return np.log(np.clip(proba, 1e-12, None))


def view_mean(predict: Callable, image: np.ndarray, meta: np.ndarray, tta: bool) -> np.ndarray:
    """``predict(image, meta)`` probabilities, averaged over the views with ``tta`` and (N, V, D)
    embeddings, else from view 0, the original image."""
    if image is not None and image.ndim == 3:
        views = range(image.shape[1]) if tta else (0,)
        return np.mean([predict(image[:, v], meta) for v in views], axis=0)
    return predict(image, meta)
