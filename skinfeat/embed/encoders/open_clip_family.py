"""open_clip encoders (``open_clip:MODEL[:PRETRAINED]`` or ``open_clip:FOLDER``), image tower only.

Pooling (``--pool``): ``proj`` (default), the projected image embedding that CLIP matches
against text (``encode_image``); ``cls``, the pooled token before the projection; ``mean``, the
mean of the patch tokens before the projection (``cls``/``mean`` need a ViT tower).
Preprocessing comes from the model's ``preprocess_cfg`` (a folder's ``open_clip_config.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError
from .base import FamilyEncoder, first_layernorm, freeze, seeded


class OpenClipEncoder(FamilyEncoder):
    family = "open_clip"
    pools = ("proj", "cls", "mean")

    def __init__(self, model: torch.nn.Module, pool: str | None = None):
        super().__init__(pool)
        # the text tower is dropped: never used here; Any: open_clip's towers are untyped
        self.visual: Any = model.visual
        self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})

    def set_pool(self, pool: str | None) -> None:
        super().set_pool(pool)
        if self.pool != "proj" and not hasattr(self.visual, "_pool"):
            raise InputError(f"--pool {self.pool}: this open_clip tower "
                             f"({type(self.visual).__name__}) offers only --pool proj")

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        if self.pool == "proj":
            out = v(x)
            return out[0] if isinstance(out, tuple) else out
        tokens = v.transformer(v._embeds(x))
        pooled, patches = v._pool(tokens)   # ln_post, then the model's own token pooling
        return pooled if self.pool == "cls" else patches.mean(dim=1)

    def cam_layer(self) -> torch.nn.Module:
        blocks = getattr(getattr(self.visual, "transformer", None), "resblocks", None)
        if not blocks:
            raise InputError(f"{type(self.visual).__name__}: no transformer blocks to explain")
        return first_layernorm(blocks[-1])

    def data_config(self) -> dict:
        cfg = self.preprocess_cfg
        size = cfg.get("size", getattr(self.visual, "image_size", 224))
        size = int(size[-1] if isinstance(size, (list, tuple)) else size)
        interp = str(cfg.get("interpolation", "bicubic"))
        return {"size": size, "mean": tuple(map(float, cfg.get("mean", (0.4815, 0.4578, 0.4082)))),
                "std": tuple(map(float, cfg.get("std", (0.2686, 0.2613, 0.2758)))),
                "interpolation": interp if interp in ("bilinear", "bicubic", "nearest")
                else "bicubic",
                # open_clip's eval transform: shortest side to size, centre crop (no margin)
                "crop_pct": 1.0}


def is_open_clip_folder(path: Path) -> bool:
    return (path / "open_clip_config.json").is_file()


def build(name: str, kind: str, file: str | None = None, seed: int = 0) -> OpenClipEncoder:
    """``name`` without the family prefix: ``MODEL[:PRETRAINED]``; ``kind`` as WeightSource's."""
    import open_clip

    model_name, _, tag = name.partition(":")
    if kind == "local":
        model = open_clip.create_model(f"local-dir:{file}")
    elif kind == "file":
        model = open_clip.create_model(model_name, pretrained=file)
    elif kind == "random" and file:   # a folder's architecture, randomly initialised
        cfg = json.loads((Path(file) / "open_clip_config.json").read_text())
        model = seeded(seed, lambda: open_clip.CLIP(**cfg["model_cfg"]))
        model.visual.preprocess_cfg = {**cfg.get("preprocess_cfg", {}),
                                       "size": model.visual.image_size}
    elif kind == "random":
        model = seeded(seed, lambda: open_clip.create_model(model_name))
    else:
        if not tag:
            raise InputError(f"open_clip:{name}: name the pretrained weights, "
                             f"open_clip:{model_name}:TAG (tags: "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name))})")
        model = open_clip.create_model(model_name, pretrained=tag)
    return freeze(OpenClipEncoder(model))
