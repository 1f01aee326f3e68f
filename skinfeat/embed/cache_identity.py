"""The cache's identity and attributes: the errors, and the parsers of the JSON file attributes
(``identity``, ``failures``) that every reader goes through."""
from __future__ import annotations

import json
from pathlib import Path

FORMAT = "skinfeat-cache/1"


class CacheError(RuntimeError):
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
    """The ``identity`` attribute: a JSON object whose known keys have the types read here."""
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

