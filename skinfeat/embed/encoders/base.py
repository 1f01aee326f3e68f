"""What every non-timm encoder offers stage one: pooled features and its own preprocessing.

A timm model is used as it is (``PooledFeatures`` calls ``forward_features``); open_clip and
transformers models are wrapped in a ``FamilyEncoder``, which names its family, the pooling
choices it has (``pools``, the first is the default) and the data config its own library
publishes (size, mean, std, interpolation, crop), so no caller restates them.
"""
from __future__ import annotations

from typing import TypeVar

import torch

from ...errors import InputError


class FamilyEncoder(torch.nn.Module):
    """A frozen image tower: ``pooled(x)`` is one vector per image under ``self.pool``."""
    family: str = ""
    pools: tuple[str, ...] = ()
    # ``--layers`` choices: the final layer only, unless a family pools earlier ones too
    layer_choices: tuple[str, ...] = ("last",)

    def __init__(self, pool: str | None = None):
        super().__init__()
        self.pool = pool or self.pools[0]
        self.layers = "last"

    def set_pool(self, pool: str | None) -> None:
        """Choose the pooling (``--pool``); an unknown one is a one-line error."""
        pool = pool or self.pools[0]
        if pool not in self.pools:
            raise InputError(f"--pool {pool}: a {self.family} encoder pools by one of "
                             f"{', '.join(self.pools)}")
        self.pool = pool

    def set_options(self, pool: str | None, layers: str | None = None) -> None:
        """``--pool`` and ``--layers``; a choice this encoder does not offer is a one-line
        error."""
        self.set_pool(pool)
        layers = layers or "last"
        if layers not in self.layer_choices:
            raise InputError(f"--layers {layers}: a {self.family} encoder offers "
                             f"{', '.join(self.layer_choices)} here")
        self.layers = layers

    def pooled(self, x: torch.Tensor) -> torch.Tensor:   # pragma: no cover - abstract
        raise NotImplementedError

    def data_config(self) -> dict:   # pragma: no cover - abstract
        """``{"size", "mean", "std", "interpolation", "crop_pct"}`` from the family's config."""
        raise NotImplementedError

    def cam_layer(self) -> torch.nn.Module:   # pragma: no cover - abstract
        """The module whose output is the last block's token sequence (N, L, C), for CAMs."""
        raise NotImplementedError

    @staticmethod
    def cam_reshape(tokens: torch.Tensor) -> torch.Tensor:
        """grad-cam's ``reshape_transform`` for a ViT: (N, L, C) tokens -> (N, C, h, w) patch
        grid, the leading class / register tokens dropped (L = prefix + h * w, h = w)."""
        if tokens.ndim == 4:                # already a feature map
            return tokens
        n = tokens.shape[1]
        grid = int(n ** 0.5)
        patches = tokens[:, n - grid * grid:]
        return patches.reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    @property
    def num_features(self) -> int:
        with torch.inference_mode():
            size = self.data_config()["size"]
            return int(self.pooled(torch.zeros(1, 3, size, size)).shape[-1])


def first_layernorm(block: torch.nn.Module) -> torch.nn.Module:
    """A transformer block's first LayerNorm (its input: the token sequence), the usual
    grad-cam target for ViTs."""
    norm = next((m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)), None)
    if norm is None:
        raise InputError(f"{type(block).__name__}: no LayerNorm to take token maps from")
    return norm


M = TypeVar("M", bound=torch.nn.Module)


def freeze(module: M) -> M:
    """Eval mode, no gradients: stage one never trains its encoder."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def seeded(seed: int, build):
    """``build()`` under ``torch.manual_seed(seed)``, the global RNG restored after, so that a
    random-weight encoder is rebuilt identically by predict."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)
