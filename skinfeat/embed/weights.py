"""Where an encoder's weights come from, stamped into every cache and report so nobody mistakes
random-weight numbers for real ones:
  * ``pretrained``: the family's pretrained weights (Hugging Face hub, cached by huggingface_hub);
  * ``file``: a local checkpoint, loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``;
  * ``local``: a local model folder (config + weights), identified by the sha256 of its files;
  * ``random``: seeded random init, for offline tests and the demo.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError, MissingFileError, SkinfeatError

# The offline routes, in the order every message names them: a model folder first (it carries
# its own config; a bare checkpoint is loaded into the library's default config for the name).
OFFLINE_ROUTES = ("model folder: --backbone local-dir:FOLDER (timm, open_clip or transformers; "
                  "or open_clip:FOLDER, hf:FOLDER), or a bare checkpoint: --weights-file PATH")


class WeightsUnavailable(SkinfeatError, RuntimeError):
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
            raise MissingFileError(f"{path}: weights file not found")
        return WeightSource("file", str(path.resolve()), sha256_file(path))
    if weights not in ("pretrained", "random"):
        raise InputError(f"--weights must be 'pretrained' or 'random', got {weights!r}")
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


def offline_message(name: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first if len(first) <= 120 else first[:117] + "..."
    return (f"pretrained weights for {name} could not be loaded ({first}); offline, pass a "
            f"{OFFLINE_ROUTES}, or connect to the network once, or --weights random for a smoke "
            "test")
