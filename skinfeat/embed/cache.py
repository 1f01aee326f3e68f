"""The HDF5 embedding store: plain layout, identity, crash-safe append/resume, merge.

Layout (kept plain so any tool can write or read it):
  * dataset ``image_id``: (N,) UTF-8 strings;
  * dataset ``embedding``: (N, D) float32, row i belongs to ``image_id[i]``;
  * optional dataset ``view_embedding``: (N, V, D) float32, embeddings of deterministic views
    (attribute ``views`` names them, e.g. ``["flip", "rot90"]``);
  * file attributes: ``identity`` (JSON: backbone, weights, preprocessing, precision, views),
    ``versions`` (JSON), ``failures`` (JSON list of [image_id, reason]), ``format`` =
    "skinfeat-cache/1".

Crash safety: the .h5 file is only ever produced by writing a temporary file and renaming it over
the old one, so a reader never sees a half-written cache. Work in progress lives in
``NAME.h5.partial/`` as small chunk files, each also renamed into place; an interrupted run
(Ctrl-C, kill -9) resumes from the chunks. A lock file keeps two writers off one cache.

Validation: ``read_cache`` is the one way in for every reader, ours or a user's file
(``check_contents``): one row per unique id, a width, views of the same rows and width, finite
values, well-formed ``identity`` / ``failures``; each problem is one ``CacheError`` naming the file
and the dataset or attribute. ``merge``: an image in several inputs is kept once when its
embeddings agree within 1e-5, else refused naming both files (never "last wins").
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from filelock import FileLock, Timeout

from ..atomic import atomic_write, disk_full_hint

# Every public name stays importable from here: the readers and tests import them from cache.
from .cache_check import (  # noqa: F401
    SAME_EMBEDDING,
    CacheContents,
    check_contents,
    partial_identity,
    read_cache,
    read_identity,
    same_rows,
    stored_identity,
)
from .cache_identity import (  # noqa: F401
    FORMAT,
    HINT_KEYS,
    IDENTITY_FORMAT,
    IDENTITY_TYPES,
    CacheError,
    CacheIdentity,
    comparable,
    examples,
    failures_attr,
    identity_diff,
    parse_failures,
    parse_identity,
    parse_json_attr,
    random_weights,
    source_identities,
)
from .cache_merge import cache_label, concat, fuse_caches, read_caches  # noqa: F401

log = logging.getLogger(__name__)


def write_cache(path: Path, contents: CacheContents) -> None:
    """Write a whole cache atomically (temp file + rename); the old file survives any failure."""
    order = np.argsort(contents.image_ids.astype(str), kind="stable")  # canonical row order

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image_id", data=contents.image_ids[order].astype(str).astype(object),
                             dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("embedding", data=contents.embeddings[order].astype(np.float32))
            if contents.view_embeddings is not None:
                f.create_dataset("view_embedding",
                                 data=contents.view_embeddings[order].astype(np.float32))
            for k, v in contents.attrs.items():
                f.attrs[k] = v
            f.attrs["identity"] = json.dumps(contents.identity, sort_keys=True)
            f.attrs["format"] = FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, write, fsync=True)
    except OSError as exc:
        raise CacheError(f"{path}: could not write the cache{disk_full_hint(exc)}: {exc}; "
                         "the previous cache is left intact") from exc


class CacheWriter:
    """Append embeddings to a cache with resume; use as a context manager.

    ``done`` holds the ids already embedded (in the cache or in saved chunks), so callers skip
    them. ``finalize`` folds everything into the .h5 file atomically.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, attrs: dict | None = None,
                 chunk_size: int = 256):
        self.path = Path(path)
        self.partial = Path(f"{self.path}.partial")
        self.identity = identity
        self.attrs = dict(attrs or {})
        self.chunk_size = chunk_size
        self._buf_ids: list[str] = []
        self._buf_emb: list[np.ndarray] = []
        self._buf_views: list[np.ndarray] = []
        self.failures: dict[str, str] = {}
        self._new_failures = False
        # filelock: fcntl on POSIX, msvcrt on Windows (fcntl alone would not even import there).
        self._lock = FileLock(f"{self.path}.lock")
        self.done: set[str] = set()

    def __enter__(self) -> CacheWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CacheError(f"{self.path}: another skinfeat extract is writing this cache "
                             f"(lock {self.path}.lock held); wait for it or use another --cache") \
                from None
        try:
            self._check_identity()
            self.done = set(self._existing_ids()) | set(self._chunk_ids())
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
        self._lock.release()

    def _check_identity(self) -> None:
        for source, have in ((self.path, read_identity(self.path)),
                             (self.partial, self._partial_identity())):
            if have is not None and comparable(have) != comparable(self.identity):
                diff = "; ".join(identity_diff(comparable(have), comparable(self.identity)))
                raise CacheError(f"{source}: made with another backbone, weights or "
                                 f"preprocessing ({diff}); use another --cache file")

    def _partial_identity(self) -> dict | None:
        return partial_identity(self.partial)

    def _existing_ids(self) -> list[str]:
        if not self.path.is_file():
            return []
        with h5py.File(self.path, "r") as f:
            return list(f["image_id"].asstr()[()])

    def _chunks(self) -> list[Path]:
        return sorted(self.partial.glob("chunk_*.npz")) if self.partial.is_dir() else []

    def _chunk_ids(self) -> list[str]:
        ids: list[str] = []
        for c in self._chunks():
            with np.load(c, allow_pickle=False) as z:
                ids += z["image_id"].tolist()
                self.failures.update(zip(z["failed_id"].tolist(), z["failed_reason"].tolist(),
                                         strict=False))
        return ids

    def add(self, image_ids: list[str], embeddings: np.ndarray,
            views: np.ndarray | None = None) -> None:
        self._buf_ids += list(image_ids)
        self._buf_emb.append(np.asarray(embeddings, np.float32))
        if views is not None:
            self._buf_views.append(np.asarray(views, np.float32))
        self.done.update(image_ids)
        if len(self._buf_ids) >= self.chunk_size:
            self.flush()

    def add_failure(self, image_id: str, reason: str) -> None:
        self.failures[image_id] = reason
        self._new_failures = True

    def flush(self) -> None:
        """Save buffered rows as one chunk file (temp + rename, so a kill never half-writes)."""
        if not self._buf_ids and not self._new_failures:
            return
        try:
            self._write_chunk()
        except OSError as exc:
            raise CacheError(f"{self.partial}: could not save embeddings{disk_full_hint(exc)}: "
                             f"{exc}; "
                             "chunks saved so far are kept, rerun to resume") from exc
        self._buf_ids, self._buf_emb, self._buf_views = [], [], []
        self._new_failures = False

    def _write_chunk(self) -> None:
        self.partial.mkdir(exist_ok=True)
        ident = self.partial / "identity.json"
        if not ident.is_file():  # renamed into place too: a kill must not leave half a JSON
            text = json.dumps(self.identity, sort_keys=True)
            atomic_write(ident, lambda tmp: tmp.write_text(text))
        n = len(self._chunks())
        dim = self._buf_emb[0].shape[1] if self._buf_emb else 0
        arrays: dict[str, Any] = {
            "image_id": np.array(self._buf_ids, dtype=str),
            "embedding": np.concatenate(self._buf_emb) if self._buf_emb else np.zeros((0, dim)),
            "failed_id": np.array(list(self.failures), dtype=str),
            "failed_reason": np.array(list(self.failures.values()), dtype=str),
        }
        if self._buf_views:
            arrays["view_embedding"] = np.concatenate(self._buf_views)
        atomic_write(self.partial / f"chunk_{n:06d}.npz", lambda tmp: np.savez(tmp, **arrays))

    def finalize(self) -> CacheContents:
        """Fold the existing cache and all chunks into the .h5 file; drop the chunks."""
        self.flush()
        if not self._chunks() and self.path.is_file():  # nothing new: leave the file untouched
            contents = read_cache(self.path)
            self.failures = contents.failures
            return contents
        parts = [read_cache(self.path)] if self.path.is_file() else []
        old_failures = parts[0].failures if parts else {}
        for c in self._chunks():
            with np.load(c, allow_pickle=False) as z:
                parts.append(CacheContents(z["image_id"].astype(object), z["embedding"],
                                           z.get("view_embedding"),
                                           source=str(c)))
        parts = [p for p in parts if len(p.image_ids)]
        if not parts:
            raise CacheError(f"{self.path}: no image could be embedded")
        done: set[str] = set()
        for p in parts:
            done.update(p.image_ids)
        failures = {k: v for k, v in old_failures.items() if k not in done}
        failures.update({k: v for k, v in self.failures.items() if k not in done})
        contents = concat(parts, self.identity)
        contents.attrs = {**self.attrs,
                          "failures": failures_attr(failures)}
        write_cache(self.path, contents)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.failures = failures
        return contents


def merge_caches(inputs: list[str | Path], out: str | Path,
                 overwrite: bool = False) -> CacheContents:
    """Merge shard caches that share one identity into ``out``. An image in several inputs is
    kept once when its embeddings agree (up to float rounding: overlapping shards or reruns);
    different embeddings for one image are an error naming both files (``concat``). An
    existing ``out`` (another encoder's cache, say) is refused unless ``overwrite``."""
    parts = [read_cache(p) for p in inputs]
    base = {k: v for k, v in parts[0].identity.items() if k != "shard"}
    key = {k: v for k, v in comparable(base).items() if k != "shard"}
    for path, part in zip(inputs[1:], parts[1:], strict=False):
        other = {k: v for k, v in comparable(part.identity).items() if k != "shard"}
        if other != key:
            raise CacheError(f"{path}: identity differs from {inputs[0]}: "
                             + "; ".join(identity_diff(other, key)))
    contents = concat(parts, base)
    failures = {}
    for p in parts:
        failures.update(p.failures)
    done = set(contents.image_ids)
    contents.attrs = {k: v for k, v in parts[0].attrs.items() if k not in ("identity", "format")}
    contents.attrs["failures"] = failures_attr({k: v for k, v in failures.items()
                                                if k not in done})
    # after the inputs are checked, so a bad input is named first
    if Path(out).exists() and not overwrite:
        raise CacheError(f"{out}: already exists; pass --overwrite to replace it, or another "
                         "--out")
    write_cache(Path(out), contents)
    return contents
