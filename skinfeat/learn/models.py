"""The registry of stage-two models: each bundle ``model_type`` -> its class (``protocol``).

A new model is one class implementing ``StageTwoModel`` and one entry here; training, bundles,
predict, explain and export find it through ``MODELS``.
"""
from __future__ import annotations

from ..errors import InputError
from .baseline import LGBMModel
from .head_model import HeadModel
from .linear import LinearProbe
from .protocol import StageTwoModel

MODELS: dict[str, type[StageTwoModel]] = {"head": HeadModel, "lgbm": LGBMModel,
                                          "linear": LinearProbe}


def model_class(kind: str) -> type[StageTwoModel]:
    """The class of a ``model_type``; a ValueError naming the choices otherwise."""
    if kind not in MODELS:
        raise InputError(f"--model must be one of {', '.join(MODELS)}, got {kind!r}")
    return MODELS[kind]
