"""Near-duplicate and outlier search on embeddings (pure numpy; faiss only when asked for).

``scan`` is exact: the L2-normalised rows are compared block by block (matrix products of
``block`` x ``block`` rows, so memory stays at a few ``block``-squared float32 arrays whatever
the row count), keeping every pair at or above the cosine threshold and each row's ``k`` highest
cosines to other rows (the k-nearest-neighbour distances that rank outliers). Within one set only
the upper triangle of blocks is computed (each pair once). ``scan_approximate`` does the same
through a faiss inverted-file index (optional dependency), for sets past ``EXACT_LIMIT`` rows,
and ``approximate_recall`` measures it against the exact search on a sample of query rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

EXACT_LIMIT = 150_000     # rows: past this, ``method="auto"`` uses the approximate index
DEFAULT_K = 5             # neighbours behind the outlier score


@dataclass(frozen=True)
class ScanResult:
    """Pairs (``i`` < ``j`` within one set; ``i`` in the queries, ``j`` in the reference across
    two) with their cosine, and each query row's ``k`` highest cosines (descending)."""
    i: np.ndarray
    j: np.ndarray
    cosine: np.ndarray
    knn: np.ndarray
    method: str = "exact"


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def check_threshold(threshold: float, name: str = "--threshold") -> float:
    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise InputError(f"{name} must be a cosine in (0, 1], got {threshold}")
    return float(threshold)


def _top_k(current: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """The k highest of ``current`` (rows x k) and ``sims`` (rows x m), per row (a full
    partition: each row block's first block only)."""
    both = np.concatenate([current, sims], axis=1)
    if both.shape[1] > k:
        both = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
    return both


def _update_top_k(knn: np.ndarray, sims: np.ndarray, axis: int) -> None:
    """Fold a block of cosines into ``knn`` in place (``axis=0``: ``knn`` belongs to the
    block's rows; 1: to its columns). Only the cosines above a row's current k-th best are
    looked at: after the first block that is a few per row, so this costs far less than a
    partition of every block."""
    k = knn.shape[1]
    kth = knn.min(axis=1)
    if axis == 0:
        rows, cols = np.nonzero(sims > kth[:, None])
        owner, vals = rows, sims[rows, cols]
    else:
        rows, cols = np.nonzero(sims > kth[None, :])
        owner, vals = cols, sims[rows, cols]
    if not len(owner):
        return
    touched = np.unique(owner)
    owner = np.concatenate([owner, np.repeat(touched, k)])
    vals = np.concatenate([vals, knn[touched].ravel()])
    order = np.lexsort((-vals, owner))            # by owner, then cosine descending
    owner, vals = owner[order], vals[order]
    start = np.searchsorted(owner, touched)
    rank = np.arange(len(owner)) - np.repeat(start, np.diff(np.append(start, len(owner))))
    knn[touched] = vals[rank < k].reshape(len(touched), k)


def scan(x: np.ndarray, threshold: float, *, y: np.ndarray | None = None, k: int = DEFAULT_K,
         block: int = 4096) -> ScanResult:
    """Exact search of the normalised rows ``x`` (against ``y`` when given, else within ``x``)."""
    threshold = check_threshold(threshold)
    same = y is None
    y = x if y is None else y
    n, m = len(x), len(y)
    k = max(0, min(k, m - 1 if same else m))
    knn = np.full((n, k), -np.inf, dtype=np.float32)
    found_i, found_j, found_c = [], [], []

    def pairs(sims, a, b, upper):
        ii, jj = np.nonzero(sims >= threshold)
        if upper:
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
        found_i.append(ii + a)
        found_j.append(jj + b)
        found_c.append(sims[ii, jj])

    # Within one set: the diagonal blocks first (a full partition starts each row's top k),
    # then each off-diagonal block once, for its rows and its columns.
    order = [(a, a) for a in range(0, n, block)] + \
        [(a, b) for a in range(0, n, block) for b in range(a + block, m, block)] if same else \
        [(a, b) for a in range(0, n, block) for b in range(0, m, block)]
    for a, b in order:
        sims = x[a:a + block] @ y[b:b + block].T
        if same and a == b:
            np.fill_diagonal(sims, -np.inf)    # a row is not its own neighbour
        if k and (a == b if same else b == 0):
            knn[a:a + block] = _top_k(knn[a:a + block], sims, k)
        elif k:
            _update_top_k(knn[a:a + block], sims, axis=0)
            if same:
                _update_top_k(knn[b:b + block], sims, axis=1)
        pairs(sims, a, b, same and a == b)
    knn = -np.sort(-knn, axis=1)
    return ScanResult(np.concatenate(found_i or [np.zeros(0, int)]).astype(np.int64),
                      np.concatenate(found_j or [np.zeros(0, int)]).astype(np.int64),
                      np.concatenate(found_c or [np.zeros(0, np.float32)]).astype(np.float32),
                      knn)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the approximate search needs faiss-cpu: pip install "
                          "'skinfeat[audit]'") from None
    return faiss


def scan_approximate(x: np.ndarray, threshold: float, *, y: np.ndarray | None = None,
                     k: int = DEFAULT_K, neighbours: int = 32, nprobe: int = 8,
                     seed: int = 0) -> ScanResult:
    """The same as ``scan`` through a faiss IVF-Flat inner-product index (normalised rows:
    inner product = cosine). Each query keeps its ``neighbours`` nearest, so a row with more
    near-copies than that reports only the closest ones."""
    faiss = _faiss()
    threshold = check_threshold(threshold)
    same = y is None
    ref = np.ascontiguousarray(x if same else y, dtype=np.float32)
    # sqrt(n) lists, 8 probed: each query scans about 8 / sqrt(n) of the rows (5k of 401k)
    n_list = int(max(1, min(4096, np.sqrt(len(ref)))))
    quantizer = faiss.IndexFlatIP(ref.shape[1])
    index = faiss.IndexIVFFlat(quantizer, ref.shape[1], n_list, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = ref[rng.choice(len(ref), min(len(ref), 40 * n_list), replace=False)]
    index.train(sample)
    index.add(ref)
    index.nprobe = nprobe
    want = max(neighbours, k) + (1 if same else 0)
    sims, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), want)
    rows = np.repeat(np.arange(len(x)), want).reshape(len(x), want)
    valid = idx >= 0
    if same:
        valid &= idx != rows
    knn = np.where(valid, sims, -np.inf)
    knn = -np.sort(-knn, axis=1)[:, :k]
    hit = valid & (sims >= threshold)
    ii, jj, cc = rows[hit], idx[hit], sims[hit]
    if same:   # each pair once, as (smaller, larger)
        lo, hi = np.minimum(ii, jj), np.maximum(ii, jj)
        pairs = np.unique(np.stack([lo, hi], 1), axis=0, return_index=True)[1]
        ii, jj, cc = lo[pairs], hi[pairs], cc[pairs]
    return ScanResult(ii.astype(np.int64), jj.astype(np.int64), cc.astype(np.float32),
                      knn.astype(np.float32), method=f"faiss-ivf{n_list}-nprobe{nprobe}")


def approximate_recall(x: np.ndarray, found: ScanResult, threshold: float, *,
                       y: np.ndarray | None = None, sample: int = 2000, seed: int = 0) -> float:
    """The share of the exact pairs of ``sample`` random query rows that ``found`` holds
    (1.0 when those rows have no pair at the threshold)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    ref = x if y is None else y
    qi_parts: list[np.ndarray] = []
    qj_parts: list[np.ndarray] = []
    for a in range(0, len(rows), 256):    # in parts: 256 x rows cosines at a time
        part = rows[a:a + 256]
        sims = x[part] @ ref.T
        if y is None:
            sims[np.arange(len(part)), part] = -np.inf
        i, j = np.nonzero(sims >= threshold)
        qi_parts.append(part[i])
        qj_parts.append(j)
    qi, qj = np.concatenate(qi_parts), np.concatenate(qj_parts)
    if not len(qi):
        return 1.0
    if y is None:
        exact = set(zip(np.minimum(qi, qj).tolist(), np.maximum(qi, qj).tolist(), strict=False))
    else:
        exact = set(zip(qi.tolist(), qj.tolist(), strict=False))
    have = set(zip(found.i.tolist(), found.j.tolist(), strict=False))
    return len(exact & have) / len(exact)


def search(x: np.ndarray, threshold: float, *, y: np.ndarray | None = None,
           k: int = DEFAULT_K, method: str = "auto") -> ScanResult:
    """``exact``, ``approximate`` or ``auto`` (exact up to ``EXACT_LIMIT`` rows)."""
    if method not in ("auto", "exact", "approximate"):
        raise InputError(f"--method must be auto, exact or approximate, got {method!r}")
    rows = len(x) + (0 if y is None else len(y))
    if method == "approximate" or (method == "auto" and rows > EXACT_LIMIT):
        return scan_approximate(x, threshold, y=y, k=k)
    return scan(x, threshold, y=y, k=k)


def outlier_scores(knn: np.ndarray) -> np.ndarray:
    """Mean cosine distance to the k nearest other rows (higher: farther from everything)."""
    if knn.shape[1] == 0:
        return np.zeros(len(knn), dtype=np.float32)
    return (1.0 - knn.mean(axis=1)).astype(np.float32)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 MAD): how unusual each score is among all of them."""
    med = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - med))
    return (scores - med) / max(mad, 1e-9)
