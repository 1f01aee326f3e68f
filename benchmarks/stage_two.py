"""Stage two's speed on HAM10000's real metadata (10,015 rows) with synthetic 768-d embeddings.

    .venv/bin/python benchmarks/stage_two.py [--jobs N] [--skip-lgbm-compare]

Times a full ``fit-head`` run (reference head, early stopping, bundle and report included) and a
``cv --folds 5`` run (head + LightGBM x image, meta, fused, report included), reports peak RSS,
and compares LightGBM on PCA-64 (the default) with all 768 columns on one CV fold. Prints a table
and PASS/FAIL per target. The embeddings carry a weak class signal plus a per-lesion component
(so images of one lesion look alike, as real ones do); their scores say nothing about real
performance, only the times do.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from skinfeat.baseline import LGBMConfig, fit_lgbm
from skinfeat.cache import CacheContents, write_cache
from skinfeat.cv import CVConfig, cv_run, make_folds
from skinfeat.datasets import CLASSES, load_dataset
from skinfeat.metadata import MetadataEncoder
from skinfeat.metrics import classification_metrics
from skinfeat.train import fit_run

ROOT = Path(__file__).resolve().parents[1]
METADATA = ROOT.parent / "shared/data/HAM10000_metadata_full.csv"
TARGETS = {"fit-head": 10.0, "cv": 90.0, "rss": 2.0}   # seconds, seconds, GB


def load_table(path: Path) -> pd.DataFrame:
    """The validated table from the metadata file alone (no images needed here)."""
    return load_dataset(path, "ham10000", images=False).table


def synthetic_cache(table: pd.DataFrame, dim: int = 768, signal: float = 0.05,
                    seed: int = 0) -> CacheContents:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(CLASSES), dim), dtype=np.float32)
    lesion = pd.factorize(table["lesion_id"])[0]
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
        out[name] = {"seconds": seconds, "rounds": int(model.booster.best_iteration),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=0, help="cv worker processes (0: all cores)")
    parser.add_argument("--skip-lgbm-compare", action="store_true",
                        help="skip the (slow) PCA vs all-columns LightGBM comparison")
    args = parser.parse_args()
    if not METADATA.is_file():
        print(f"SKIP: {METADATA} not found; this benchmark needs HAM10000's metadata file "
              "(10,015 rows) there.")
        return 0
    table = load_table(METADATA)
    contents = synthetic_cache(table)
    jobs = args.jobs or os.cpu_count() or 1
    print(f"{len(table)} images, {table['lesion_id'].nunique()} lesions, "
          f"{contents.dim}-d synthetic embeddings; {os.cpu_count()} CPU cores, cv jobs {jobs}")
    rows = []
    sampler = MemorySampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "bench.h5"
        write_cache(cache, contents)
        start = time.perf_counter()
        res = fit_run(table, cache, Path(tmp) / "fit-head", model="head")
        seconds = time.perf_counter() - start
        rows.append(("fit-head (reference head, bundle + report)", seconds, TARGETS["fit-head"],
                     f"best epoch {res['info']['best_epoch']}, balanced acc "
                     f"{res['metrics']['balanced_accuracy']:.3f}"))
        start = time.perf_counter()
        cv = cv_run(table, cache, Path(tmp) / "cv", CVConfig(folds=5), jobs=jobs)
        seconds = time.perf_counter() - start
        fused = cv["summary"]["head"]["fused"]["balanced_accuracy"]
        rows.append(("cv --folds 5 (head + lgbm x image/meta/fused)", seconds, TARGETS["cv"],
                     f"30 fits; head fused balanced acc {fused['mean']:.3f} ± {fused['std']:.3f}"))
    lgbm = {} if args.skip_lgbm_compare else lgbm_pca_cost(table, contents)
    sampler.halt.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KB -> GB
    total, worker = sampler.total_kb / 2**20 or own, sampler.worker_kb / 2**20
    print(f"\n{'step':<48}{'value':>8}{'target':>8}  result  notes")
    for name, seconds, target, note in rows:
        print(f"{name:<48}{seconds:>7.1f}s{target:>7.0f}s  {verdict(seconds, target)}    {note}")
    print(f"{'peak memory, all processes (summed PSS)':<48}{total:>6.2f}GB"
          f"{TARGETS['rss']:>6.0f}GB  "
          f"{verdict(total, TARGETS['rss'])}    peak RSS: this process {own:.2f} GB "
          f"(getrusage), largest worker {worker:.2f} GB")
    if lgbm:
        print("\nLightGBM, fused inputs, CV fold 0, one thread:")
        for name, row in lgbm.items():
            print(f"  {name:<8} {row['seconds']:6.1f} s  {row['rounds']:3d} rounds  "
                  f"balanced acc {row['balanced_accuracy']:.3f}")
    return 0 if all(r[1] <= r[2] for r in rows) and total <= TARGETS["rss"] else 1


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
