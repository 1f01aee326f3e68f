"""The linear probe's 5-fold CV on HAM10000's real MobileNetV2 embeddings: before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/linear_probe.py [--folds 5] [--seed 42]
        [--data ../shared/data] [--skip-before | --before-folds N]

"Before" is the probe as it was until its search moved to torch (commit 7c926aa): per outer
fold, scikit-learn's ``StandardScaler + LogisticRegression(lbfgs, balanced, max_iter=1000)`` for
every C of the grid on every inner ``StratifiedGroupKFold`` fold, then one sklearn fit at the
chosen C. "After" is ``LinearProbe.fit`` (``skinfeat.learn.linear_search``: every C of an inner
fold in one batched, preconditioned L-BFGS on torch). Both run in this process on the same
lesion-grouped outer folds (``skinfeat.learn.cv.make_folds``, as ``skinfeat cv`` makes them;
the probe trains on the folds' training rows, its inner CV on them) and score the same test rows
(balanced accuracy of the argmax, before calibration). Prints the CPU's lscpu flags and load,
per-fold chosen C, balanced accuracy and seconds, the totals and their ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skinfeat.data.datasets import load_dataset  # noqa: E402
from skinfeat.learn.cv import make_folds  # noqa: E402
from skinfeat.learn.linear import C_GRID, LinearConfig, LinearProbe  # noqa: E402
from skinfeat.learn.linear_search import choose_c_sklearn  # noqa: E402


def sklearn_probe(x, y, groups, cfg: LinearConfig):
    """The probe before: sklearn's grid search over C, then its fit at the chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, _ = choose_c_sklearn(x, y, groups, cfg.cs, cfg.inner_folds, cfg.seed,
                               max_iter=cfg.max_iter)
    return best, make_pipeline(StandardScaler(), LogisticRegression(
        C=best, class_weight="balanced", max_iter=cfg.max_iter)).fit(x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-before", action="store_true", help="time the new probe only")
    ap.add_argument("--before-folds", type=int, default=None,
                    help="time sklearn's search on the first N folds only (it takes minutes "
                         "per fold); the ratio is then over those folds")
    args = ap.parse_args()
    import h5py
    from sklearn.metrics import balanced_accuracy_score

    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in flags.splitlines()
                    if line.startswith(("Model name", "CPU(s)", "Flags"))))
    print(f"load {os.getloadavg()}, torch threads:", __import__("torch").get_num_threads())

    table = load_dataset(args.data / "HAM10000_metadata_full.csv", "ham10000",
                         images=False).table
    with h5py.File(args.data / "ham10000-mobilenetv2-embeddings.h5", "r") as f:
        index = {k.decode(): i for i, k in enumerate(f["image_id"][:])}
        x = f["embedding"][:].astype(np.float64)[[index[i] for i in table["image_id"]]]
    y, groups = table["label"].to_numpy(), table["group_id"].to_numpy()
    cfg = LinearConfig(inputs="image", seed=args.seed, cs=C_GRID)
    empty = np.zeros((len(y), 0))
    rows = []
    for fold in make_folds(table, args.folds, "group", args.seed):
        tr, te = np.concatenate([fold.train, fold.val]), fold.test
        row = {"fold": fold.fold}
        t, cpu = time.perf_counter(), time.process_time()
        fit = LinearProbe.fit((x[tr], empty[tr], y[tr]), None, int(y.max()) + 1, cfg,
                              groups=groups[tr])
        row["after_s"], row["after_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu
        row["after_c"] = fit.model.c
        row["after_bacc"] = balanced_accuracy_score(
            y[te], fit.model.predict_proba(x[te], empty[te]).argmax(1))
        if not args.skip_before and (args.before_folds is None or fold.fold < args.before_folds):
            t, cpu = time.perf_counter(), time.process_time()
            c, pipe = sklearn_probe(x[tr], y[tr], groups[tr], cfg)
            row["before_s"] = time.perf_counter() - t
            row["before_cpu_s"] = time.process_time() - cpu
            row["before_c"], row["before_bacc"] = c, balanced_accuracy_score(
                y[te], pipe.predict(x[te]))
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    both = [r for r in rows if "before_c" in r]
    for k, part in (("after", rows), ("before", both), ("after, same folds", both)):
        if not part:
            continue
        key = k.split(",")[0]
        b = np.array([r[f"{key}_bacc"] for r in part])
        print(f"{k}: {sum(r[f'{key}_s'] for r in part):.1f} s wall, "
              f"{sum(r[f'{key}_cpu_s'] for r in part):.1f} s CPU, balanced accuracy "
              f"{100 * b.mean():.1f} ± {100 * b.std(ddof=1) if len(b) > 1 else 0:.1f} % over "
              f"{len(part)} folds, C per fold {[r[f'{key}_c'] for r in part]}")
    if both:
        def ratio(unit):
            return sum(r[f"before_{unit}"] for r in both) / sum(r[f"after_{unit}"] for r in both)
        print(f"speed-up {ratio('s'):.1f}x wall, {ratio('cpu_s'):.1f}x CPU; same C on "
              f"{sum(r['before_c'] == r['after_c'] for r in both)}/{len(both)} folds")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
