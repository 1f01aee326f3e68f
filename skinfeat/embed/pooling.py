"""How a frozen timm encoder's features become one vector per image (``--pool``, ``--layers``).

Pools of a feature map (N, C, H, W):

* ``avg``: the global average (Keras' ``pooling="avg"`` in the reference; the default);
* ``gem``: the generalised mean ``(mean x^p)^(1/p)``, p = 3, of the activations clamped at
  1e-6 (Radenovic et al., 2018): between the average (p = 1) and the maximum (p -> inf);
* ``avgmax``: (average + maximum) / 2, timm's ``avgmax``.

A model whose features are tokens (a ViT) pools by its own head (``avg`` only; ``gem`` and
``avgmax`` are refused in one line).

Layers: ``last`` is the final features (the default); ``last2`` / ``last3`` add the pooled
output of the one / two stages before them (timm's ``forward_intermediates``), earliest stage
first. Each stage's vector is standardised per image (zero mean, unit variance over its
channels: a LayerNorm without weights), so a wide or large-valued stage does not drown the
others; per image, so no dataset statistics are needed and a raw image at predict time is
embedded exactly as the cache was filled.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError

TIMM_POOLS = ("avg", "gem", "avgmax")
LAYERS = ("last", "last2", "last3")
GEM_P = 3.0
GEM_EPS = 1e-6


def stage_count(layers: str) -> int:
    """How many stages ``--layers`` takes (last: 1, last2: 2, last3: 3)."""
    if layers not in LAYERS:
        raise InputError(f"--layers {layers}: expected one of {', '.join(LAYERS)}")
    return LAYERS.index(layers) + 1


def pool_map(feats: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by ``pool``; computed in float32 (a bf16 cube loses digits)."""
    feats = feats.float()
    if pool == "avg":
        return feats.mean(dim=(2, 3))
    if pool == "gem":
        return feats.clamp(min=GEM_EPS).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    if pool == "avgmax":
        return 0.5 * (feats.mean(dim=(2, 3)) + feats.amax(dim=(2, 3)))
    raise InputError(f"--pool {pool}: a timm encoder pools by one of {', '.join(TIMM_POOLS)}")


def standardise(v: torch.Tensor) -> torch.Tensor:
    """Each row to zero mean and unit variance over its channels (no learnt scale; a tiny eps,
    so that a stage of small activations is not shrunk): ``F.layer_norm`` without weights,
    written out, because ``layer_norm``'s shape argument, read from the input, does not trace
    to ONNX (a bundle on ``--layers last2/last3`` could not be exported)."""
    v = v.float()
    centred = v - v.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + 1e-12)


def concat_stages(parts: list[torch.Tensor]) -> torch.Tensor:
    """Pooled stages, each standardised, side by side (earliest first)."""
    return torch.cat([standardise(p) for p in parts], dim=-1)


def _final(model: Any, feats: torch.Tensor, pool: str) -> torch.Tensor:
    if feats.ndim == 4:
        return pool_map(feats, pool)
    if pool != "avg":
        raise InputError(f"--pool {pool}: {type(model).__name__} gives tokens, not a feature "
                         "map; it pools by its own head (--pool avg)")
    return model.forward_head(feats, pre_logits=True)


def same_stage(inter: torch.Tensor, final: torch.Tensor) -> bool:
    """Is the last intermediate the stage the final features come from (ConvNeXt, ResNet, ViT),
    rather than one before an extra head convolution (MobileNet, EfficientNet)?"""
    if final.ndim == 4:
        return inter.shape[1:] == final.shape[1:]
    return inter.shape[1] == final.shape[-1]


def timm_pooled(model: Any, x: torch.Tensor, pool: str = "avg",
                layers: str = "last") -> torch.Tensor:
    """One vector per image from a timm model (``num_classes=0``) as ``pool`` and ``layers``
    say."""
    n = stage_count(layers)
    if n == 1:
        return _final(model, model.forward_features(x), pool)
    try:
        final, inters = model.forward_intermediates(x, indices=n)
    except (AttributeError, NotImplementedError, TypeError) as exc:
        raise InputError(f"--layers {layers}: {type(model).__name__} has no timm "
                         "forward_intermediates; use --layers last") from exc
    if inters and same_stage(inters[-1], final):
        inters = inters[:-1]
    earlier = [pool_map(t, pool) if t.ndim == 4 else t.float().mean(dim=1)   # NLC tokens
               for t in inters[-(n - 1):]]
    if len(earlier) < n - 1:
        raise InputError(f"--layers {layers}: {type(model).__name__} has only "
                         f"{len(earlier) + 1} stages")
    return concat_stages([*earlier, _final(model, final, pool)])
