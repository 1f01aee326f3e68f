"""The frozen image branch: the encoder (timm, or an open_clip / transformers one from
``encoders``) with the weights of ``weights``. Its input comes from ``transform``, where it runs
from ``device``. Knows nothing of HAM10000.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import InputError
from .weights import (
    WeightSource,
    WeightsUnavailable,
    hub_reachable,
    offline_message,
    pretrained_location,
)

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "convnext_tiny.fb_in1k"


def create_backbone(name: str, source: WeightSource) -> torch.nn.Module:
    """A frozen, eval-mode encoder for a recorded backbone name: a timm model that returns
    pooled features (``num_classes=0``), or an open_clip / transformers ``FamilyEncoder``."""
    import timm

    from .encoders import build_family

    family = build_family(name, source)
    if family is not None:
        return family
    kwargs: dict = {"num_classes": 0}
    if source.kind == "local" or (source.kind == "random" and source.file):
        # A timm folder (config.json + weights): its model_args shape the architecture.
        name = f"local-dir:{source.file}"
    if source.kind == "pretrained":
        hub_id, cached = pretrained_location(name)
        if hub_id and not cached and not hub_reachable():
            raise WeightsUnavailable(offline_message(
                name, OSError(f"not in the local cache and the hub is unreachable ({hub_id})")))
    try:
        if source.kind == "random":
            # Seeded so that predict can rebuild exactly the backbone that filled the cache.
            state = torch.random.get_rng_state()
            torch.manual_seed(source.seed)
            try:
                model = timm.create_model(name, pretrained=False, **kwargs)
            finally:
                torch.random.set_rng_state(state)
        elif source.kind == "local":
            model = timm.create_model(name, pretrained=True, **kwargs)
        elif source.kind == "file":
            model = timm.create_model(name, pretrained=True,
                                      pretrained_cfg_overlay={"file": source.file}, **kwargs)
        else:
            model = timm.create_model(name, pretrained=True, **kwargs)
    except OSError as exc:  # huggingface_hub raises OSError subclasses when offline
        raise WeightsUnavailable(offline_message(name, exc)) from exc
    except Exception as exc:
        if "Unknown model" in str(exc):
            raise InputError(f"--backbone {name}: timm has no model of that name (skinfeat "
                             "backbones lists some; timm.list_models() all)") from exc
        if source.kind == "pretrained" and isinstance(exc, RuntimeError):
            raise WeightsUnavailable(offline_message(name, exc)) from exc
        if source.kind in ("file", "local"):   # a truncated or foreign file: name it
            from .encoders import unloadable
            raise WeightsUnavailable(unloadable(Path(str(source.file)), exc)) from exc
        raise
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
