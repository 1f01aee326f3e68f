"""The registry of stage-two models: each ``kind`` (the recipe's ``model``, the bundle's
``model_type``) -> its class (``protocol.StageTwoModel``).

The registry is the only place that names a model: the CLI's ``--model`` / ``--models``
choices, recipe parsing (``RunConfig``), bundles, predict, evaluate, explain and export read it
and dispatch on the class's capability attributes. A new model is one class in one file plus
``register(MyModel)`` (or an entry point in the ``skinfeat.models`` group naming the class).
"""
from __future__ import annotations

import logging

from ..errors import InputError
from .baseline import LGBMModel
from .head_model import HeadModel
from .linear import LinearProbe
from .protocol import StageTwoModel

log = logging.getLogger(__name__)

MODELS: dict[str, type[StageTwoModel]] = {"head": HeadModel, "lgbm": LGBMModel,
                                          "linear": LinearProbe}
# The default model of fit-head and cv (issue 29: the head + linear probe ensemble beat the head
# by +1.58 [+0.93, +2.23] points on image features and +1.06 [+0.30, +1.86] fused, 3 seeds) and
# what cv compares unless told; the reference recipe (--encoding reference) is the head's.
DEFAULT_MODEL = "ensemble"
DEFAULT_MODELS = (DEFAULT_MODEL, "lgbm")
REFERENCE_MODEL = "head"
ENTRY_POINTS = "skinfeat.models"
_loaded = False


def register(cls: type[StageTwoModel]) -> type[StageTwoModel]:
    """Add a model class under its ``kind`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, StageTwoModel)):
        raise TypeError(f"{cls!r} is not a StageTwoModel subclass")
    MODELS[cls.kind] = cls
    return cls


def registry() -> dict[str, type[StageTwoModel]]:
    """Every model: the built-in ones, those registered, and (once) the entry points."""
    global _loaded
    if not _loaded:
        _loaded = True
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINTS):
            try:
                register(ep.load())
            except Exception as exc:   # a broken plugin must not break the built-in models
                log.warning("model entry point %s could not be loaded: %s", ep.name, exc)
    return MODELS


def default_models(model: str = DEFAULT_MODEL) -> tuple[str, ...]:
    """What cv compares unless told: a recipe's model (the default one; the head of the
    reference recipe) and LightGBM."""
    return tuple(dict.fromkeys((model, *DEFAULT_MODELS[1:])))


def model_names() -> tuple[str, ...]:
    """The kinds of every registered model (``--model`` / ``--models`` choices)."""
    return tuple(registry())


def model_class(kind: str) -> type[StageTwoModel]:
    """The class of a ``kind``; a ValueError naming the choices otherwise."""
    models = registry()
    if kind not in models:
        raise InputError(f"--model must be one of {', '.join(models)}, got {kind!r}")
    return models[kind]
