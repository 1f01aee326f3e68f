"""Stage two's speed on HAM10000's real metadata (10,015 rows) with synthetic 768-d embeddings.

    .venv/bin/python benchmarks/stage_two.py [--jobs N] [--before REF] [--skip-full-cv]
                                             [--skip-lgbm-compare] [--before-tune]

Times, in one run and beside the sequential path: a full ``fit-head`` (reference head, early
stopping, bundle and report; beside the same on commit ``--before``, e.g. the commit before a
change, in a subprocess), ``cv --folds 5 --models head`` over the three input sets (batched fold
heads beside fold-by-fold ones, and beside ``--before``'s), ``cv --folds 5`` with head and LightGBM,
and ``tune --trials 50`` (and, beside it, ``--sequential-tune-trials`` trials on one worker
with sequential and with batched heads); reports peak memory, and compares LightGBM on PCA-64 (the
default) with all 768 columns
on one CV fold. Prints the CPU's lscpu flags, a table and PASS/FAIL per target. The embeddings
carry a weak class signal plus a per-lesion component (so images of one lesion look alike, as
real ones do); their scores say nothing about real performance, only the times do.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from skinfeat.data.datasets import CLASSES, load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.embed.cache import CacheContents, write_cache
from skinfeat.evaluate.metrics import classification_metrics
from skinfeat.learn.baseline import LGBMConfig, fit_lgbm
from skinfeat.learn.cv import CVConfig, make_folds
from skinfeat.workflows.cv import cv_run
from skinfeat.workflows.fit import fit_run

ROOT = Path(__file__).resolve().parents[1]
METADATA = ROOT.parent / "shared/data/HAM10000_metadata_full.csv"
# seconds (fit-head, cv of the head on 3 input sets, full cv, tune --trials 50), GB
TARGETS = {"fit-head": 8.0, "cv-head": 15.0, "cv": 90.0, "tune": 300.0, "rss": 2.0}


def load_table(path: Path) -> pd.DataFrame:
    """The validated table from the metadata file alone (no images needed here)."""
    return load_dataset(path, "ham10000", images=False).table


def synthetic_cache(table: pd.DataFrame, dim: int = 768, signal: float = 0.05,
                    seed: int = 0) -> CacheContents:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(CLASSES), dim), dtype=np.float32)
    lesion = pd.factorize(table["group_id"])[0]
    per_lesion = 0.7 * rng.standard_normal((lesion.max() + 1, dim), dtype=np.float32)
    emb = rng.standard_normal((len(table), dim), dtype=np.float32)
    emb += per_lesion[lesion]
    emb += signal * centers[table["label"].to_numpy()]
    return CacheContents(table["image_id"].to_numpy(object), emb,
                         identity={"backbone": "synthetic", "weights": {"kind": "synthetic"}},
                         attrs={"weights": "synthetic benchmark embeddings"})


def lgbm_pca_cost(table: pd.DataFrame, contents: CacheContents) -> dict:
    """LightGBM (fused inputs) on fold 0 of the 5-fold CV: PCA-64 vs every embedding column.

    One thread, as in the CV's workers: the results do not depend on it, and on a busy machine
    two OpenMP threads can be several times slower than one, which would swamp the comparison.
    """
    fold = make_folds(table, 5, "lesion", seed=42)[0]
    meta = MetadataEncoder().fit(table.iloc[fold.train]).transform(table)
    y = table["label"].to_numpy()
    part = {s: (contents.embeddings[i], meta[i], y[i])
            for s, i in (("train", fold.train), ("val", fold.val), ("test", fold.test))}
    out = {}
    for name, pca_dim in (("PCA 64", 64), ("all 768", 0)):
        start = time.perf_counter()
        model = fit_lgbm(part["train"], part["val"], len(CLASSES),
                         LGBMConfig(pca_dim=pca_dim, num_threads=1))
        seconds = time.perf_counter() - start
        proba = model.predict_proba(*part["test"][:2])
        out[name] = {"seconds": seconds, "rounds": int(model.booster_.best_iteration),
                     "balanced_accuracy": classification_metrics(
                         part["test"][2], proba, CLASSES)["balanced_accuracy"]}
    return out


def _proc_kb(pid: int, field: str, name: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child] + _children(child)
    return out


class MemorySampler(threading.Thread):
    """Peak memory of this process and its worker processes together, sampled every 0.2 s.

    getrusage covers this process; a spawned worker's ru_maxrss would also count the parent's
    pages it held between fork and exec, so workers are read from /proc (VmHWM). The total is
    the summed PSS (``smaps_rollup``): RSS with shared library pages split between the processes
    that map them, where summed RSS would count torch's ~0.3 GB of shared pages once per process.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.total_kb = self.worker_kb = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            workers = _children(os.getpid())
            self.total_kb = max(self.total_kb, sum(_proc_kb(p, "Pss", "smaps_rollup")
                                                   for p in [os.getpid(), *workers]))
            self.worker_kb = max([self.worker_kb] + [_proc_kb(p, "VmHWM") for p in workers])


# Runs inside ``--before``'s tree (any commit with the stage-grouped layout, a02a792 or later).
BEFORE_SNIPPET = """
import sys, time, tempfile, json
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from stage_two import load_table, synthetic_cache, METADATA
from skinfeat.embed.cache import write_cache
from skinfeat.learn.cv import CVConfig
from skinfeat.learn.tune import TuneConfig
try:   # the workflows layer (issue 18) or, before it, the learn modules
    from skinfeat.workflows.cv import cv_run
    from skinfeat.workflows.fit import fit_run
    from skinfeat.workflows.tune import tune_run
except ImportError:
    from skinfeat.learn.cv import cv_run
    from skinfeat.learn.train import fit_run
    from skinfeat.learn.tune import tune_run
if __name__ == "__main__":
    table = load_table(Path(sys.argv[2]))
    jobs, trials = int(sys.argv[3]), int(sys.argv[4])
    tmp = Path(tempfile.mkdtemp())
    write_cache(tmp / "bench.h5", synthetic_cache(table))
    out = {}
    if trials:   # tune only (--before-tune), as this tree's tune row runs it
        t = time.perf_counter()
        tune_run(table, tmp / "bench.h5", tmp / "tune", TuneConfig(trials=trials, jobs=jobs))
        print(json.dumps({"tune": time.perf_counter() - t}))
        sys.exit(0)
    t = time.perf_counter()
    fit_run(table, tmp / "bench.h5", tmp / "fit-head")
    fit = time.perf_counter() - t
    t = time.perf_counter()
    cv_run(table, tmp / "bench.h5", tmp / "cv", CVConfig(folds=5, models=("head",)),
           jobs=jobs)
    print(json.dumps({"fit-head": fit, "cv-head": time.perf_counter() - t}))
"""


def run_before(ref: str, jobs: int, tune_trials: int = 0) -> dict:
    """fit-head and cv --models head of commit ``ref`` (the code before a change), on the
    same data, in a subprocess, measured in this run; with ``tune_trials``, its tune instead."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "skinfeat",
                                  "benchmarks"], capture_output=True)
        if archive.returncode:
            print(f"(--before not measured: git archive {ref} failed)")
            return {}
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        (Path(tmp) / "run_before.py").write_text(BEFORE_SNIPPET)
        env = {**os.environ, "PYTHONPATH": tmp}
        out = subprocess.run([sys.executable, str(Path(tmp) / "run_before.py"), tmp,
                              str(METADATA), str(jobs), str(tune_trials)],
                             capture_output=True, text=True,
                             env=env, cwd=tmp)
        if out.returncode:
            print(f"(--before {ref} failed: {out.stderr.strip().splitlines()[-1:]})")
            return {}
        return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "lscpu not available"
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
    return f"{lines.get('Model name', '?')}; Flags: {lines.get('Flags', '?')}"


def timed(fn):
    start = time.perf_counter()
    res = fn()
    return time.perf_counter() - start, res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=0, help="cv/tune processes (0: all cores)")
    parser.add_argument("--before", default="HEAD", help="git commit whose fit-head and cv "
                        "are timed beside this working tree, e.g. the commit before a change "
                        "('' to skip)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time fit-head and cv-head this many times, --before's and this "
                        "tree's, and report the medians (all values printed): on a shared "
                        "machine one run of each can differ by a third")
    parser.add_argument("--tune-trials", type=int, default=50, help="0 to skip tune")
    parser.add_argument("--before-tune", action="store_true",
                        help="also time --before's tune (the same trials and jobs, in a "
                        "subprocess, after this tree's): a search's cost depends on which "
                        "configurations it picks, so compare it in the same hour")
    parser.add_argument("--sequential-tune-trials", type=int, default=10,
                        help="trials run twice with one worker, sequential and batched heads "
                        "(0 to skip)")
    parser.add_argument("--skip-full-cv", action="store_true",
                        help="skip cv with head and LightGBM (30 fits)")
    parser.add_argument("--skip-lgbm-compare", action="store_true",
                        help="skip the (slow) PCA vs all-columns LightGBM comparison")
    args = parser.parse_args()
    if not METADATA.is_file():
        print(f"SKIP: {METADATA} not found; this benchmark needs HAM10000's metadata file "
              "(10,015 rows) there.")
        return 0
    import optuna

    from skinfeat.learn.tune import TuneConfig
    from skinfeat.workflows.tune import tune_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # a line per trial buries the table

    table = load_table(METADATA)
    contents = synthetic_cache(table)
    jobs = args.jobs or os.cpu_count() or 1
    print(cpu_flags())
    print(f"{len(table)} images, {table['group_id'].nunique()} lesions, "
          f"{contents.dim}-d synthetic embeddings; {os.cpu_count()} CPU cores, jobs {jobs}")
    rows = []
    # The previous code first, in its own processes, outside the memory measurement.
    olds = [run_before(args.before, jobs) for _ in range(args.repeat)] if args.before else []
    old = {k: float(np.median([o[k] for o in olds if k in o]))
           for k in ("fit-head", "cv-head") if any(k in o for o in olds)}
    for k in old:
        print(f"--before {args.before} {k}: " + ", ".join(f"{o[k]:.1f}" for o in olds if k in o)
              + f" s (median {old[k]:.1f})")
    sampler = MemorySampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "bench.h5"
        write_cache(cache, contents)
        fits = [timed(lambda r=r: fit_run(table, cache, Path(tmp) / f"fit-head{r}"))
                for r in range(args.repeat)]
        seconds, res = float(np.median([f[0] for f in fits])), fits[0][1]
        print("this tree fit-head: " + ", ".join(f"{f[0]:.1f}" for f in fits)
              + f" s (median {seconds:.1f})")
        rows.append(("fit-head (reference head, bundle + report)", seconds, TARGETS["fit-head"],
                     old.get("fit-head"), f"--before {args.before}",
                     f"best epoch {res.info.best_epoch}, balanced acc "
                     f"{res.metrics['balanced_accuracy']:.3f}"))
        head_cv = CVConfig(folds=5, models=("head",))
        seq, _ = timed(lambda: cv_run(table, cache, Path(tmp) / "cv-seq",
                                      replace(head_cv, batched=False), jobs=jobs))
        cvs = [timed(lambda r=r: cv_run(table, cache, Path(tmp) / f"cv-head{r}", head_cv,
                                        jobs=jobs)) for r in range(args.repeat)]
        seconds, cv = float(np.median([c[0] for c in cvs])), cvs[0][1]
        print("this tree cv-head: " + ", ".join(f"{c[0]:.1f}" for c in cvs)
              + f" s (median {seconds:.1f})")
        fused = cv.run.summary["head"]["fused"]["balanced_accuracy"]
        rows.append(("cv --folds 5 --models head (3 input sets)", seconds, TARGETS["cv-head"],
                     seq, "fold by fold, this code",
                     f"15 fits; fused balanced acc {fused['mean']:.3f} ± {fused['std']:.3f}"))
        if old.get("cv-head"):
            rows.append((f"  the same, --before {args.before}", old["cv-head"], None, None, "",
                         ""))
        if not args.skip_full_cv:
            seconds, _ = timed(lambda: cv_run(table, cache, Path(tmp) / "cv",
                                              CVConfig(folds=5), jobs=jobs))
            rows.append(("cv --folds 5 (head + lgbm x image/meta/fused)", seconds,
                         TARGETS["cv"], None, "", "30 fits"))
        n_seq = args.sequential_tune_trials
        if n_seq:   # the same trials (one worker, same seed) with sequential and batched heads
            for batched, label in ((False, "sequential"), (True, "batched")):
                seconds, _ = timed(lambda label=label, batched=batched: tune_run(
                    table, cache, Path(tmp) / f"tune-{label}",
                    TuneConfig(trials=n_seq, jobs=1, batched=batched)))
                rows.append((f"tune --trials {n_seq} --jobs 1, {label} heads", seconds, None,
                             None, "", ""))
            rows[-1] = (*rows[-1][:3], rows[-2][1], "sequential heads, same trials",
                        rows[-1][5])
        if args.tune_trials:   # 0: no tune
            seconds, tuned = timed(lambda: tune_run(table, cache, Path(tmp) / "tune", TuneConfig(
                trials=args.tune_trials, jobs=jobs)))
            rows.append((f"tune --trials {args.tune_trials} (--jobs {jobs})", seconds,
                         TARGETS["tune"], None, "",
                         f"best CV {tuned.best['value']:.3f}, held-out "
                         f"{tuned.held_out['metrics']['balanced_accuracy']:.3f}"))
    lgbm = {} if args.skip_lgbm_compare else lgbm_pca_cost(table, contents)
    sampler.halt.set()
    sampler.join()
    if args.tune_trials and args.before and args.before_tune:   # outside the memory window
        before = run_before(args.before, jobs, args.tune_trials).get("tune")
        at = next(i for i, r in enumerate(rows) if r[0].startswith("tune --trials"))
        if before:
            rows[at] = (*rows[at][:3], before, f"--before {args.before}", rows[at][5])
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KB -> GB
    total, worker = sampler.total_kb / 2**20 or own, sampler.worker_kb / 2**20
    print(f"\n{'step':<46}{'value':>8}{'target':>8}  result{'before':>9}  x   before is  notes")
    ok = True
    for name, seconds, target, before, what, note in rows:
        ratio = f"{before / seconds:4.1f}" if before else "    "
        verdict_ = verdict(seconds, target) if target else "    "
        ok &= target is None or seconds <= target
        print(f"{name:<46}{seconds:>7.1f}s" + (f"{target:>7.0f}s" if target else " " * 8)
              + f"  {verdict_}  " + (f"{before:>7.1f}s" if before else " " * 8)
              + f" {ratio}  {what}  {note}")
    print(f"{'peak memory, all processes (summed PSS)':<46}{total:>6.2f}GB"
          f"{TARGETS['rss']:>6.0f}GB  "
          f"{verdict(total, TARGETS['rss'])}    peak RSS: this process {own:.2f} GB "
          f"(getrusage), largest worker {worker:.2f} GB")
    if lgbm:
        print("\nLightGBM, fused inputs, CV fold 0, one thread:")
        for name, row in lgbm.items():
            print(f"  {name:<8} {row['seconds']:6.1f} s  {row['rounds']:3d} rounds  "
                  f"balanced acc {row['balanced_accuracy']:.3f}")
    return 0 if ok and total <= TARGETS["rss"] else 1


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
