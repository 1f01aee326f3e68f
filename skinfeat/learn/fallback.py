"""The image-only fallback of a fused model: rows whose every metadata field is missing are
scored by an image-only model trained on the same split, so on such rows the fused model *is*
the image-only model (issue 20: metadata must never make the model worse where it is absent).

A row falls back when its encoded metadata is exactly the encoder's all-missing vector
(``MetadataEncoder.missing_row``): the one definition used in training, cv, predict and serve,
and the very input a fused head sees on such a row. Blank, missing-token, unseen-category and
absent-column values all encode as missing (``MetadataEncoder.missing_mask``).

In ``fit-head`` (and a ``cv`` without the image input set) the fallback trains as an extra
member of the fused heads' batched fit (``head_batch.fit_heads`` takes one recipe for all
members): the fused architecture given all-zero metadata. Zero inputs make its metadata branch
a constant vector, so ``HeadModel.image_only`` folds that constant into the first dense layer's bias
(and a FiLM gate's constant scale and shift into its weights): an exact ``inputs="image"``
head, stored and loaded like any other. A ``cv`` that runs the image input set reuses each
fold's image-only model instead (no extra training).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import Calibrator
from .models import model_class
from .protocol import StageTwoModel
from .runconfig import RunConfig


@dataclass(frozen=True)
class Fallback:
    """An image-only model with its own calibration (on the fused model's select part)."""
    model: StageTwoModel
    calibrator: Calibrator
    threshold: float | None


def applies(recipe: RunConfig, has_fields: bool) -> bool:
    """Does this recipe's model carry a fallback? A fused model that can fold one
    (``can_fold_fallback``: the head, the linear probe, an ensemble of those) with metadata
    fields, unless turned off
    (``fallback=False``), the reference recipe (``encoding="reference"``: it stays the
    published one; its "unknown" is a category, not missing) or ``--group-context`` (its
    context features carry information even when every field is missing)."""
    return (recipe.fallback and model_class(recipe.model).can_fold_fallback(recipe.params)
            and recipe.params.inputs == "fused" and recipe.encoding != "reference"
            and not recipe.group_context and has_fields)


def fallback_rows(meta: np.ndarray, missing_row: np.ndarray) -> np.ndarray:
    """(N,) bool: rows whose encoded metadata is the all-missing vector."""
    width = len(missing_row)
    if width == 0:   # no metadata fields: nothing to fall back from
        return np.zeros(len(meta), dtype=bool)
    return np.all(np.asarray(meta)[:, :width] == missing_row[None, :], axis=1)


def image_part(part: tuple) -> tuple:
    """(image, meta, y) with the metadata zeroed: the fallback member's input in a batched fit."""
    image, meta, y = part
    return image, np.zeros_like(meta), y


def combine(rows: np.ndarray, fused: tuple[np.ndarray, ...],
            image: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The fused model's arrays (logits, probabilities, decisions, ...) with ``rows`` taken
    from the image-only model's."""
    out = []
    for f, i in zip(fused, image, strict=False):
        f = np.array(f, copy=True)
        f[rows] = np.asarray(i)[rows]
        out.append(f)
    return tuple(out)
