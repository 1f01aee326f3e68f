"""A fitted linear probe as a torch module: explain's gradients and the ONNX graph.

``LinearModule(probe)(image, meta)`` equals ``probe.logits(image, meta)`` (float32): the probe's
columns (embedding, then the encoded metadata, by its ``inputs``), standardized by the stored
mean and scale, times the coefficients, plus the intercepts; sklearn's one binary decision
value ``z`` as the logits ``(0, z)``, and a class the training rows lacked at ``absent``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LinearModule(nn.Module):
    """(image (N, D), meta (N, M)) -> (N, K) logits of a fitted ``LinearProbe`` (passed as
    its fitted arrays: ``linear.py`` builds it, so this file does not import that one)."""

    mean: torch.Tensor     # buffers (register_buffer below), declared for the type checker
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, inputs: str, mean, scale, coef, intercept, classes, n_classes: int,
                 absent: float):
        super().__init__()
        self.inputs = inputs
        self.use_meta = self.inputs != "image"   # export keeps an unused meta input alive
        coef, intercept = np.asarray(coef), np.asarray(intercept)
        if coef.shape[0] == 1:   # two classes: sklearn's z1 - z0 as the logits (0, z)
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        classes = np.asarray(classes)
        weight = np.zeros((n_classes, coef.shape[1]))
        bias = np.full(n_classes, absent)
        weight[classes], bias[classes] = coef, intercept
        for name, value in (("mean", mean), ("scale", scale),
                            ("weight", weight), ("bias", bias)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = image if self.inputs == "image" else meta if self.inputs == "meta" else \
            torch.cat([image, meta], dim=1)
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias
