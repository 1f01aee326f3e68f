"""The fusion head (reference or FiLM) as a stage-two model of the protocol.

``HeadModel(HeadConfig(...)).fit(train, val)`` trains one ``FusionHead`` (``.net``); several
heads of one config train as one batched network through the one training loop
(``fit_batched``: ``head_batch.fit_heads``), a single fit being a batch of one.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from .head import FusionHead, HeadConfig, film_gate, head_logits, named_state
from .protocol import Part, StageTwoModel, default_classes, fitted


class HeadModel(StageTwoModel):
    kind = "head"
    title = "fusion head"
    config_class = HeadConfig
    weights_format = "safetensors"
    batched = True
    exportable = None
    differentiable = True
    folds_fallback = True

    net: FusionHead | None = None

    def __init__(self, config: HeadConfig | None = None, net: FusionHead | None = None):
        super().__init__(config)
        self.net = net

    def fit(self, train: Part, val: Part, groups: np.ndarray | None = None, *,
            n_classes: int | None = None, meta_fields: list | None = None) -> HeadModel:
        fitted = self.fit_batched(self.config, [train], [val], [groups],
                                  n_classes=default_classes(train[2], n_classes),
                                  meta_fields=[meta_fields])[0]
        self.__dict__.update(fitted.__dict__)
        return self

    @classmethod
    def fit_batched(cls, config: HeadConfig, trains: Sequence[Part], vals: Sequence[Part],
                    groups: Sequence[np.ndarray | None], *, n_classes: int,
                    meta_fields: Sequence[list | None], batched: bool = True
                    ) -> list[HeadModel]:
        """Together as one batched network, or with ``batched=False`` one batch of one each
        (the same weights up to float rounding)."""
        from .head_batch import fit_heads

        parts = list(zip(trains, vals, strict=False))
        batches = [list(range(len(parts)))] if batched else [[i] for i in range(len(parts))]
        results = [r for b in batches for r in fit_heads([parts[i] for i in b], n_classes,
                                                         config, [meta_fields[i] for i in b])]
        return [cls.fitted(config, r.model, r.best_epoch, len(r.history), r.class_weights)
                for r in results]

    @classmethod
    def fitted(cls, config: HeadConfig, net: FusionHead, best_epoch: int | None = None,
               epochs_run: int | None = None, class_weights=None) -> HeadModel:
        """A head with its trained network and what its fit learned."""
        model = cls(config, net)
        model.best_epoch_, model.epochs_run_ = best_epoch, epochs_run
        model.class_weights_ = None if class_weights is None else list(class_weights)
        return model

    @classmethod
    def describe(cls, config: HeadConfig) -> str:
        return config.head

    @classmethod
    def report_line(cls, c: HeadConfig) -> str:
        return (f"{c.head}, up to {c.max_epochs} epochs (patience {c.patience}, on "
                f"{c.stop_on}), batch {c.batch_size}, metadata dropout {c.meta_dropout} per "
                f"field, feature-level view augmentation {'on' if c.view_augment else 'off'}")

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        return head_logits(fitted(self, self.net), image, meta, tta=tta)

    def to_bundle(self) -> tuple[dict, dict]:
        return {}, fitted(self, self.net).state_dict()

    @classmethod
    def from_bundle(cls, config: dict, weights, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> HeadModel:
        cfg = cls.config_from(config["head"])
        net = FusionHead.from_config(*dims, cfg)
        (load_state or (lambda m, s: m.load_state_dict(s)))(net, named_state(weights))
        net.eval()
        return cls(cfg, net)

    def torch_module(self) -> FusionHead:
        return fitted(self, self.net)

    @torch.no_grad()
    def image_only(self, embed_dim: int, n_classes: int) -> HeadModel:
        """This fused head, trained on all-zero metadata (learn/fallback.py), as the
        ``inputs="image"`` head it is: its metadata branch gives the constant
        ``m = meta_mlp(0)``, folded into the dense layer (exact up to float rounding)."""
        net, cfg = fitted(self, self.net), replace(self.config, inputs="image")
        zero = torch.zeros(1, net.meta_mlp.fc1.in_features)
        m = net.meta_mlp(zero)[0]
        weight, bias = net.fuse.fc.weight, net.fuse.fc.bias
        w_image, w_meta = weight[:, :embed_dim], weight[:, embed_dim:]
        new_bias = bias + w_meta @ m
        if hasattr(net, "film"):   # x * film_gate(gamma) + beta, gamma and beta constant
            gamma, beta = net.film(m[None])[0].chunk(2)
            new_bias = new_bias + w_image @ beta
            w_image = w_image * film_gate(gamma)[None, :]
        out = FusionHead.from_config(embed_dim, net.meta_mlp.fc1.in_features, n_classes, cfg)
        out.fuse.fc.load_state_dict({"weight": w_image.clone(), "bias": new_bias.clone()})
        out.classifier.load_state_dict(net.classifier.state_dict())
        out.eval()
        return type(self).fitted(cfg, out, self.best_epoch_,
                                 self.epochs_run_, self.class_weights_)
