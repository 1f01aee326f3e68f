"""The linear probe's 5-fold CV on HAM10000's real MobileNetV2 embeddings: before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/linear_probe.py [--folds 5] [--seed 42]
        [--data ../shared/data] [--before REF] [--threads N] [--jobs N] [--max-folds N]
        [--sklearn-folds N]

"After" is this tree's ``LinearProbe``; ``--before REF`` (a git ref, e.g. ``main``) also times
that commit's ``LinearProbe``, its ``skinfeat`` package checked out of git into a temporary
folder. Each runs in a subprocess of its own, one after the other, on the same lesion-grouped
outer folds (``skinfeat.learn.cv.make_folds``, as ``skinfeat cv`` makes them; the probe trains
on the folds' training and validation rows, its inner CV on them) and scores the same test rows
(balanced accuracy of the argmax, before calibration). ``--jobs N`` fits N outer folds at a
time on joblib's workers, one torch thread each, as ``skinfeat cv`` runs its folds; the wall
time of all the fitting is then the number to compare. ``--sklearn-folds N`` adds the probe as
it was before its search moved to torch (scikit-learn's ``StandardScaler +
LogisticRegression(lbfgs, balanced)`` per C and inner fold; minutes per fold) on the first N
folds. Prints the CPU's lscpu flags, the load average before and after each run, per-fold
chosen C, balanced accuracy, wall and CPU seconds, the totals and their ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TREE = os.environ.get("LINEAR_PROBE_TREE")   # the worker's skinfeat: a checked-out ref's
sys.path.insert(0, TREE or str(ROOT))


def load(data: Path):
    import h5py

    from skinfeat.data.datasets import load_dataset

    table = load_dataset(data / "HAM10000_metadata_full.csv", "ham10000", images=False).table
    with h5py.File(data / "ham10000-mobilenetv2-embeddings.h5", "r") as f:
        index = {k.decode(): i for i, k in enumerate(f["image_id"][:])}
        x = f["embedding"][:].astype(np.float64)[[index[i] for i in table["image_id"]]]
    return table, x, table["label"].to_numpy(), table["group_id"].to_numpy()


def sklearn_probe(x, y, groups, cs, inner_folds, seed, max_iter):
    """The probe before torch: sklearn's grid search over C, then its fit at the chosen C."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(StratifiedGroupKFold(inner_folds, shuffle=True, random_state=seed)
                 .split(x, y, groups))

    def pipe(c):
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=c, class_weight="balanced", max_iter=max_iter))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = {c: np.mean([balanced_accuracy_score(y[te], pipe(c).fit(x[tr], y[tr])
                                                      .predict(x[te])) for tr, te in folds])
                  for c in sorted(cs)}
    best = max(sorted(cs), key=lambda c: (scores[c], -c))
    return best, pipe(best).fit(x, y)


def fit_fold(task, x) -> dict:
    """One outer fold: the probe (or sklearn's) on its training rows, scored on its test rows.
    Module-level, so that ``--jobs`` can send it to joblib's workers (as ``skinfeat cv`` does)."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from skinfeat.learn.linear import LinearProbe

    fold, tr, te, y, groups, cfg, sklearn = task
    empty = np.zeros((len(y), 0))
    t, cpu = time.perf_counter(), time.process_time()
    if sklearn:
        c, pipe = sklearn_probe(x[tr], y[tr], groups[tr], cfg.cs, cfg.inner_folds,
                                cfg.seed, cfg.max_iter)
        pred = pipe.predict(x[te])
    else:
        probe = LinearProbe(cfg).fit((x[tr], empty[tr], y[tr]), None, groups[tr],
                                     n_classes=int(y.max()) + 1)
        c, pred = probe.c_, probe.predict_proba(x[te], empty[te]).argmax(1)
    return {"fold": fold, "s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu,
            "c": c, "bacc": balanced_accuracy_score(y[te], pred),
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def worker(args) -> None:
    """One probe on every outer fold (``--jobs`` at a time); a JSON line per fold, then one
    with the wall time of all the fitting."""
    import torch

    from skinfeat.learn.cv import make_folds
    from skinfeat.learn.linear import C_GRID, LinearConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    table, x, y, groups = load(args.data)
    cfg = LinearConfig(inputs="image", seed=args.seed, cs=C_GRID)
    last = min(n for n in (args.folds, args.sklearn, args.max_folds) if n) if \
        (args.sklearn or args.max_folds) else args.folds
    tasks = [(fold.fold, np.concatenate([fold.train, fold.val]), fold.test, y, groups, cfg,
              args.sklearn) for fold in make_folds(table, args.folds, "group", args.seed)
             if fold.fold < last]
    t = time.perf_counter()
    if args.jobs > 1:   # as skinfeat cv runs its folds: joblib's workers, one thread each
        from skinfeat.learn.parallel import run_unordered
        for _, row in run_unordered(fit_fold, tasks, x, args.jobs):
            print(json.dumps(row), flush=True)
    else:
        for task in tasks:
            print(json.dumps(fit_fold(task, x)), flush=True)
    print(json.dumps({"fitting_wall_s": time.perf_counter() - t, "jobs": args.jobs}), flush=True)


def run(name: str, tree: Path | None, args, extra: tuple[str, ...] = ()) -> list[dict]:
    """The worker in a subprocess on ``tree``'s skinfeat (None: this tree's)."""
    # PYTHONPATH too: joblib's workers import that skinfeat, not the installed one
    env = {**os.environ, "PYTHONPATH": str(tree or ROOT),
           **({"LINEAR_PROBE_TREE": str(tree)} if tree else {})}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--worker", "--data", str(args.data), "--folds",
           str(args.folds), "--seed", str(args.seed), "--threads", str(args.threads),
           "--max-folds", str(args.max_folds), "--jobs", str(args.jobs), *extra]
    print(f"{name}: load before {os.getloadavg()}", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    rows, fitting = [], None
    for line in proc.stdout:
        if line.startswith('{"fitting_wall_s"'):
            fitting = json.loads(line)["fitting_wall_s"]
        elif line.startswith("{"):
            rows.append(json.loads(line))
            print(f"  {name} " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in rows[-1].items()}), flush=True)
    if proc.wait():
        raise SystemExit(f"{name}: the worker failed (exit {proc.returncode})")
    wall = time.perf_counter() - t
    b = 100 * np.array([r["bacc"] for r in rows])
    rows.sort(key=lambda r: r["fold"])
    print(f"{name}: {wall:.1f} s wall (process, with loading), "
          f"{fitting:.1f} s wall fitting all folds on {args.jobs} job(s), "
          f"{sum(r['s'] for r in rows):.1f} s wall fitting summed over folds, "
          f"{sum(r['cpu_s'] for r in rows):.1f} s CPU; balanced accuracy {b.mean():.2f} ± "
          f"{b.std(ddof=1) if len(b) > 1 else 0:.2f} % over {len(rows)} folds; C per fold "
          f"{[r['c'] for r in rows]}; load after {os.getloadavg()}", flush=True)
    return rows


def checkout(ref: str, into: Path) -> Path:
    """``ref``'s skinfeat package, from git, into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "skinfeat"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"before: {ref} ({sha})'s skinfeat in {into}")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-folds", type=int, default=0,
                    help="time the first N outer folds only (0: all); on a busy machine")
    ap.add_argument("--before", default=None, help="a git ref whose probe to time too")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="outer folds at a time, on joblib's workers with one torch thread "
                         "each, as `skinfeat cv --jobs N` runs them (1: one after the other)")
    ap.add_argument("--sklearn-folds", type=int, default=0,
                    help="also time the sklearn probe on the first N folds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sklearn", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in flags.splitlines()
                    if line.startswith(("Model name", "CPU(s)", "Flags"))))
    results = {}
    with tempfile.TemporaryDirectory(prefix="linear_probe_before_") as tmp:
        if args.before:
            results["before"] = run(f"before ({args.before})", checkout(args.before, Path(tmp)),
                                    args)
        results["after"] = run("after (this tree)", None, args)
    if args.sklearn_folds:
        results["sklearn"] = run("sklearn", None, args, ("--sklearn", str(args.sklearn_folds)))
    after = results["after"]
    for name, rows in results.items():
        if name == "after":
            continue
        same = after[:len(rows)]
        agree = sum(r["c"] == a["c"] for r, a in zip(rows, same, strict=True))

        def total(rs, key):
            return sum(r[key] for r in rs)
        print(f"{name} / after on the same {len(rows)} folds: "
              f"{total(rows, 's') / total(same, 's'):.1f}x wall, "
              f"{total(rows, 'cpu_s') / total(same, 'cpu_s'):.1f}x CPU; same C on "
              f"{agree}/{len(rows)} folds")


if __name__ == "__main__":
    main()
