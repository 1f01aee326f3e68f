"""Near-duplicate and outlier search on embeddings (torch matrix products; faiss k-means
only past ``EXACT_LIMIT`` rows or when asked for).

``scan`` is exact: the L2-normalised rows are compared block by block (float32 matrix products
of ``block`` x ``block`` rows, so memory stays at a few ``block``-squared arrays whatever the row
count), keeping every pair at or above the cosine threshold and each row's ``k`` highest cosines
to other rows (the k-nearest-neighbour distances that rank outliers). Within one set only the
upper triangle of blocks is computed (each pair once). ``scan_approximate`` does the same on an
inverted-file partition (lists from faiss k-means, the optional dependency): only rows in nearby
lists are compared, and ``approximate_recall`` measures it against the exact search on a sample
of query rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

EXACT_LIMIT = 100_000     # ``method="auto"``: exact up to the cosines of a set this large
DEFAULT_K = 5             # neighbours behind the outlier score
NPROBE = 8                # lists each row probes in the approximate search


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


def _lists(ref: np.ndarray, n_list: int, seed: int) -> np.ndarray:
    """``n_list`` unit centroids: faiss spherical k-means (10 rounds) on at most 40 rows per
    list, sampled (the k-means cost is then that of the sample, whatever the row count)."""
    faiss = _faiss()
    import torch

    rng = np.random.default_rng(seed)
    sample = ref[np.sort(rng.choice(len(ref), min(len(ref), 40 * n_list), replace=False))]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())   # the same threads as the products
    try:
        km = faiss.Kmeans(ref.shape[1], n_list, niter=10, spherical=True, seed=seed,
                          max_points_per_centroid=40)
        km.train(np.ascontiguousarray(sample, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _nearest_lists(xt, centroids, nprobe: int, chunk: int = 16_384) -> np.ndarray:
    """Each row's ``nprobe`` most similar centroids (nearest first)."""
    import torch

    out = np.empty((len(xt), nprobe), dtype=np.int64)
    for a in range(0, len(xt), chunk):
        out[a:a + chunk] = torch.topk(xt[a:a + chunk] @ centroids.T, nprobe, dim=1).indices
    return out


def _by_list(lists: np.ndarray, n_list: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouped by list (stable: ascending rows within a list) and each list's start."""
    order = np.argsort(lists, kind="stable")
    return order, np.searchsorted(lists[order], np.arange(n_list + 1))


def _fold(cand: np.ndarray, rows: np.ndarray, slot: np.ndarray, new) -> None:
    """Keep in ``cand[rows, slot]`` the k highest of its values and the tensor ``new``."""
    import torch

    k = cand.shape[2]
    both = torch.cat([torch.from_numpy(cand[rows, slot]), new], dim=1)
    cand[rows, slot] = torch.topk(both, k, dim=1).values.numpy()


def scan_approximate(x: np.ndarray, threshold: float, *, y: np.ndarray | None = None,
                     k: int = DEFAULT_K, n_list: int | None = None, nprobe: int = NPROBE,
                     block: int = 4096, seed: int = 0) -> ScanResult:
    """The same as ``scan`` on an inverted-file partition: only the pairs whose rows share a
    list are compared (faiss k-means for the lists: the optional dependency).

    The reference rows are split into ``n_list`` lists (default ``2 sqrt(n)``, each row in
    the list of its nearest centroid) and each query row probes the ``nprobe`` lists nearest
    to it. Then, list by list, the rows probing it against the rows in it: one float32 matrix
    product per list (BLAS speed, unlike a per-query index scan), so every reported cosine is
    exact and only pairs in lists too far apart are missed. Within one set a pair is found
    when either row probes the other's list; each row's k nearest come from its probed lists.
    Memory: the rows, ``nprobe`` candidate top-k lists per row, one ``block``-squared
    product."""
    import torch

    threshold = check_threshold(threshold)
    same = y is None
    ref = np.ascontiguousarray(x if same else y, dtype=np.float32)
    n, m = len(x), len(ref)
    n_list = int(min(n_list or max(1, min(round(2 * np.sqrt(m)), m // 40)), m))
    nprobe = max(1, min(nprobe, n_list))
    k = max(0, min(k, m - 1 if same else m))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    rt = xt if same else torch.from_numpy(ref)
    centroids = torch.from_numpy(_lists(ref, n_list, seed))
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    cand = np.full((n, nprobe, k), -np.inf, dtype=np.float32)   # the best k of each probed list
    with torch.inference_mode():
        probes = _nearest_lists(xt, centroids, nprobe)
        home = probes[:, 0] if same else _nearest_lists(rt, centroids, 1)[:, 0]
        members, m_start = _by_list(home, n_list)
        probers, p_start = _by_list(probes.ravel(), n_list)
        slot, probers = probers % nprobe, probers // nprobe
        for lst in range(n_list):
            mem = members[m_start[lst]:m_start[lst + 1]]
            for a in range(p_start[lst], p_start[lst + 1], block):
                end = min(a + block, p_start[lst + 1])
                qs, qslot = probers[a:end], slot[a:end]
                for b in range(0, len(mem), block):
                    ms = mem[b:b + block]
                    sims = xt[torch.from_numpy(qs)] @ rt[torch.from_numpy(ms)].T
                    if same:       # a row is not its own neighbour (rows ascend in a list)
                        own = np.nonzero(home[qs] == lst)[0]
                        at = np.searchsorted(ms, qs[own])
                        mine = at < len(ms)
                        mine[mine] = ms[at[mine]] == qs[own[mine]]
                        sims[torch.from_numpy(own[mine]), torch.from_numpy(at[mine])] = -np.inf
                    best = None
                    if k:
                        top = torch.topk(sims, min(k, len(ms)), dim=1).values
                        _fold(cand, qs, qslot, top)
                        best = top[:, 0]
                    # only the rows with a cosine at the threshold are searched for pairs
                    hit = torch.nonzero((sims.amax(1) if best is None else best) >= threshold
                                        )[:, 0]
                    ti, tj = torch.nonzero(sims[hit] >= threshold, as_tuple=True)
                    ti = hit[ti]
                    found_i.append(qs[ti.numpy()])
                    found_j.append(ms[tj.numpy()])
                    found_c.append(sims[ti, tj].numpy())
    ii = np.concatenate(found_i or [np.zeros(0, np.int64)]).astype(np.int64)
    jj = np.concatenate(found_j or [np.zeros(0, np.int64)]).astype(np.int64)
    cc = np.concatenate(found_c or [np.zeros(0, np.float32)]).astype(np.float32)
    if same:   # each pair once, as (smaller, larger)
        ii, jj = np.minimum(ii, jj), np.maximum(ii, jj)
    first = np.unique(ii * m + jj, return_index=True)[1]
    knn = -np.sort(-cand.reshape(n, -1), axis=1)[:, :k]
    return ScanResult(ii[first], jj[first], cc[first], knn.astype(np.float32),
                      method=f"ivf{n_list}-nprobe{nprobe}")


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
    """``exact``, ``approximate`` or ``auto``: exact while it computes no more cosines than
    one set of ``EXACT_LIMIT`` rows (about 70 CPU-seconds of float32 products: the exact
    100k-row set measured 136 CPU-seconds on 2 threads), else approximate."""
    if method not in ("auto", "exact", "approximate"):
        raise InputError(f"--method must be auto, exact or approximate, got {method!r}")
    cosines = len(x) * (len(x) - 1) // 2 if y is None else len(x) * len(y)
    if method == "approximate" or \
            (method == "auto" and cosines > EXACT_LIMIT * (EXACT_LIMIT - 1) // 2):
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
