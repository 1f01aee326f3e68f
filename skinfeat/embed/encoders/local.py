"""Local model folders, identified by content: the sha256 of their weight and config files, and
a portable name (the architecture and pretrained tag a timm folder states, else the folder's
name), so that a bundle moves between machines and another folder at the same path is another
encoder.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import MissingFileError

# The files that make the model: weights and the configs that shape it (not READMEs).
CONTENT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONTENT_NAMES = ("config.json", "open_clip_config.json", "preprocessor_config.json")


def content_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.suffix in CONTENT_SUFFIXES or p.name in CONTENT_NAMES))


def folder_sha256(folder: str | Path) -> str:
    """One sha256 over the folder's content files (name and bytes of each, in name order)."""
    folder = Path(folder)
    files = content_files(folder)
    if not any(p.suffix in CONTENT_SUFFIXES for p in files):
        raise MissingFileError(f"{folder}: no weight file (*.safetensors, *.bin, *.pt, *.pth) "
                               "in this model folder")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def timm_folder_name(folder: Path) -> str | None:
    """``architecture.tag`` from a timm folder's config.json (e.g. mobilenetv2_100.coral_in1k)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str):
        return None
    tag = (cfg.get("pretrained_cfg") or {}).get("tag")
    return f"{arch}.{tag}" if isinstance(tag, str) and tag else arch


def detect_family(folder: Path) -> str:
    """Which library a folder is for: open_clip (open_clip_config.json), timm (config.json with
    ``architecture``), transformers (config.json with ``model_type``)."""
    from .hf_family import is_hf_folder
    from .open_clip_family import is_open_clip_folder

    if is_open_clip_folder(folder):
        return "open_clip"
    if timm_folder_name(folder):
        return "timm"
    if is_hf_folder(folder):
        return "hf"
    raise MissingFileError(f"{folder}: not a model folder skinfeat knows (needs "
                           "open_clip_config.json, or config.json from timm or transformers)")
