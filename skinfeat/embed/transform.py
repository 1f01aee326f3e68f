"""An image file -> the encoder's input tensor: the transform a model's pretrained config
asks for (``TransformSpec``, travelling with caches and bundles), the image loader (EXIF,
modes, decompression bombs) and the resize / crop / normalise."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..data.images import open_image
from ..errors import InputError

RESIZE_MODES = ("squash", "crop")
# PIL warns above ~89.5 Mpx and raises above twice that (decompression bombs); we refuse from
# the warning band on, so a 30000x30000 file is refused instead of eating the RAM. Checked on
# the header (``load_image``), not by setting PIL's global ``Image.MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = 89_478_485


@dataclass(frozen=True)
class TransformSpec:
    """Everything needed to turn an image file into the backbone's input; travels with models."""
    size: int = 224
    # squash: whole image to size x size (the reference); crop: timm eval
    resize: str = "squash"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # let the JPEG decoder downscale while decoding (fast, deterministic)
    draft: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TransformSpec:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


SIZES = ("train", "test")


def transform_for(model: torch.nn.Module, resize: str = "squash",
                  image_size: int | str | None = None) -> TransformSpec:
    """The transform from the model's pretrained config (mean, std, size, crop_pct): timm's
    data config, or an open_clip / transformers encoder's own (``FamilyEncoder.data_config``,
    whose interpolation holds for both resize modes).

    ``image_size`` (``--size``): a side in pixels; ``train`` or None, the size the encoder was
    trained at; ``test``, the size its timm config recommends for evaluation
    (``pretrained_cfg["test_input_size"]``, e.g. 288 for convnext_tiny.fb_in1k, with its
    ``test_crop_pct``), refused for an encoder without one."""
    import timm

    from .encoders.base import FamilyEncoder

    if resize not in RESIZE_MODES:
        raise InputError(f"--resize must be one of {RESIZE_MODES}, got {resize!r}")
    size = None if image_size in (None, "train") else image_size
    if isinstance(size, str) and size != "test":
        if not size.isdigit():
            raise InputError(f"--size {size}: expected train, test or a side in pixels")
        size = int(size)
    if isinstance(size, int) and not 16 <= size <= 4096:
        raise InputError(f"--size {size}: expected a side between 16 and 4096 pixels")
    if isinstance(model, FamilyEncoder):
        if size == "test":
            raise InputError(f"--size test: a {model.family} encoder has no test size in its "
                             "config; pass --size N")
        cfg = model.data_config()
        return TransformSpec(size=int(size or cfg["size"]), resize=resize,
                             crop_pct=float(cfg["crop_pct"]), interpolation=cfg["interpolation"],
                             mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if size == "test" and not pretrained.get("test_input_size"):
        name = pretrained.get("architecture") or type(model).__name__
        raise InputError(f"--size test: {name} has no test_input_size in its pretrained "
                         "config; pass --size N")
    cfg = timm.data.resolve_model_data_config(model, use_test_size=size == "test")
    size = int(cfg["input_size"][-1] if size in (None, "test") else size)
    # The reference squashed with a plain bilinear resize; timm's eval transform uses the
    # model's own interpolation.
    interpolation = "bilinear" if resize == "squash" else str(cfg.get("interpolation", "bicubic"))
    return TransformSpec(size=size, resize=resize, crop_pct=float(cfg.get("crop_pct", 0.875)),
                         interpolation=interpolation, mean=tuple(map(float, cfg["mean"])),
                         std=tuple(map(float, cfg["std"])))


# Pillow's resampling filters (the enum its type hints know; equal to the int codes, BILINEAR 2)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}


def load_image(path: str | Path, spec: TransformSpec) -> Image.Image:
    """Open, honour EXIF orientation, convert to RGB (grayscale, RGBA, CMYK, palette)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = open_image(path)   # a file, or bytes in an HDF5 file (data.images)
        if img.width * img.height > MAX_IMAGE_PIXELS:   # the header only: nothing decoded yet
            img.close()
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} = {img.width * img.height:,} pixels, over "
                f"{MAX_IMAGE_PIXELS:,}: refused as a possible decompression bomb")
        try:
            if spec.draft and img.format == "JPEG":
                need = spec.size if spec.resize == "squash" else int(spec.size / spec.crop_pct)
                img.draft("RGB", (need, need))
            img.load()
        except BaseException:
            img.close()  # a bad file is closed now, not whenever the garbage collector runs
            raise
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        # PIL's convert() clips 16-bit values at 255 (a mid-grey image turns white): rescale.
        img = Image.fromarray(np.round(np.asarray(img, np.float64) / 257.0).astype(np.uint8))
    elif img.mode in ("I", "F"):
        raise InputError(f"{img.mode!r} pixels (32-bit integer or float) have no known value "
                         "range; save the image as 8- or 16-bit")
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "P", "PA"):
            # Composite transparency on white rather than letting it turn black.
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(base, rgba)
        img = img.convert("RGB")
    return img


def to_tensor(img: Image.Image, spec: TransformSpec) -> torch.Tensor:
    """PIL RGB image -> normalised CHW float32 tensor, as the backbone expects."""
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "squash":
        img = img.resize((spec.size, spec.size), resample)
    else:
        short = int(spec.size / spec.crop_pct)
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample)
        w, h = img.size
        left, top = (w - spec.size) // 2, (h - spec.size) // 2
        img = img.crop((left, top, left + spec.size, top + spec.size))
    arr: np.ndarray = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess(path: str | Path, spec: TransformSpec) -> torch.Tensor:
    return to_tensor(load_image(path, spec), spec)
