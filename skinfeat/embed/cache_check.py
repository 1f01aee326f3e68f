"""Reading a cache and checking it: ``CacheContents``, the HDF5 read, ``check_contents``.

``read_cache`` is the one way in for every reader, ours or a user's file: one row per unique id,
a width, views of the same rows and width, finite values, well-formed ``identity`` /
``failures``; each problem is one ``CacheError`` naming the file and the dataset or attribute.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .cache_identity import CacheError, examples, parse_failures, parse_identity, random_weights

# Two rows for one image id are "the same embedding" within the float rounding that separates a
# sharded or resumed extract from a single pass (README "Determinism": within 1e-5).
SAME_EMBEDDING: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


@dataclass
class CacheContents:
    image_ids: np.ndarray                       # (N,) str
    embeddings: np.ndarray                      # (N, D) float32
    view_embeddings: np.ndarray | None = None   # (N, V, D) float32
    identity: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    source: str = "cache"                       # the file(s), for error messages

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def views(self) -> list[str]:
        return list(self.identity.get("views", [])) if self.view_embeddings is not None else []

    @property
    def failures(self) -> dict[str, str]:
        """Image id -> reason, for images that could not be embedded (``failures`` attribute)."""
        return parse_failures(self.attrs.get("failures"), self.source)

    def provenance(self, path: str | Path) -> dict:
        """Where the embeddings came from, for reports: file, identity, weight source."""
        return {"cache": str(path), "identity": self.identity,
                "weights": str(self.attrs.get("weights",
                                              "unknown (embeddings made outside skinfeat)")),
                "random_weights": random_weights(self.identity)}

    def rows_for(self, image_ids) -> np.ndarray:
        """Row index of each id; a clear error for ids that are not cached."""
        pos = {iid: i for i, iid in enumerate(self.image_ids)}
        missing = [i for i in image_ids if i not in pos]
        if missing:
            raise CacheError(f"{self.source}: {len(missing)} image(s) have no cached embedding, "
                             f"e.g. {examples(missing)}; run skinfeat extract on this data first")
        return np.fromiter((pos[i] for i in image_ids), dtype=np.int64, count=len(image_ids))


def same_rows(a: CacheContents, i: np.ndarray, b: CacheContents, j: np.ndarray) -> np.ndarray:
    """Per pair: do row ``i[k]`` of ``a`` and row ``j[k]`` of ``b`` hold the same embedding (and
    views), up to float rounding (``SAME_EMBEDDING``)?"""
    same = np.isclose(a.embeddings[i], b.embeddings[j], **SAME_EMBEDDING).all(axis=1)
    if a.view_embeddings is not None and b.view_embeddings is not None:
        same &= np.isclose(a.view_embeddings[i], b.view_embeddings[j],
                           **SAME_EMBEDDING).all(axis=(1, 2))
    return same


def _dataset(f: h5py.File, path: Path, name: str) -> h5py.Dataset:
    if not isinstance(f.get(name), h5py.Dataset):
        raise CacheError(f"{path}: not an embedding cache (no '{name}' dataset)")
    return f[name]


def _read_ids(f: h5py.File, path: Path) -> np.ndarray:
    ds = _dataset(f, path, "image_id")
    if ds.ndim != 1:
        raise CacheError(f"{path}: 'image_id' must be 1-D (one id per row), got shape {ds.shape}")
    try:
        if ds.dtype.kind in "OS":
            ids = ds.asstr()[()]
        elif ds.dtype.kind in "iu":       # integer ids, as their decimal text
            ids = ds[()].astype(str)
        else:
            raise CacheError(f"{path}: 'image_id' must hold strings, got {ds.dtype}")
    except (TypeError, ValueError) as exc:  # not text, or not UTF-8
        raise CacheError(f"{path}: 'image_id' must hold UTF-8 strings ({exc})") from None
    return np.asarray(ids, dtype=object)


def _read_values(f: h5py.File, path: Path, name: str, shape: str) -> np.ndarray:
    ds = _dataset(f, path, name)
    if ds.dtype.kind not in "fiu":
        raise CacheError(f"{path}: '{name}' must hold numbers, got {ds.dtype}")
    if ds.ndim != len(shape.split(",")):
        raise CacheError(f"{path}: '{name}' must be ({shape}), got shape {ds.shape}")
    with np.errstate(over="ignore"):      # float64 beyond float32's range: inf, refused below
        return np.asarray(ds[()], dtype=np.float32)


def check_contents(c: CacheContents) -> CacheContents:
    """Everything a reader relies on, checked once where a cache is read: one row per id, ids
    unique, a width, views of the same rows and width, finite values, well-formed attributes.
    Each problem is a one-line ``CacheError`` naming the file and the dataset or attribute."""
    src, ids, emb, views = c.source, c.image_ids, c.embeddings, c.view_embeddings
    if len(emb) != len(ids):
        raise CacheError(f"{src}: 'embedding' has {len(emb)} row(s) but 'image_id' has "
                         f"{len(ids)} id(s); it needs one row per id")
    if len(ids) == 0:
        raise CacheError(f"{src}: no rows ('image_id' and 'embedding' are empty); a cache needs "
                         "at least one embedded image")
    if emb.shape[1] == 0:
        raise CacheError(f"{src}: 'embedding' has width 0 (shape {emb.shape}); each row needs "
                         "at least one value")
    if views is not None and (views.shape[0] != len(ids) or views.shape[2] != emb.shape[1]
                              or views.shape[1] == 0):
        raise CacheError(f"{src}: 'view_embedding' must be (N, V, D) = ({len(ids)}, V >= 1, "
                         f"{emb.shape[1]}), the rows and width of 'embedding'; got {views.shape}")
    blank = [i for i, iid in enumerate(ids) if not str(iid).strip()]
    if blank:
        raise CacheError(f"{src}: 'image_id' has {len(blank)} empty id(s) (rows "
                         f"{examples(blank)})")
    for name, values in (("embedding", emb), ("view_embedding", views)):
        if values is None:
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            raise CacheError(f"{src}: {int(bad.sum())} row(s) of '{name}' hold NaN or inf (or "
                             f"values beyond float32's range), image id(s) "
                             f"{examples(ids[bad])}; re-extract them or drop those rows")
    key = ids.astype(str)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(first) < len(key):
        repeat = np.flatnonzero(first[inverse] != np.arange(len(key)))
        differ = ~same_rows(c, repeat, c, first[inverse[repeat]])
        dups = list(dict.fromkeys(key[repeat]))
        changed = list(dict.fromkeys(key[repeat[differ]]))
        what = ("with different embeddings" if len(changed) == len(dups) else
                f"{len(changed)} of them with different embeddings (e.g. {examples(changed)})"
                if changed else "each time with the same embedding")
        raise CacheError(f"{src}: {len(dups)} image id(s) occur more than once in 'image_id' "
                         f"(e.g. {examples(dups)}), {what}; keep one row per image id")
    ident = parse_identity(c.attrs["identity"], src) if "identity" in c.attrs else {}
    named = ident.get("views") or []
    if views is not None and named and len(named) != views.shape[1]:
        raise CacheError(f"{src}: attribute 'identity' names {len(named)} view(s) "
                         f"({examples(named)}) but 'view_embedding' holds {views.shape[1]}")
    parse_failures(c.attrs.get("failures"), src)  # now, so a bad one fails at read time
    c.identity = ident
    return c


def read_cache(path: str | Path) -> CacheContents:
    """Load a cache (ours, or any HDF5 file with ``image_id`` and ``embedding`` datasets), checked
    by ``check_contents``: every reader (stage two, predict, evaluate, cache info/merge) gets
    one validated view of it, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: cache file not found; create it with skinfeat extract")
    try:
        with h5py.File(path, "r") as f:
            ids = _read_ids(f, path)
            emb = _read_values(f, path, "embedding", "N, D")
            views = _read_values(f, path, "view_embedding", "N, V, D") \
                if "view_embedding" in f else None
            attrs = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                     for k, v in f.attrs.items()}
    except OSError as exc:
        raise CacheError(f"{path}: unreadable HDF5 file ({exc})") from exc
    return check_contents(CacheContents(ids, emb, views, {}, attrs, str(path)))


def read_identity(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("identity")
    except OSError as exc:
        raise CacheError(f"{path}: unreadable HDF5 file ({exc})") from exc
    return parse_identity(raw, path) if raw is not None else {}


def partial_identity(partial: Path) -> dict | None:
    f = partial / "identity.json"
    return json.loads(f.read_text()) if f.is_file() else None


def stored_identity(path: str | os.PathLike) -> dict | None:
    """The identity of a cache file, or of its unfinished work (``NAME.h5.partial/``)."""
    have = read_identity(Path(path))
    return have if have is not None else partial_identity(Path(f"{path}.partial"))
