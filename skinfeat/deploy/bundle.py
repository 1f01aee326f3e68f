"""Save / load a trained model: ``model.safetensors`` (or LightGBM's text model) + ``config.json``.

Nothing is pickled: a bundle someone sends you can be loaded without running their code. The
config carries everything predict needs: class order, the fitted metadata encoder, the head
architecture, the backbone identity (name, weight source, transform, precision) and the
calibration temperature.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_artifact
from ..embed.cache import source_identities
from .bundle_config import (  # noqa: F401
    FORMAT,
    OLDER,
    BundleConfig,
    BundleError,
    EnsembleConfig,
    HeadDims,
    migrate,
    parse_config,
)

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"   # a safetensors model's weights (its class may name another)
QUANTIZED = "int8"   # bundled int8 backbones: int8/<key>/model.xml, .bin
REQUIRED = ("format", "model_type", "classes", "encoder", "backbone", "head")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename over ``path``: a reader (or a kill) never sees half a file."""
    # safetensors reports its own I/O errors
    write_artifact(path, write, errors=(OSError, SafetensorError), error=BundleError)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_bundle(out: Path, config: dict, state: dict[str, torch.Tensor] | None = None,
                text: str | None = None, weights_file: str = WEIGHTS,
                files: dict[str, str | dict] | None = None) -> None:
    """Write weights (a state dict or ``text``, to ``weights_file``; or ``files``: a model's
    folder of them, relative path -> text or state dict) first and config last, each
    atomically: a config means a complete bundle."""
    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        atomic_write(out / weights_file, lambda tmp: save_file(tensors, str(tmp)))
    if text is not None:
        atomic_write_text(out / weights_file, text)
    for name, content in (files or {}).items():
        path = out / inside(name, out / CONFIG)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            atomic_write_text(path, content)
        else:
            tensors = {k: v.detach().contiguous() for k, v in content.items()}
            atomic_write(path, partial(_save_tensors, tensors))
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


def load_typed(run: Path) -> tuple[dict, BundleConfig | EnsembleConfig]:
    """A bundle's ``config.json``: the table as written and its typed config (``bundle_config``);
    every error names the file (and the key)."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise BundleError(f"{path}: no trained model here (config.json missing); "
                          "train one with skinfeat fit-head")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column "
                          f"{exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: not UTF-8 text (byte offset {exc.start})") \
            from exc
    except RecursionError as exc:
        raise BundleError(f"{path}: not valid JSON: nested too deeply") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{path}: not a bundle config (a JSON {type(config).__name__}, "
                          "expected an object)")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise BundleError(f"{path}: missing key(s) {', '.join(missing)}")
    config = migrate(config)   # an older format, upgraded in one place
    if config["format"] != FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {config['format']!r}")
    typed = parse_config(config, str(path))
    if isinstance(typed, EnsembleConfig):
        for i, name in enumerate(typed.members):
            # A member is a folder beside config.json, never a path that leaves the bundle.
            if Path(name).name != name or name in (".", "..") or "\\" in name:
                raise BundleError(f"{path}: key 'members[{i}]': expected a folder name inside "
                                  f"the bundle, got {name!r}")
            if not (path.parent / name / CONFIG).is_file():
                raise BundleError(f"{path}: key 'members[{i}]': expected a bundle folder beside "
                                  f"{CONFIG} (there is no {name}/{CONFIG}), got {name!r}")
    return config, typed


def write_bundle(out: Path, config: BundleConfig | EnsembleConfig, model=None,
                 quantized: bool = True) -> None:
    """The one bundle writer, for a single model and an ensemble: the int8 backbones it needs
    (``quantized``), the model's weights (``model.to_bundle()``: a safetensors state dict or a
    text blob, in the file its class names), then ``config.json``. The config is checked against the
    schema first:
    a bundle that would not load is never written."""
    d = config.to_dict()
    if model is not None:
        state, weights = model.to_bundle()
        if state:
            d["state"] = state
    type(config).from_dict(d, str(Path(out) / CONFIG))
    if quantized:
        bundle_quantized(out, config.backbone)
    if model is None:
        save_bundle(out, d)
    elif model.weights_format == "text":
        save_bundle(out, d, text=weights, weights_file=model.file_name())
    elif model.weights_format == "folder":   # an ensemble: each member in a folder of its own
        save_bundle(out, d, files=weights)
    else:
        save_bundle(out, d, state=weights, weights_file=model.file_name())


def inside(name: str, source: Path) -> str:
    """``name``, a path inside the bundle (folders joined by /), never one that leaves it."""
    parts = name.split("/")
    if not name or "\\" in name or any(p in ("", ".", "..") for p in parts) or \
            Path(name).is_absolute():
        raise BundleError(f"{source}: expected a file inside the bundle, got {name!r}")
    return name


def read_file(run: Path, name: str) -> str | dict[str, torch.Tensor]:
    """A file of a ``folder`` model's bundle (``to_bundle``'s files): a state dict for
    ``.safetensors``, else its text."""
    path = Path(run) / inside(name, Path(run) / CONFIG)
    if name.endswith(".safetensors"):
        return load_state(path.parent, path.name)
    if not path.is_file():
        raise BundleError(f"{path}: file missing")
    return path.read_text(encoding="utf-8")


def load_state(run: Path, weights_file: str = WEIGHTS) -> dict[str, torch.Tensor]:
    path = Path(run) / weights_file
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


def _save_tensors(tensors: dict, tmp: Path) -> None:
    """safetensors' ``save_file`` into ``atomic_write``'s temporary path."""
    save_file(tensors, str(tmp))
