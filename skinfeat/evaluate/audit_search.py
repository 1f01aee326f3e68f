"""Near-duplicate and outlier search on embeddings (torch matrix products; faiss only past
``EXACT_LIMIT`` rows or when asked for).

``scan`` is exact: the L2-normalised rows are compared block by block (float32 matrix products
of ``block`` x ``block`` rows, so memory stays at a few ``block``-squared arrays whatever the row
count), keeping every pair at or above the cosine threshold and each row's ``k`` highest cosines
to other rows (the k-nearest-neighbour distances that rank outliers). Within one set only the
upper triangle of blocks is computed (each pair once). ``scan_approximate`` does the same through
a faiss inverted-file index (optional dependency), and ``approximate_recall`` measures it against
the exact search on a sample of query rows.
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


def _merge_top_k(knn: np.ndarray, owner: np.ndarray, vals: np.ndarray) -> None:
    """Fold candidate cosines ``vals`` of rows ``owner`` into ``knn`` (rows x k, descending)
    in place: each touched row keeps the k highest of its old ones and its candidates."""
    if not len(owner):
        return
    k = knn.shape[1]
    touched = np.unique(owner)
    owner = np.concatenate([owner, np.repeat(touched, k)])
    vals = np.concatenate([vals, knn[touched].ravel()])
    order = np.lexsort((-vals, owner))            # by owner, then cosine descending
    owner, vals = owner[order], vals[order]
    start = np.searchsorted(owner, touched)
    rank = np.arange(len(owner)) - np.repeat(start, np.diff(np.append(start, len(owner))))
    knn[touched] = vals[rank < k].reshape(len(touched), k)


def _blocks(n: int, m: int, block: int, same: bool) -> list[tuple[int, int]]:
    """The (row, column) block starts to compute: within one set the diagonal blocks first
    (they start every row's top k), then each block above the diagonal once."""
    if not same:
        return [(a, b) for a in range(0, n, block) for b in range(0, m, block)]
    return [(a, a) for a in range(0, n, block)] + \
        [(a, b) for a in range(0, n, block) for b in range(a + block, m, block)]


def scan(x: np.ndarray, threshold: float, *, y: np.ndarray | None = None, k: int = DEFAULT_K,
         block: int = 4096) -> ScanResult:
    """Exact search of the normalised rows ``x`` (against ``y`` when given, else within ``x``).

    Each block of cosines is one float32 matrix product (torch: its BLAS uses every intra-op
    thread), then one comparison with a per-row floor (the lower of the threshold and the
    row's current k-th best cosine) and one with a per-column floor (within one set: the block
    also stands for its mirror image). Only the entries above a floor leave the block, so
    the memory is a few ``block``-squared arrays whatever the row count."""
    import torch

    threshold = check_threshold(threshold)
    same = y is None
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = xt if same else torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    n, m = len(xt), len(yt)
    k = max(0, min(k, m - 1 if same else m))
    knn = np.full((n, k), -np.inf, dtype=np.float32)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    with torch.inference_mode():
        for a, b in _blocks(n, m, block, same):
            sims = xt[a:a + block] @ yt[b:b + block].T
            rows, cols = len(sims), sims.shape[1]
            diagonal = same and a == b
            if diagonal:
                sims.fill_diagonal_(-np.inf)    # a row is not its own neighbour
            first = diagonal if same else b == 0
            if k and first:                      # the block's top k start each row's list
                top = torch.topk(sims, min(k, cols), dim=1).values.numpy()
                _merge_top_k(knn[a:a + rows], np.repeat(np.arange(rows), top.shape[1]),
                             top.ravel())
            floor = np.full(rows, threshold, dtype=np.float32) if not k or first else \
                np.minimum(knn[a:a + rows, -1], threshold)
            ti, tj = torch.nonzero(sims >= torch.from_numpy(floor)[:, None],
                                   as_tuple=True)
            vals = sims[ti, tj].numpy()
            ii, jj = ti.numpy(), tj.numpy()
            if k and not first:
                better = vals > knn[a + ii, -1]
                _merge_top_k(knn[a:a + rows], ii[better], vals[better])
            if same and not diagonal and k:      # the mirror block: the columns' own top k
                kth = torch.from_numpy(knn[b:b + cols, -1].copy())
                ci, cj = torch.nonzero(sims > kth[None, :], as_tuple=True)
                _merge_top_k(knn[b:b + cols], cj.numpy(), sims[ci, cj].numpy())
            hit = vals >= threshold
            if diagonal:
                hit &= ii < jj
            found_i.append(ii[hit] + a)
            found_j.append(jj[hit] + b)
            found_c.append(vals[hit])
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
                     chunk: int = 32_768, seed: int = 0) -> ScanResult:
    """The same as ``scan`` through a faiss IVF-Flat inner-product index (normalised rows:
    inner product = cosine). Each query keeps its ``neighbours`` nearest, so a row with more
    near-copies than that reports only the closest ones.

    About ``4 sqrt(n)`` lists (2,533 at 401k rows), ``nprobe`` of them probed: each query
    scans about ``2 nprobe / sqrt(n)`` of the rows. The queries' lists are found once (one
    matrix product with the centroids), and the queries are searched in that order, so that
    consecutive queries scan the same lists while they are still in the CPU's cache: an IVF
    scan is otherwise bound by memory bandwidth, not arithmetic."""
    faiss = _faiss()
    threshold = check_threshold(threshold)
    same = y is None
    ref = np.ascontiguousarray(x if same else y, dtype=np.float32)
    queries = ref if same else np.ascontiguousarray(x, dtype=np.float32)
    n_list = int(max(1, min(8192, 4 * np.sqrt(len(ref)), len(ref) // 39)))
    quantizer = faiss.IndexFlatIP(ref.shape[1])
    index = faiss.IndexIVFFlat(quantizer, ref.shape[1], n_list, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10                   # k-means: 10 rounds place the lists well enough
    index.cp.max_points_per_centroid = 40
    rng = np.random.default_rng(seed)
    index.train(ref[np.sort(rng.choice(len(ref), min(len(ref), 40 * n_list), replace=False))])
    index.add(ref)
    index.nprobe = nprobe = min(nprobe, n_list)
    want = min(max(neighbours, k) + (1 if same else 0), len(ref))
    sims = np.empty((len(queries), want), dtype=np.float32)
    idx = np.empty((len(queries), want), dtype=np.int64)
    for a in range(0, len(queries), chunk):     # bounded memory for the coarse assignment
        part = queries[a:a + chunk]
        coarse_d, coarse_i = quantizer.search(part, nprobe)
        order = np.argsort(coarse_i[:, 0], kind="stable")
        d, i = index.search_preassigned(np.ascontiguousarray(part[order]), want,
                                        coarse_i[order], coarse_d[order])
        sims[a + order], idx[a + order] = d, i
    rows = np.repeat(np.arange(len(queries)), want).reshape(len(queries), want)
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
    exact = scan(x[rows], threshold, y=x if y is None else y, k=0)
    qi, qj = rows[exact.i], exact.j
    if y is None:
        keep = qi != qj                   # a row is not its own pair
        qi, qj = qi[keep], qj[keep]
    if not len(qi):
        return 1.0
    if y is None:
        exact_pairs = set(zip(np.minimum(qi, qj).tolist(), np.maximum(qi, qj).tolist(),
                              strict=False))
    else:
        exact_pairs = set(zip(qi.tolist(), qj.tolist(), strict=False))
    have = set(zip(found.i.tolist(), found.j.tolist(), strict=False))
    return len(exact_pairs & have) / len(exact_pairs)


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
