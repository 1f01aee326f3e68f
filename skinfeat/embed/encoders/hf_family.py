"""Hugging Face transformers encoders (``hf:ORG/NAME`` or ``hf:FOLDER``), vision tower only.

``AutoModel`` loads the model; for a vision-language model (CLIP, SigLIP) only its
``vision_model`` is used. Pooling (``--pool``): ``cls`` (default), the first token of the last
hidden state (ViT, DINOv2, CLIP's class token); ``mean``, the mean of the other tokens; ``proj``,
CLIP's projected image embedding (``visual_projection`` of the pooled output). Models whose
last hidden state is a feature map (ConvNeXt) give its spatial mean under ``cls`` and ``mean``.
``--layers last2`` / ``last3`` add the hidden states of the one / two layers before the last,
pooled the same way (``output_hidden_states``), each standardised per image
(``pooling.concat_stages``); not with ``proj``, which exists for the last layer only.
Preprocessing comes from the model's image processor (``preprocessor_config.json``).
"""
from __future__ import annotations

import logging

import torch

from ...errors import InputError
from ..pooling import LAYERS, concat_stages, stage_count
from .base import FamilyEncoder, first_layernorm, freeze, seeded

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}   # PIL's codes, as processors store them


class HFEncoder(FamilyEncoder):
    family = "hf"
    pools = ("cls", "mean", "proj")
    layer_choices = LAYERS

    def __init__(self, model: torch.nn.Module, processor, pool: str | None = None):
        super().__init__(pool)
        vision = getattr(model, "vision_model", None)
        self.tower = vision if vision is not None else model
        self.projection = getattr(model, "visual_projection", None)
        self.config = getattr(model, "config", None)
        self._data = data_config(processor, self.tower)

    def set_pool(self, pool: str | None) -> None:
        super().set_pool(pool)
        if self.pool == "proj" and self.projection is None:
            raise InputError("--pool proj: this transformers model has no image projection "
                             "(only CLIP-like models do); use --pool cls or mean")

    def set_options(self, pool: str | None, layers: str | None = None) -> None:
        super().set_options(pool, layers)
        if self.layers != "last" and self.pool == "proj":
            raise InputError(f"--layers {self.layers}: --pool proj projects the last layer "
                             "only; use --pool cls or mean")

    def _pool_hidden(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim == 4:                     # a feature map (N, C, H, W)
            return h.mean(dim=(2, 3))
        return h[:, 0] if self.pool == "cls" else h[:, 1:].mean(dim=1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        n = stage_count(self.layers)
        out = self.tower(pixel_values=x, output_hidden_states=n > 1)
        if self.pool == "proj":
            assert self.projection is not None   # set_pool refuses proj without one
            return self.projection(out.pooler_output)
        last = self._pool_hidden(out.last_hidden_state)
        if n == 1:
            return last
        # hidden_states: the embeddings, then every layer's output (the last one before the
        # final norm that last_hidden_state has): the n - 1 layers before the last
        earlier = [self._pool_hidden(h) for h in out.hidden_states[-n:-1]]
        return concat_stages([*earlier, last])

    def cam_layer(self) -> torch.nn.Module:
        # Where transformers keeps the blocks moved between versions (encoder.layer in 4.x ViT,
        # layers in 5.x): the first of these that exists.
        blocks = None
        for where in ("encoder.layer", "encoder.layers", "layers", "layer", "blocks"):
            try:
                blocks = self.tower.get_submodule(where)
                break
            except AttributeError:
                continue
        if not isinstance(blocks, torch.nn.ModuleList) or not len(blocks):
            raise InputError(f"{type(self.tower).__name__}: no transformer blocks to explain")
        return first_layernorm(blocks[-1])

    def data_config(self) -> dict:
        return dict(self._data)


def _edge(size) -> int | None:
    """The side of a processor's ``size`` / ``crop_size`` (a dict, a SizeDict or a number)."""
    if size is None or isinstance(size, (int, float)):
        return int(size) if size else None
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    edge = get("height") or get("shortest_edge")
    return int(edge) if edge else None


def data_config(processor, tower: torch.nn.Module) -> dict:
    """Size, mean, std, interpolation and crop from an image processor (else the model config
    and ImageNet statistics, with a warning)."""
    if processor is None:
        size = int(getattr(getattr(tower, "config", None), "image_size", 224))
        log.warning("transformers model without an image processor config: %d px, ImageNet "
                    "mean/std assumed", size)
        return {"size": size, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bicubic", "crop_pct": 1.0}
    resize = _edge(getattr(processor, "size", None)) or 224
    crop = _edge(getattr(processor, "crop_size", None)) \
        if getattr(processor, "do_center_crop", False) else None
    resample = getattr(processor, "resample", 3)
    resample = getattr(resample, "value", resample)
    return {"size": int(crop or resize),
            "mean": tuple(map(float, processor.image_mean)),
            "std": tuple(map(float, processor.image_std)),
            "interpolation": _RESAMPLE.get(resample if isinstance(resample, int) else 3, "bicubic"),
            "crop_pct": float(crop / resize) if crop else 1.0}


def is_hf_folder(path) -> bool:
    import json
    from pathlib import Path
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and "model_type" in json.loads(cfg.read_text())
    except ValueError:
        return False


def build(name: str, kind: str, file: str | None = None, seed: int = 0) -> HFEncoder:
    """``name`` without the prefix: a hub id, or (``kind == "local"``) ``file`` is the folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    where = file if file and kind in ("local", "random") else name   # random: the folder's config
    try:
        processor = AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError):
        processor = None
    if kind == "random":
        config = AutoConfig.from_pretrained(where)
        model = seeded(seed, lambda: AutoModel.from_config(config))
    elif kind == "file":
        from safetensors.torch import load_file
        assert file is not None   # a "file" weight source names its file
        model = AutoModel.from_config(AutoConfig.from_pretrained(where))
        state = load_file(file) if str(file).endswith(".safetensors") else \
            torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    else:
        model = quiet_load(lambda: AutoModel.from_pretrained(where))
    return freeze(HFEncoder(model, processor))


def quiet_load(load):
    """``load()`` without transformers' table-long load report on the console: a config that
    does not fit its weights is then one line (``encoders.unloadable``), not a report."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
