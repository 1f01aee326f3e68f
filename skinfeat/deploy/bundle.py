"""Save / load a trained model: ``model.safetensors`` (or LightGBM's text model) + ``config.json``.

Nothing is pickled: a bundle someone sends you can be loaded without running their code. The
config carries everything predict needs: class order, the fitted metadata encoder, the head
architecture, the backbone identity (name, weight source, transform, precision) and the
calibration temperature.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write as _atomic_write, disk_full_hint
from ..embed.cache import source_identities

log = logging.getLogger(__name__)

FORMAT = "skinfeat-bundle/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LGBM = "model.lgbm.txt"
QUANTIZED = "int8"   # bundled int8 backbones: int8/<key>/model.xml, .bin
REQUIRED = ("format", "model_type", "classes", "encoder", "backbone", "head")


class BundleError(ValueError):
    """A bundle that is missing, incomplete or does not match its own config."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename over ``path``: a reader (or a kill) never sees half a file."""
    try:
        _atomic_write(path, write)
    except (OSError, SafetensorError) as exc:  # safetensors reports its own I/O errors
        raise BundleError(f"{path}: could not write{disk_full_hint(exc)}: {exc}; "
                          "the previous file, if any, is left intact") from exc


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_bundle(out: Path, config: dict, state: dict[str, torch.Tensor] | None = None,
                lgbm_model: str | None = None) -> None:
    """Write weights first and config last, each atomically: a config means a complete bundle."""
    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    if lgbm_model is not None:
        atomic_write_text(out / LGBM, lgbm_model)
    atomic_write_text(out / CONFIG, json.dumps({"format": FORMAT, **config}, indent=2))


def bundle_quantized(out: Path, identity: dict | None) -> None:
    """Copy the int8 backbones the model needs into ``out/int8``: predict finds them there on a
    machine that never ran the quantization (its own store is looked at first)."""
    from ..embed.engines import copy_quantized

    for ident in source_identities(identity):
        if ident.get("precision") == "int8" and not copy_quantized(ident, out / QUANTIZED):
            log.warning("%s: the int8 model of %s is not in this machine's store, so it is not "
                        "bundled; predict on raw images will need it there", out,
                        ident.get("backbone"))


def load_config(run: Path) -> dict:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise BundleError(f"{path}: no trained model here (config.json missing); "
                          "train one with skinfeat fit-head")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{path}: not a bundle config (a JSON {type(config).__name__}, "
                          "expected an object)")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise BundleError(f"{path}: missing key(s) {', '.join(missing)}")
    if config["format"] != FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {config['format']!r}")
    return config


def load_state(run: Path) -> dict[str, torch.Tensor]:
    path = Path(run) / WEIGHTS
    if not path.is_file():
        raise BundleError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: unreadable weights ({exc})") from exc


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with a one-line error on missing, extra or mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise BundleError(f"{source}: weights do not match config.json (missing {missing[:3]}, "
                          f"unexpected {extra[:3]}, shape mismatch {shapes[:2]})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # NaN weights would give NaN probabilities for every image, silently
        raise BundleError(f"{source}: weights contain NaN or inf ({', '.join(bad[:3])})")
    model.load_state_dict(state)
