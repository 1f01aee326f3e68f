"""Predict: a trained run's bundle + raw images and metadata -> calibrated class probabilities.

An image goes through exactly what filled the training cache: the backbone rebuilt from the
bundle's identity (timm name; random weights from the stored seed, timm's pretrained weights, or
a local checkpoint whose sha256 must match), the stored ``TransformSpec``, and stage one's
``Embedder`` at the cache's precision. Then the bundle's metadata encoder, the head and the stored
temperature. Metadata fields are the ones the model was trained with (its dataset description
travels in the bundle); a field that is absent or blank is missing, exactly as in training.
Loading the bundle (typed config, model or ensemble members, backbone) is ``loading.py``'s;
scoring it is ``model.Model``'s; this module holds what a prediction returns
(``Predictions``, ``ImagePrediction``) and how ``--meta`` pairs are read.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import DataError
from ..data.spec import DatasetSpec
from .bundle import atomic_write_text
from .decision import FIELDS, Decision, decisions

log = logging.getLogger(__name__)


def parse_meta(pairs: Sequence[str], spec: DatasetSpec) -> dict[str, str]:
    """``FIELD=VALUE`` pairs (``--meta``) -> a dict; unknown fields are an error naming the
    model's fields. A value that spells "missing" (``nan``, ``unknown``, ...) is kept, and so
    missing, with a warning: ``--age nan`` is more often a slip than a choice. (Text, inf and
    implausible numbers are warned about where the values are read, ``tables.clean_numeric``.)"""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise DataError(f"--meta {pair!r}: use FIELD=VALUE, e.g. age=55")
        if name not in spec.metadata:
            if not spec.metadata:
                raise DataError(f"--meta {name}: this model takes no metadata fields (it was "
                                "trained on the image alone); drop --meta")
            raise DataError(f"--meta {name}: this model has no such field; its fields are "
                            f"{', '.join(spec.metadata)}")
        if value.strip() and value.strip().lower() in spec.missing:
            log.warning("--meta %s=%s: %r means missing; %s is treated as missing", name,
                        value, value, name)
        out[name] = value
    return out


@dataclass
class Predictions:
    """Per input row: calibrated probabilities, raw logits, and a reason when unreadable."""
    image_ids: list[str]
    paths: list[str]
    classes: list[str]
    logits: np.ndarray          # (N, K); NaN rows for unreadable images
    proba: np.ndarray           # (N, K) calibrated probabilities
    errors: list[str]           # "" when the image was read
    decided: np.ndarray         # (N,) the model's decision (class index), -1 where unreadable
    missing: dict[str, int] = field(default_factory=dict)  # per field: scored rows missing it
    fell_back: int = 0   # scored rows with every field missing, scored by the image-only fallback
    rule: str = ""       # the decision rule in one line (``decision.decision_rule``)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e == "" for e in self.errors], dtype=bool)

    def decisions(self) -> list[Decision | None]:
        """Each row's decision fields (None where the row was not scored)."""
        return decisions(self.classes, self.proba, self.decided, self.rule)

    def to_frame(self) -> pd.DataFrame:
        """One row per input: the decision fields (``decision.FIELDS``), then p_CLASS."""
        frame = pd.DataFrame({"image_id": self.image_ids, "path": self.paths})
        blank = {**dict.fromkeys(FIELDS, ""), "most_probable_probability": np.nan}
        rows = [d.to_dict() if d else blank for d in self.decisions()]
        for name in FIELDS:
            frame[name] = [r[name] for r in rows]
        frame["prediction"] = frame["decision"]   # the older name of "decision"
        top = "most_probable_probability"
        frame[top] = frame[top].astype(float).round(6)
        for j, c in enumerate(self.classes):
            frame[f"p_{c}"] = np.round(self.proba[:, j], 6)
        frame["error"] = self.errors
        return frame


def save_predictions(preds: Predictions, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, preds.to_frame().to_csv(index=False))


@dataclass
class ImagePrediction:
    """One image's calibrated probabilities and the model's decision."""
    image: str
    prediction: str                  # the decided class
    probabilities: dict[str, float]  # calibrated, by class
    metadata: dict[str, str]         # the values given
    missing: list[str]               # the model's fields that were missing
    rule: str                        # the decision rule in words
    calibration: str                 # the calibrator in words
    class_names: dict[str, str]
    temperature: float
    threshold: float | None
    weights: str

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    @property
    def decision(self) -> Decision:
        """The decision fields shown everywhere (``deploy.decision``)."""
        top, p = self.ranked()[0]
        return Decision(top, p, self.prediction, self.rule)
