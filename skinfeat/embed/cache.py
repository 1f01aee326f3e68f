"""The HDF5 embedding store: plain layout, identity, crash-safe append/resume, merge.

Layout (kept plain so any tool can write or read it):
  * dataset ``image_id``: (N,) UTF-8 strings;
  * dataset ``embedding``: (N, D) float32, row i belongs to ``image_id[i]``;
  * optional dataset ``view_embedding``: (N, V, D) float32, embeddings of deterministic views
    (attribute ``views`` names them, e.g. ``["flip", "rot90"]``);
  * file attributes: ``identity`` (JSON: backbone, weights, preprocessing, precision, views),
    ``versions`` (JSON), ``failures`` (JSON list of [image_id, reason]), ``format`` = "skinfeat-cache/1".

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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock, Timeout

from ..atomic import atomic_write, disk_full_hint

log = logging.getLogger(__name__)

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


# Two rows for one image id are "the same embedding" within the float rounding that separates a
# sharded or resumed extract from a single pass (README "Determinism": within 1e-5).
SAME_EMBEDDING = {"rtol": 1e-5, "atol": 1e-5}


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


def stored_identity(path: str | Path) -> dict | None:
    """The identity of a cache file, or of its unfinished work (``NAME.h5.partial/``)."""
    have = read_identity(Path(path))
    return have if have is not None else partial_identity(Path(f"{path}.partial"))


def identity_diff(have: dict, want: dict) -> list[str]:
    keys = sorted(set(have) | set(want))
    return [f"{k}: cache has {have.get(k)!r}, asked for {want.get(k)!r}"
            for k in keys if have.get(k) != want.get(k)]


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

    def __init__(self, path: str | Path, identity: dict, attrs: dict | None = None,
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

    def __enter__(self) -> "CacheWriter":
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
            if have is not None and have != self.identity:
                diff = "; ".join(identity_diff(have, self.identity))
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
                self.failures.update(zip(z["failed_id"].tolist(), z["failed_reason"].tolist()))
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
        arrays = {
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
                                           z["view_embedding"] if "view_embedding" in z else None,
                                           source=str(c)))
        parts = [p for p in parts if len(p.image_ids)]
        if not parts:
            raise CacheError(f"{self.path}: no image could be embedded")
        done = set()
        for p in parts:
            done.update(p.image_ids)
        failures = {k: v for k, v in old_failures.items() if k not in done}
        failures.update({k: v for k, v in self.failures.items() if k not in done})
        contents = concat(parts, self.identity)
        contents.attrs = {**self.attrs,
                          "failures": json.dumps(sorted(failures.items()))}
        write_cache(self.path, contents)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.failures = failures
        return contents


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
    if any(has_views) and not all(has_views):
        with_views = parts[has_views.index(True)].source
        raise CacheError(f"{parts[has_views.index(False)].source}: has no 'view_embedding' but "
                         f"{with_views} has; cannot merge caches with and without views")
    if all(has_views) and len({p.view_embeddings.shape[1] for p in parts}) > 1:
        raise CacheError(f"{' + '.join(p.source for p in parts)}: the caches hold different "
                         "numbers of views; cannot merge them")
    whole = CacheContents(np.concatenate([p.image_ids for p in parts]),
                          np.concatenate([p.embeddings for p in parts]),
                          np.concatenate([p.view_embeddings for p in parts])
                          if all(has_views) else None, identity)
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


def merge_caches(inputs: list[str | Path], out: str | Path) -> CacheContents:
    """Merge shard caches that share one identity into ``out``. An image in several inputs is
    kept once when its embeddings agree (up to float rounding: overlapping shards or reruns);
    different embeddings for one image are an error naming both files (``concat``)."""
    parts = [read_cache(p) for p in inputs]
    base = {k: v for k, v in parts[0].identity.items() if k != "shard"}
    for path, part in zip(inputs[1:], parts[1:]):
        other = {k: v for k, v in part.identity.items() if k != "shard"}
        if other != base:
            raise CacheError(f"{path}: identity differs from {inputs[0]}: "
                             + "; ".join(identity_diff(other, base)))
    contents = concat(parts, base)
    failures = {}
    for p in parts:
        failures.update(p.failures)
    done = set(contents.image_ids)
    contents.attrs = {k: v for k, v in parts[0].attrs.items() if k not in ("identity", "format")}
    contents.attrs["failures"] = json.dumps(sorted((k, v) for k, v in failures.items()
                                                   if k not in done))
    write_cache(Path(out), contents)
    return contents


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
    for src, p in zip(sources, parts):
        if len(p.image_ids) > len(ids):
            log.warning("%s: %d of its %d image(s) are not in every other cache and are left "
                        "out of the fusion", src, len(p.image_ids) - len(ids), len(p.image_ids))
    rows = [p.rows_for(ids) for p in parts]
    emb = np.concatenate([p.embeddings[r] for p, r in zip(parts, rows)], axis=1)
    views = None
    if all(p.view_embeddings is not None for p in parts):
        if len({(tuple(p.views), p.view_embeddings.shape[1]) for p in parts}) == 1:
            views = np.concatenate([p.view_embeddings[r] for p, r in zip(parts, rows)], axis=2)
        else:
            log.warning("the caches hold different views; the fusion keeps none")
    elif any(p.view_embeddings is not None for p in parts):
        log.warning("only some caches hold view embeddings; the fusion keeps none")
    identity = {"fused": [p.identity for p in parts], "dims": [p.dim for p in parts],
                "sources": [str(s) for s in sources]}
    from .sources import look_alike, value_profile   # sources imports this module

    alike = look_alike(identity["fused"], identity["dims"])
    if alike:  # neither width nor identity tells these apart: keep what still can
        identity["profiles"] = [value_profile(p.embeddings[r]) if any(k in g for g in alike)
                                else None for k, (p, r) in enumerate(zip(parts, rows))]
    if views is not None:
        identity["views"] = parts[0].views
    failures: dict[str, str] = {}
    for p in parts:
        failures.update(p.failures)
    weights = " + ".join(str(p.attrs.get("weights", "unknown (embeddings made outside skinfeat)"))
                         for p in parts)
    return CacheContents(ids, emb, views, identity,
                         {"weights": weights, "failures": json.dumps(sorted(failures.items()))},
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
