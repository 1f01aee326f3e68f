"""Save / load a trained model: ``model.safetensors`` (or LightGBM's text model) + ``config.json``.

Nothing is pickled: a bundle someone sends you can be loaded without running their code. The
config carries everything predict needs: class order, the fitted metadata encoder, the head
architecture, the backbone identity (name, weight source, transform, precision) and the
calibration temperature.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_artifact
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
    # safetensors reports its own I/O errors
    write_artifact(path, write, errors=(OSError, SafetensorError), error=BundleError)


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
    """A bundle's ``config.json``, parsed and checked (``check_config``)."""
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
    if config["format"] != FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {config['format']!r}")
    check_config(config, path)
    return config


# ---------------------------------------------------------------- checking a config.json
# The plain values of a bundle config, each checked where it is read: an edited config must be
# refused with the file and the key, never predict NaN or a silently different model. The
# encoder and the calibrator check their own state (``MetadataEncoder.from_dict``,
# ``Calibrator.from_dict``). Messages follow ``skinfeat.schema``'s form (``FILE: key 'K':
# expected ..., got ...``), so these checks can move onto its typed parser.
MODEL_TYPES = ("head", "lgbm", "linear", "ensemble")


def _given(value: object) -> str:
    text = "null" if value is None else json.dumps(value) if isinstance(
        value, (bool, int, float, str, list, dict)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(path: Path, key: str, expected: str, value: object) -> BundleError:
    return BundleError(f"{path}: key '{key}': expected {expected}, got {_given(value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _count(path: Path, key: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _fail(path, key, f"an integer >= {low}", value)
    return value


def _names(path: Path, key: str, value: object, least: int = 1) -> list[str]:
    """A list of at least ``least`` distinct non-empty strings."""
    if not isinstance(value, list) or len(value) < least or \
            not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, key, f"a list of at least {least} non-empty strings", value)
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise _fail(path, key, "distinct names", f"{dupes[0]} twice")
    return value


@dataclass(frozen=True)
class HeadDims:
    """The stage-two model's input and output sizes (``head`` of a head or LightGBM bundle)."""
    embed_dim: int
    meta_dim: int
    n_classes: int

    @classmethod
    def parse(cls, head: dict, path: Path) -> "HeadDims":
        # meta_dim 0 is a model trained without metadata fields.
        return cls(*(_count(path, f"head.{k}", head.get(k), low)
                     for k, low in (("embed_dim", 1), ("meta_dim", 0), ("n_classes", 2))))


def check_config(config: dict, path: Path) -> None:
    """Refuse a config whose values cannot describe a working model, naming the key."""
    kind = config["model_type"]
    if kind not in MODEL_TYPES:
        raise _fail(path, "model_type", "one of " + ", ".join(MODEL_TYPES), kind)
    classes = _names(path, "classes", config["classes"], least=2)
    head = config["head"]
    if not isinstance(head, dict):
        raise _fail(path, "head", "a table", head)
    if not isinstance(config["backbone"], (dict, type(None))):
        raise _fail(path, "backbone", "a table or null", config["backbone"])
    if not isinstance(config.get("tta", False), bool):
        raise _fail(path, "tta", "true or false", config["tta"])
    if kind == "ensemble":
        _count(path, "head.embed_dim", head.get("embed_dim"), 1)
        for i, name in enumerate(_names(path, "members", config.get("members"))):
            # A member is a folder beside config.json, never a path that leaves the bundle.
            if Path(name).name != name or name in (".", "..") or "\\" in name:
                raise _fail(path, f"members[{i}]", "a folder name inside the bundle", name)
            if not (path.parent / name / CONFIG).is_file():
                raise _fail(path, f"members[{i}]", f"a bundle folder beside {CONFIG} (there "
                            f"is no {name}/{CONFIG})", name)
        return
    if not isinstance(config["encoder"], dict):
        raise _fail(path, "encoder", "a table (the fitted metadata encoder)", config["encoder"])
    dims = HeadDims.parse(head, path)
    if dims.n_classes != len(classes):
        raise _fail(path, "head.n_classes", f"{len(classes)} (the number of classes)",
                    dims.n_classes)
    threshold = config.get("threshold")
    if threshold is not None and not (_is_number(threshold) and 0 <= threshold <= 1):
        raise _fail(path, "threshold", "a number in [0, 1] or null", threshold)
    temperature = config.get("temperature")
    if temperature is not None and not (_is_number(temperature) and temperature > 0):
        raise _fail(path, "temperature", "a number > 0", temperature)


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
