"""The frozen image branch: the encoder (timm, or an open_clip / transformers one from
``encoders``), where its weights come from, and its image transform.

Knows nothing of HAM10000. Four weight sources, stamped into every cache and report so nobody
mistakes random-weight numbers for real ones:
  * ``pretrained``: the family's pretrained weights (Hugging Face hub, cached by huggingface_hub);
  * ``file``: a local checkpoint, loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``;
  * ``local``: a local model folder (config + weights), identified by the sha256 of its files;
  * ``random``: seeded random init, for offline tests and the demo.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..data.images import open_image

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "convnext_tiny.fb_in1k"
RESIZE_MODES = ("squash", "crop")
# PIL warns above ~89.5 Mpx and raises above twice that (decompression bombs); we refuse from
# the warning band on, so a 30000x30000 file is refused instead of eating the RAM. Checked on
# the header (``load_image``), not by setting PIL's global ``Image.MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = 89_478_485


# The offline routes, in the order every message names them: a model folder first (it carries
# its own config; a bare checkpoint is loaded into the library's default config for the name).
OFFLINE_ROUTES = ("model folder: --backbone local-dir:FOLDER (timm, open_clip or transformers; "
                  "or open_clip:FOLDER, hf:FOLDER), or a bare checkpoint: --weights-file PATH")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded (offline, no cache)."""


@dataclass(frozen=True)
class WeightSource:
    """Where the backbone weights come from; part of the cache identity."""
    kind: str                      # pretrained | file | local | random
    file: str | None = None        # kind file: the checkpoint; local (and random): the folder
    sha256: str | None = None      # of the file, so a changed checkpoint is a new identity
    seed: int = 0                  # for kind == random

    def describe(self) -> str:
        if self.kind == "random":
            return f"RANDOM weights (seed {self.seed}): numbers say nothing about real performance"
        if self.kind == "file":
            return f"local checkpoint {self.file} (sha256 {str(self.sha256)[:12]})"
        if self.kind == "local":
            return f"local folder {self.file} (sha256 {str(self.sha256)[:12]})"
        return "pretrained (timm / Hugging Face hub)"

    def identity(self) -> dict:
        # The file path may differ between machines; the checksum is what identifies it.
        d = asdict(self)
        d.pop("file")
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(weights: str = "pretrained", weights_file: str | Path | None = None,
                    seed: int = 0) -> WeightSource:
    if weights_file is not None:
        path = Path(weights_file)
        if path.is_dir():   # a model folder: the local-dir route (``encoders.resolve_backbone``)
            from .encoders.local import folder_sha256
            return WeightSource("local", str(path.resolve()), folder_sha256(path))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found")
        return WeightSource("file", str(path.resolve()), sha256_file(path))
    if weights not in ("pretrained", "random"):
        raise ValueError(f"--weights must be 'pretrained' or 'random', got {weights!r}")
    return WeightSource(weights, seed=seed if weights == "random" else 0)


def pretrained_location(name: str) -> tuple[str | None, bool]:
    """(hub id, is it already in the local Hugging Face cache) for a timm model name."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None, False
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return hub_id, True
    return hub_id, False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub be reached at all? A TCP connect, so that an offline machine
    learns it in seconds instead of sitting through huggingface_hub's five retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


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
            raise WeightsUnavailable(_offline_message(
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
        raise WeightsUnavailable(_offline_message(name, exc)) from exc
    except Exception as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"--backbone {name}: timm has no model of that name (skinfeat "
                             "backbones lists some; timm.list_models() all)") from exc
        if source.kind == "pretrained" and isinstance(exc, RuntimeError):
            raise WeightsUnavailable(_offline_message(name, exc)) from exc
        if source.kind in ("file", "local"):   # a truncated or foreign file: name it
            from .encoders import unloadable
            raise WeightsUnavailable(unloadable(Path(str(source.file)), exc)) from exc
        raise
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _offline_message(name: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first if len(first) <= 120 else first[:117] + "..."
    return (f"pretrained weights for {name} could not be loaded ({first}); offline, pass a "
            f"{OFFLINE_ROUTES}, or connect to the network once, or --weights random for a smoke "
            "test")


@dataclass(frozen=True)
class TransformSpec:
    """Everything needed to turn an image file into the backbone's input; travels with models."""
    size: int = 224
    resize: str = "squash"          # squash: whole image to size x size (the reference); crop: timm eval
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    draft: bool = True              # let the JPEG decoder downscale while decoding (fast, deterministic)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TransformSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def transform_for(model: torch.nn.Module, resize: str = "squash",
                  image_size: int | None = None) -> TransformSpec:
    """The transform from the model's pretrained config (mean, std, size, crop_pct): timm's
    data config, or an open_clip / transformers encoder's own (``FamilyEncoder.data_config``,
    whose interpolation holds for both resize modes)."""
    import timm

    from .encoders.base import FamilyEncoder

    if resize not in RESIZE_MODES:
        raise ValueError(f"--resize must be one of {RESIZE_MODES}, got {resize!r}")
    if isinstance(model, FamilyEncoder):
        cfg = model.data_config()
        return TransformSpec(size=int(image_size or cfg["size"]), resize=resize,
                             crop_pct=float(cfg["crop_pct"]), interpolation=cfg["interpolation"],
                             mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    cfg = timm.data.resolve_model_data_config(model)
    size = int(image_size or cfg["input_size"][-1])
    # The reference squashed with a plain bilinear resize; timm's eval transform uses the
    # model's own interpolation.
    interpolation = "bilinear" if resize == "squash" else str(cfg.get("interpolation", "bicubic"))
    return TransformSpec(size=size, resize=resize, crop_pct=float(cfg.get("crop_pct", 0.875)),
                         interpolation=interpolation, mean=tuple(map(float, cfg["mean"])),
                         std=tuple(map(float, cfg["std"])))


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


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
        raise ValueError(f"{img.mode!r} pixels (32-bit integer or float) have no known value "
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
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess(path: str | Path, spec: TransformSpec) -> torch.Tensor:
    return to_tensor(load_image(path, spec), spec)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")


def cpu_flags() -> str:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo does not exist."""
    if not os.path.exists("/proc/cpuinfo"):
        return ""
    with open("/proc/cpuinfo") as fh:
        return next((line for line in fh if line.startswith("flags")), "")


# oneDNN's ISA caps below AVX512_CORE_BF16: with one of them in ONEDNN_MAX_CPU_ISA, torch's and
# OpenVINO's kernels run as on a CPU without bf16 (an Ice Lake, say), whatever this CPU has.
_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def onednn_isa_cap() -> str:
    """The instruction-set cap given to oneDNN (``ONEDNN_MAX_CPU_ISA``, or its old name), if any."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper()


def isa_capped_below_bf16() -> bool:
    """Has the user capped oneDNN's instruction set below bf16?"""
    return onednn_isa_cap() in _ISA_WITHOUT_BF16


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return False  # fp16 is the MPS half precision that every macOS version runs
    # Without native bf16 (AMX or avx512_bf16) autocast emulates it and is slower than fp32.
    if isa_capped_below_bf16():
        return False
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple's GPU (MPS), else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if device == "mps" and not mps_available():
        raise ValueError("--device mps asked for, but torch sees no Apple GPU (MPS needs "
                           "Apple silicon, macOS 12.3+ and an arm64 Python)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` stays lossless or validated: bf16 where the hardware runs it natively (AMX /
    avx512-bf16 CPUs, recent CUDA cards), fp16 on older CUDA cards and Apple GPUs, else fp32.
    int8 is never chosen by ``auto`` here: a cache is quantized only when asked (the demo alone
    picks it on CPUs without bf16; see README, "Stage one at speed")."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type in ("cuda", "mps") else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ValueError("--precision int8 runs on the CPU (OpenVINO); pass --device cpu")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 is for GPUs (cuda, mps); on a CPU use bf16, int8 or "
                         "fp32")
    return precision


def default_batch_size(device: torch.device) -> int:
    """32 on CPUs (bigger batches gain nothing there); on a GPU, enough images to fill it."""
    if device.type == "cuda":
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return 256 if gib >= 20 else 128 if gib >= 8 else 64
    return 64 if device.type == "mps" else 32
