"""A stage-two model defined outside the package, in this one file: the training rows' class
frequencies (smoothed), whatever the input. ``register(PriorModel)`` makes it a model of every
command and of the Python API (tests/test_plugin_model.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np

from skinfeat.learn.protocol import StageTwoModel, default_classes
from skinfeat.schema import Gt, validate


@dataclass(frozen=True)
class PriorConfig:
    inputs: Literal["fused", "image", "meta"] = "fused"   # every model config has these two
    seed: int = 42
    smoothing: Annotated[float, Gt(0)] = 1.0   # added to each class count

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        validate(self)


class PriorModel(StageTwoModel):
    kind, title, config_class, weights_format = "prior", "class prior", PriorConfig, "text"
    exportable = "a class prior (nothing to export)"

    log_prior_: np.ndarray | None = None

    def fit(self, train, val, groups=None, *, n_classes=None, meta_fields=None):
        counts = np.bincount(train[2], minlength=default_classes(train[2], n_classes))
        self.log_prior_ = np.log((counts + self.config.smoothing)
                                 / (counts.sum() + self.config.smoothing * len(counts)))
        return self

    def logits(self, image, meta, tta=False):
        return np.tile(self.log_prior_, (len(meta), 1))

    def to_bundle(self):
        return {}, " ".join(map(repr, self.log_prior_.tolist()))

    @classmethod
    def from_bundle(cls, config, weights, dims, load_state=None):
        model = cls(cls.config_from(config["head"]))
        model.log_prior_ = np.array([float(x) for x in weights.split()])
        return model
