"""Caches combined: concatenated (resume, merge: one embedding per image, never "last wins")
and fused per image (several encoders as one input)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .cache_check import CacheContents, read_cache, same_rows
from .cache_identity import CacheError, examples, failures_attr
from .sources import look_alike, value_profile

log = logging.getLogger(__name__)


def concat(parts: list[CacheContents], identity: dict) -> CacheContents:
    """Concatenate caches of one identity. An image in several parts must have one embedding
    there (up to float rounding, ``SAME_EMBEDDING``): its first part's row is kept; different
    embeddings are an error naming both files, never a silent choice of one."""
    widths = {p.dim for p in parts}
    if len(widths) > 1:
        a, b = parts[0], next(p for p in parts if p.dim != parts[0].dim)
        raise CacheError(f"{b.source}: {b.dim}-d embeddings, {a.source} has {a.dim}-d ones; "
                         "only caches of one encoder can be merged")
    has_views = [p.view_embeddings is not None for p in parts]
    views = [p.view_embeddings for p in parts if p.view_embeddings is not None]
    if any(has_views) and not all(has_views):
        with_views = parts[has_views.index(True)].source
        raise CacheError(f"{parts[has_views.index(False)].source}: has no 'view_embedding' but "
                         f"{with_views} has; cannot merge caches with and without views")
    if views and len({v.shape[1] for v in views}) > 1:
        raise CacheError(f"{' + '.join(p.source for p in parts)}: the caches hold different "
                         "numbers of views; cannot merge them")
    whole = CacheContents(np.concatenate([p.image_ids for p in parts]),
                          np.concatenate([p.embeddings for p in parts]),
                          np.concatenate(views) if views else None, identity)
    owner = np.concatenate([np.full(len(p.image_ids), k) for k, p in enumerate(parts)])
    key = whole.image_ids.astype(str)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(first) == len(key):
        return whole
    repeat = np.flatnonzero(first[inverse] != np.arange(len(key)))
    ref = first[inverse[repeat]]
    differ = np.flatnonzero(~same_rows(whole, repeat, whole, ref))
    if len(differ):
        one, other = owner[ref[differ[0]]], owner[repeat[differ[0]]]
        pair = differ[(owner[ref[differ]] == one) & (owner[repeat[differ]] == other)]
        raise CacheError(f"{parts[other].source}: {len(pair)} image id(s) are also in "
                         f"{parts[one].source} with a different embedding (e.g. "
                         f"{examples(key[repeat[pair]])}); an image must have one embedding: "
                         "drop it from one of the inputs")
    keep = np.zeros(len(key), bool)
    keep[first] = True
    return CacheContents(whole.image_ids[keep], whole.embeddings[keep],
                         whole.view_embeddings[keep] if whole.view_embeddings is not None
                         else None, identity)


def fuse_caches(parts: list[CacheContents], sources: list[str]) -> CacheContents:
    """Several caches as one: per image, the embeddings concatenated in the given order, over the
    images that every cache has (the others are left out with a count per cache). The identity
    lists each part's identity, width and file (``{"fused": [...], "dims": [...], "sources":
    [...]}``), so a model trained on it can rebuild every backbone in the same order."""
    if len(parts) == 1:
        return parts[0]
    common = set(parts[0].image_ids)
    for p in parts[1:]:
        common &= set(p.image_ids)
    if not common:
        raise CacheError(f"{' + '.join(sources)}: the caches have no image id in common")
    ids = np.array(sorted(common), dtype=object)
    for src, p in zip(sources, parts, strict=False):
        if len(p.image_ids) > len(ids):
            log.warning("%s: %d of its %d image(s) are not in every other cache and are left "
                        "out of the fusion", src, len(p.image_ids) - len(ids), len(p.image_ids))
    rows = [p.rows_for(ids) for p in parts]
    emb = np.concatenate([p.embeddings[r] for p, r in zip(parts, rows, strict=False)], axis=1)
    views = None
    per_part = [p.view_embeddings for p in parts if p.view_embeddings is not None]
    if len(per_part) == len(parts):
        if len({(tuple(p.views), v.shape[1])
                for p, v in zip(parts, per_part, strict=True)}) == 1:
            views = np.concatenate([v[r] for v, r in zip(per_part, rows, strict=False)], axis=2)
        else:
            log.warning("the caches hold different views; the fusion keeps none")
    elif per_part:
        log.warning("only some caches hold view embeddings; the fusion keeps none")
    identity: dict[str, Any] = {"fused": [p.identity for p in parts],
                                "dims": [p.dim for p in parts],
                                "sources": [str(s) for s in sources]}
    alike = look_alike(identity["fused"], identity["dims"])
    if alike:  # neither width nor identity tells these apart: keep what still can
        identity["profiles"] = [value_profile(p.embeddings[r]) if any(k in g for g in alike)
                                else None
                                for k, (p, r) in enumerate(zip(parts, rows, strict=False))]
    if views is not None:
        identity["views"] = parts[0].views
    failures: dict[str, str] = {}
    for p in parts:
        failures.update(p.failures)
    weights = " + ".join(str(p.attrs.get("weights", "unknown (embeddings made outside skinfeat)"))
                         for p in parts)
    return CacheContents(ids, emb, views, identity,
                         {"weights": weights, "failures": failures_attr(failures)},
                         " + ".join(map(str, sources)))


def read_caches(paths) -> CacheContents:
    """One cache file, or several fused per image (``fuse_caches``) in the order given."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise CacheError("no cache file given")
    return fuse_caches([read_cache(p) for p in paths], [str(p) for p in paths])


def cache_label(paths) -> str:
    """How reports name the cache file(s)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return " + ".join(str(p) for p in paths)
