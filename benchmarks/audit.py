"""The audit's near-duplicate + outlier search at scale: time and peak memory per size.

    .venv/bin/python benchmarks/audit.py [--rows 10000,100000,401059] [--dim 768] [--threads 2]
    .venv/bin/python benchmarks/audit.py --rate --rows 401059 [--method exact]

Per size, in a fresh process (so each peak is its own): synthetic float32 embeddings (a shared
component plus each row's own, like pooled network features; 1 % of the rows noisy copies of
others, their cosines spread from about 0.89 to 0.9996; 0.1 % outliers without the shared
component), then ``search`` as the audit runs it (``method=auto``: exact blockwise up to the
cosines of a 100k-row set, the approximate list search past it) with the k-NN outlier scores,
at the audit's default threshold (0.92). Prints the seconds of the search alone, the peak
resident memory of the process (embeddings included), the planted copies at or above the
threshold found, the planted outliers among the top outlier scores, and for the approximate
search its pair recall against the exact search on 2,000 sampled query rows, the share of those
rows' exact k nearest cosines it holds and the outlier scores' mean absolute error. Targets:
100k rows <= 2 min, 401k <= 10 min, peak <= 4 GB.

``--rate``: for a machine too busy to finish a size, the exact search of one 4,096-row query
block against all the rows, timed, and the whole exact search's time extrapolated from it
(``n (n - 1) / 2`` cosines at that block's rate): an extrapolation, labelled as one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {100_000: 120, 401_059: 600}   # seconds
PEAK_GB = 4.0
THRESHOLD = 0.92                         # the audit's default cosine


def embeddings(rows: int, dim: int):
    """Synthetic rows, the planted copies' sources (row ``rows - copies + c`` copies
    ``src[c]``) and the planted outliers (rows ``outliers`` without the shared component).

    The copies' noise is spread so that their cosines to their sources run from about 0.89
    to 0.9996: the pairs near the 0.92 threshold are the ones an approximate search misses."""
    import numpy as np

    from skinfeat.evaluate.audit_search import normalise

    rng = np.random.default_rng(0)
    copies = rows // 100
    x = np.empty((rows, dim), dtype=np.float32)
    common = rng.normal(size=dim).astype(np.float32)
    for a in range(0, rows, 50_000):   # in parts: no float64 copy of the whole set
        part = rng.standard_normal((min(50_000, rows - a), dim), dtype=np.float32)
        x[a:a + len(part)] = part + 0.6 * common
    src = rng.choice(rows - copies, copies, replace=False)
    outliers = np.setdiff1d(rng.choice(rows - copies, rows // 1000 + copies, replace=False),
                            src)[:rows // 1000]
    x[outliers] = rng.standard_normal((len(outliers), dim), dtype=np.float32)
    noise = rng.uniform(0.03, 0.6, size=(copies, 1)).astype(np.float32)
    x[rows - copies:] = x[src] + noise * rng.standard_normal((copies, dim), dtype=np.float32)
    return normalise(x), src, outliers


def rate(rows: int, dim: int) -> dict:
    """The exact search's cosines per second on one query block against every row."""
    from skinfeat.evaluate.audit_search import scan

    x, _, _ = embeddings(rows, dim)
    q = 4096
    t0, c0 = time.perf_counter(), time.process_time()
    scan(x[:q], 0.95, y=x, k=5)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    total = rows * (rows - 1) / 2
    return {"rows": rows, "dim": dim, "method": "exact (one query block, extrapolated)",
            "block_rows": q, "block_seconds": round(seconds, 2), "block_cpu_seconds":
            round(cpu, 2), "cosines_per_second": round(q * rows / seconds),
            "extrapolated_seconds": round(total / (q * rows / seconds)),
            "extrapolated_cpu_seconds": round(total / (q * rows / cpu)),
            "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def knn_agreement(x, knn, threshold: float, sample: int = 2000, seed: int = 0) -> dict:
    """On ``sample`` random rows: the share of their exact k nearest cosines that ``knn``
    holds (rank by rank, to 1e-5), and the outlier scores' mean absolute error."""
    import numpy as np

    from skinfeat.evaluate.audit_search import outlier_scores, scan

    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(sample, len(x)),
                                                      replace=False))
    k = knn.shape[1]
    exact = scan(x[rows], threshold, y=x, k=k + 1).knn[:, 1:]     # the first: the row itself
    return {"knn_match": round(float(np.isclose(knn[rows], exact, atol=1e-5).mean()), 4),
            "outlier_score_mae": round(float(np.abs(outlier_scores(knn[rows])
                                                    - outlier_scores(exact)).mean()), 5)}


def one(rows: int, dim: int, method: str) -> dict:
    import numpy as np

    from skinfeat.evaluate.audit_search import approximate_recall, outlier_scores, search

    x, src, outliers = embeddings(rows, dim)
    copies = len(src)
    t0, c0 = time.perf_counter(), time.process_time()
    hits = search(x, THRESHOLD, method=method)
    scores = outlier_scores(hits.knn)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    found = set(zip(hits.i.tolist(), hits.j.tolist(), strict=False))
    cosine = np.einsum("ij,ij->i", x[src], x[rows - copies:])
    due = [(int(s), rows - copies + c) for c, s in enumerate(src) if cosine[c] >= THRESHOLD]
    top = set(np.argsort(-scores)[:len(outliers)].tolist())
    res = {"rows": rows, "dim": dim, "method": hits.method, "seconds": round(seconds, 1),
           "cpu_seconds": round(cpu, 1), "threshold": THRESHOLD,
           "planted_found": f"{sum(p in found for p in due)}/{len(due)}", "pairs": len(found),
           "outliers_in_top": f"{len(top & set(outliers.tolist()))}/{len(outliers)}"}
    if hits.method != "exact":
        t1 = time.perf_counter()
        res["recall_vs_exact"] = round(approximate_recall(x, hits, THRESHOLD), 4)
        res.update(knn_agreement(x, hits.knn, THRESHOLD))
        res["check_seconds"] = round(time.perf_counter() - t1, 1)
    res["peak_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="10000,100000,401059")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="auto", choices=["auto", "exact", "approximate"])
    p.add_argument("--rate", action="store_true",
                   help="time one query block of the exact search and extrapolate")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(json.dumps(rate(a.one, a.dim) if a.rate else one(a.one, a.dim, a.method)))
        return
    env = {**os.environ, **{v: str(a.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS")}}
    print(f"cpu cores seen: {os.cpu_count()}, threads: {a.threads}, load: {os.getloadavg()}")
    for rows in (int(r) for r in a.rows.split(",")):
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--one", str(rows), "--dim", str(a.dim),
                              "--method", a.method] + (["--rate"] if a.rate else []), env=env,
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{rows}: failed\n{out.stderr[-2000:]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        target = None if a.rate else TARGETS.get(rows)
        verdict = "" if target is None else (" target met" if res["seconds"] <= target and
                                             res["peak_gb"] <= PEAK_GB else " target MISSED")
        print(json.dumps(res) + verdict + f"  (load {load:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end)", flush=True)


if __name__ == "__main__":
    main()
