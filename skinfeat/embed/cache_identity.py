"""The cache's identity and attributes: the errors, the typed ``CacheIdentity``, and the parsers
of the JSON file attributes (``identity``, ``failures``) that every reader goes through.

An identity written by skinfeat is a ``CacheIdentity``: versioned (``format``), strict on unknown
keys and types. Identities from before the format key (skinfeat-cache/1 files) read with
defaults for the keys they lack. An identity of the user's own (any JSON object without
skinfeat's ``weights`` + ``preprocessing``) is kept as given, its known keys type-checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import SkinfeatError
from ..schema import SchemaError, dump, parse

FORMAT = "skinfeat-cache/1"


class CacheError(SkinfeatError, RuntimeError):
    """A cache that cannot be used as asked (identity mismatch, missing rows, locked, bad file)."""


def source_identities(identity: dict | None) -> list[dict]:
    """The identity of each embedding source (a fused cache's parts, in order; else itself)."""
    identity = identity or {}
    return list(identity["fused"]) if "fused" in identity else [identity]


def random_weights(identity: dict) -> bool:
    """Did the backbone behind these embeddings have random weights (tests, demo, smoke runs)?"""
    return any((part.get("weights") or {}).get("kind") == "random"
               for part in source_identities(identity))



def examples(items, n: int = 5) -> str:
    """The first few of ``items``, for a one-line error."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def parse_json_attr(raw, source: str | Path, name: str):
    """A JSON file attribute (``identity``, ``failures``); bad JSON is an error naming both."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise CacheError(f"{source}: attribute '{name}' must be a JSON string, got "
                         f"{type(raw).__name__}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CacheError(f"{source}: attribute '{name}' is not valid JSON ({exc})") from None


# The identity keys skinfeat reads, with the JSON type each must have.
IDENTITY_TYPES = {"backbone": (str, "a string"), "precision": (str, "a string"),
                  "weights": (dict, "an object"), "preprocessing": (dict, "an object"),
                  "views": (list, "a list of view names"), "fused": (list, "a list of objects"),
                  "dims": (list, "a list of widths")}


def parse_identity(raw, source: str | Path) -> dict:
    """The ``identity`` attribute: a JSON object whose known keys have the types read here;
    one written by skinfeat must also parse as a ``CacheIdentity``."""
    ident = parse_json_attr(raw, source, "identity")
    if not isinstance(ident, dict):
        raise CacheError(f"{source}: attribute 'identity' must be a JSON object, got "
                         f"{type(ident).__name__}")
    for key, (kind, what) in IDENTITY_TYPES.items():
        value = ident.get(key, kind())
        items_ok = {"views": str, "fused": dict, "dims": int}.get(key)
        if not isinstance(value, kind) or (items_ok and not all(
                isinstance(v, items_ok) and not isinstance(v, bool) for v in value)):
            raise CacheError(f"{source}: attribute 'identity': '{key}' must be {what}, got "
                             f"{json.dumps(value)[:60]}")
    # Typed: skinfeat's own identities (and the parts of a fused one), strictly.
    if is_skinfeat_identity(ident):
        CacheIdentity.from_dict(ident, source)
    for part in ident.get("fused", []) if isinstance(ident.get("fused"), list) else []:
        if isinstance(part, dict) and is_skinfeat_identity(part):
            CacheIdentity.from_dict(part, source)
    return ident


def parse_failures(raw, source: str | Path) -> dict[str, str]:
    """The ``failures`` attribute: image id -> why it could not be embedded (a JSON list of
    [image_id, reason] pairs, as skinfeat writes it, or an object id -> reason). The one reader
    of it: extract, merge, fusion, training and ``cache info`` all go through here."""
    if raw is None:
        return {}
    value = parse_json_attr(raw, source, "failures")
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs):
        raise CacheError(f"{source}: attribute 'failures' must be a JSON list of "
                         f"[image_id, reason] pairs, got {str(raw)[:60]}")
    return dict(pairs)


def identity_diff(have: dict, want: dict) -> list[str]:
    keys = sorted(set(have) | set(want))
    return [f"{k}: cache has {have.get(k)!r}, asked for {want.get(k)!r}"
            for k in keys if have.get(k) != want.get(k)]



IDENTITY_FORMAT = "skinfeat-identity/2"
FAMILIES = ("timm", "open_clip", "hf")
# Keys that say where or by what an identity was made, not which embedding function it is:
# ignored when two identities are compared (a moved folder, a newer skinfeat, a known width).
HINT_KEYS = ("format", "location", "skinfeat_version", "embed_dim")


@dataclass(frozen=True)
class WeightsIdentity:
    """Which weights: ``pretrained`` (the hub), ``file`` (a checkpoint), ``local`` (a model
    folder), ``random`` (seeded init); checkpoints and folders by the sha256 of their files."""
    kind: Literal["pretrained", "file", "local", "random"]
    sha256: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class PreprocessingIdentity:
    """The image transform (``transform.TransformSpec``'s fields)."""
    size: int = 224
    resize: Literal["squash", "crop"] = "squash"
    crop_pct: float = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    draft: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationIdentity:
    """The calibration set of an int8 model (engine, number of images, content hash)."""
    engine: str
    images: int
    sha256: str


_LATER_DEFAULTS: dict = {"layers": "last", "average_views": []}


@dataclass(frozen=True)
class CacheIdentity:
    """What makes two embeddings comparable; a cache refuses rows of another identity."""
    backbone: str                         # portable name: timm name, open_clip:M[:P], hf:ORG/NAME
    weights: WeightsIdentity
    preprocessing: PreprocessingIdentity
    precision: str
    family: Literal[FAMILIES] = "timm"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    pool: str = "avg"     # timm: avg|gem|avgmax; open_clip: proj|cls|mean; hf: cls|mean|proj
    layers: str = "last"                  # last|last2|last3: stages pooled (pooling.py)
    views: tuple[str, ...] = ()
    # views whose embeddings were averaged with the image's into the stored embedding
    average_views: tuple[str, ...] = ()
    view_transform: str | None = None
    calibration: CalibrationIdentity | None = None
    shard: str | None = None
    embed_dim: int | None = None
    skinfeat_version: str | None = None
    location: str | None = None           # where local weights were found (a hint for predict)
    format: str = IDENTITY_FORMAT

    def to_dict(self) -> dict:
        """The JSON object stored in caches and bundles (unset optional keys left out, and
        the stage-one options added later left out at their defaults, so a default cache's
        identity reads as it did before they existed)."""
        d = dump(self)
        return {k: v for k, v in d.items() if v is not None
                and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = "identity") -> CacheIdentity:
        """Strict: an unknown key or a wrong type is a one-line ``CacheError`` naming ``source``."""
        fmt = data.get("format", IDENTITY_FORMAT) if isinstance(data, dict) else None
        if fmt != IDENTITY_FORMAT:
            raise CacheError(f"{source}: attribute 'identity': format {fmt!r} is not "
                             f"{IDENTITY_FORMAT!r} (made by a newer skinfeat?)")
        try:
            return parse(cls, data, str(source), at="identity")
        except SchemaError as exc:
            raise CacheError(str(exc)) from None

    def key(self) -> dict:
        """The identity as compared: without the hint keys (``HINT_KEYS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in HINT_KEYS}


def is_skinfeat_identity(ident: dict) -> bool:
    """Written by skinfeat (typed), as opposed to a user's own or a fused cache's identity."""
    return "format" in ident or ("weights" in ident and "preprocessing" in ident
                                 and "fused" not in ident)


def comparable(ident: dict | None) -> dict:
    """An identity as compared between caches, bundles and requests: skinfeat's normalised
    (defaults filled, hint keys dropped), so an old cache equals a new one of the same encoder;
    a user's own as given."""
    ident = ident or {}
    if "fused" in ident:
        return {**ident, "fused": [comparable(p) for p in ident["fused"]]}
    if is_skinfeat_identity(ident):
        return CacheIdentity.from_dict(ident).key()
    return dict(ident)


def failures_attr(failures: dict[str, str]) -> str:
    """The ``failures`` attribute as written: a sorted JSON list of [image_id, reason]."""
    return json.dumps(sorted(failures.items()))
