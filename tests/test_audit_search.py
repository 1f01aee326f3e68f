"""The audit's approximate search (inverted-file lists from faiss k-means, float32 products per
list): exact when every list is probed, planted copies near the threshold found at the default
parameters, its parameter choice, ``auto``'s switch by cost, and the missing-faiss message."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from skinfeat.evaluate import audit_search
from skinfeat.evaluate.audit_search import (
    approximate_recall,
    normalise,
    scan,
    scan_approximate,
    search,
)


def spread_copies(n=2000, dim=32, copies=80, seed=0):
    """Distinct rows (a shared component plus their own) and ``copies`` noisy copies of the
    first rows whose cosines to them run from about 0.88 to 0.999 (row n + c copies row c)."""
    rng = np.random.default_rng(seed)
    x = 0.6 * rng.normal(size=dim) + rng.normal(size=(n, dim))
    noise = np.linspace(0.05, 0.6, copies)[:, None]
    dup = x[:copies] + noise * rng.normal(size=(copies, dim))
    return normalise(np.vstack([x, dup]))


def pairs(hits):
    return set(zip(hits.i.tolist(), hits.j.tolist(), strict=True))


def test_probing_every_list_is_the_exact_search():
    pytest.importorskip("faiss")
    x = spread_copies()
    exact = scan(x, 0.9)
    full = scan_approximate(x, 0.9, n_list=6, nprobe=6, block=100)   # blocks inside lists
    assert pairs(full) == pairs(exact) and len(exact.i) >= 40
    np.testing.assert_allclose(full.cosine[np.lexsort((full.j, full.i))],
                               exact.cosine[np.lexsort((exact.j, exact.i))], atol=1e-5)
    np.testing.assert_allclose(full.knn, exact.knn, atol=1e-5)     # no row is its own neighbour
    test, train = x[2000:], x[:2000]                                  # across two sets
    across = scan_approximate(test, 0.9, y=train, k=3, n_list=6, nprobe=6)
    exact_across = scan(test, 0.9, y=train, k=3)
    assert pairs(across) == pairs(exact_across)
    np.testing.assert_allclose(across.knn, exact_across.knn, atol=1e-5)


def test_default_parameters_find_the_copies_near_the_threshold():
    pytest.importorskip("faiss")
    x = spread_copies(n=6000, copies=200)
    hits = scan_approximate(x, 0.92)
    n_list, nprobe = 155, 8     # min(2 sqrt(6200), 6200 / 40) lists, 8 probed: 5 % of the rows
    assert hits.method == f"ivf{n_list}-nprobe{nprobe}"
    exact = scan(x, 0.92)
    assert len(exact.i) >= 100 and exact.cosine.min() < 0.93     # copies at the threshold
    assert pairs(hits) == pairs(exact)
    assert approximate_recall(x, hits, 0.92, sample=len(x)) == 1.0
    # far fewer lists probed than exist: each row's k nearest are candidates from its lists,
    # exact cosines, never above the true ones
    assert np.all(hits.knn <= exact.knn + 1e-5) and np.mean(np.isclose(hits.knn, exact.knn,
                                                                        atol=1e-5)) > 0.1


def test_list_count_follows_the_rows():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    small = normalise(rng.normal(size=(200, 8)))
    assert scan_approximate(small, 0.9).method == "ivf5-nprobe5"   # 40 rows per list at least
    assert scan_approximate(small, 0.9, nprobe=2).method == "ivf5-nprobe2"


def test_auto_switches_to_the_approximate_search_by_cost(monkeypatch):
    pytest.importorskip("faiss")
    x = spread_copies(n=400, copies=10)
    assert search(x, 0.92).method == "exact"
    monkeypatch.setattr(audit_search, "EXACT_LIMIT", 300)
    assert search(x, 0.92).method.startswith("ivf")              # 410 rows: over the limit
    assert search(x[:20], 0.92, y=x[:300]).method == "exact"     # 6,000 cosines, under 44,850
    assert search(x[:200], 0.92, y=x).method.startswith("ivf")   # 82,000 cosines


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)              # import faiss fails
    with pytest.raises(ImportError, match=r"faiss-cpu.*skinfeat\[audit\]"):
        scan_approximate(spread_copies(n=100, copies=2), 0.92)
