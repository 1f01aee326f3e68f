"""The fusion head (reference or FiLM) as a stage-two model of the protocol.

``HeadModel`` holds a trained ``FusionHead`` (``.net``); several heads of one recipe train as
one batched network through the one training loop (``head_batch.fit_heads``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .head import FusionHead, HeadConfig, head_logits, named_state
from .protocol import Trained, Part, StageTwoModel


class HeadModel(StageTwoModel):
    kind = "head"
    title = "fusion head"
    weights_format = "safetensors"
    exportable = None
    differentiable = True

    def __init__(self, net: FusionHead, cfg: dict):
        self.net, self._config = net, cfg

    @staticmethod
    def recipe(head_cfg: HeadConfig, lgbm_cfg) -> HeadConfig:
        return head_cfg

    @classmethod
    def fit(cls, train: Part, val: Part, n_classes: int, recipe: HeadConfig,
            meta_fields: list | None = None, groups: np.ndarray | None = None) -> Trained:
        return cls.fit_many([train], [val], n_classes, recipe, [meta_fields], [groups])[0]

    @classmethod
    def fit_many(cls, trains: Sequence[Part], vals: Sequence[Part], n_classes: int,
                 recipe: HeadConfig, meta_fields: Sequence[list | None],
                 groups: Sequence[np.ndarray | None], batched: bool = True) -> list[Trained]:
        """Together as one batched network, or with ``batched=False`` one batch of one each
        (the same weights up to float rounding)."""
        from .head_batch import fit_heads

        parts = list(zip(trains, vals))
        batches = [list(range(len(parts)))] if batched else [[i] for i in range(len(parts))]
        results = [r for b in batches for r in fit_heads([parts[i] for i in b], n_classes,
                                                         recipe, [meta_fields[i] for i in b])]
        return [Trained(cls(r.model, recipe.to_dict()), r.best_epoch, len(r.history),
                       r.class_weights) for r in results]

    @property
    def config(self) -> dict:
        return self._config

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        return head_logits(self.net, image, meta, tta=tta)

    def to_bundle(self) -> tuple[dict, dict]:
        return {}, self.net.state_dict()

    @classmethod
    def from_bundle(cls, config: dict, weights, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> "HeadModel":
        head = config["head"]
        net = FusionHead.from_config(*dims, head)
        (load_state or (lambda m, s: m.load_state_dict(s)))(net, named_state(weights))
        net.eval()
        return cls(net, head)

    def torch_module(self) -> FusionHead:
        return self.net
