"""Stage two at ISIC 2024 scale: time and peak memory per size, and the cost per 1,000 rows.

    .venv/bin/python benchmarks/scale.py [--rows 10000,50000,100000,401059] [--dim 128]
                                         [--jobs 2] [--tasks fit,cv,cv-context]

Per size, each in a fresh process (so each peak is its own): ``fit-head`` (the head, early
stopping, bundle and report), ``cv --folds 5 --models head,lgbm --inputs fused`` and the same
with ``--group-context``. The metadata has the ISIC 2024 release's columns (the fields of the
``isic2024`` preset, from ``data/synthetic_isic2024.py``'s writer, its rows resampled with noise
to the size asked for, no images), about 385 lesions per patient and 1 % positives (the
release: 401,059 lesions of 1,042 patients, 0.1 %; more positives here keep every fold's
inner validation part with some). Embeddings: ``--dim`` wide, float32, a weak class signal
plus a per-patient component. Prints the CPU (model, cores, the lscpu flags
avx512* / amx*), a table, and the targets at 401,059 rows (cv within 15 minutes and 8 GB
peak) as met or missed. Scores say nothing; only times and memory do.

``--stage-one N`` measures stage one instead: ``extract`` of N synthetic ISIC 2024 crops (JPEG
bytes in ``train-image.hdf5``, each crop re-encoded at a side drawn from 61-239 px, the
release's range) at ``--image-size 224`` and ``128``, with ``--backbone`` (default
convnext_tiny; random weights: speed does not depend on the weight values), printing img/s
(whole pass, and steady after the first batch) and what 401,059 images would take at that rate,
for one encoder pass per image (``--average-views none``; extract's default averages five views,
five passes: five times as long).

    .venv/bin/python benchmarks/scale.py --stage-one 512 [--backbone convnext_tiny]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_two import MemorySampler  # noqa: E402  (the benchmarks' shared memory sampler)

FULL = 401_059
PER_PATIENT = 385
TARGETS = {"cv": 15 * 60.0, "gb": 8.0}   # at FULL rows on 2 cores


def cpu_flags() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            wanted = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx"))]
            return " ".join(wanted) or "no avx512 / amx"
    return "unknown"


def cpu_line() -> str:
    """The model name and core count beside the flags (``lscpu``'s, from /proc/cpuinfo)."""
    import os
    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                 .splitlines() if ln.startswith("model name")), "unknown")
    return f"CPU: {name}, {os.cpu_count()} logical cores; flags: {cpu_flags()}"


def crops_set(root: Path, n: int, seed: int = 0) -> Path:
    """The synthetic ISIC 2024 layout with ``n`` crops, each re-encoded at a side drawn from
    61-239 px (the release's crops are small and of varying size)."""
    import io

    import h5py
    from PIL import Image

    from skinfeat.data.synthetic_isic2024 import write_isic2024

    rng = np.random.default_rng(seed)
    root = write_isic2024(root, n, rng, (239, 239))
    with h5py.File(root / "train-image.hdf5", "r+") as f:
        for key in list(f):
            side = int(rng.integers(61, 240))
            img = Image.open(io.BytesIO(f[key][()])).convert("RGB").resize((side, side))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            del f[key]
            f.create_dataset(key, data=np.bytes_(buf.getvalue()))
    return root


def stage_one(n: int, backbone: str, sizes: tuple[int, ...] = (224, 128)) -> None:
    """img/s of ``extract`` on ``n`` small crops at each input size (see the module docstring)."""
    from skinfeat.data.datasets import load_dataset
    from skinfeat.embed.extract import extract
    from skinfeat.embed.weights import WeightSource

    with tempfile.TemporaryDirectory(prefix="skinfeat-stage-one-") as tmp:
        table = load_dataset(crops_set(Path(tmp) / "set", n), "isic2024").table
        print(f"{len(table)} crops, {backbone}, random weights")
        print(f"{'size':>5} {'precision':<9} {'img/s':>7} {'steady':>7} {'401,059 images':>15}",
              flush=True)
        for size in sizes:
            marks: list[tuple[float, int]] = []
            start = time.perf_counter()
            res = extract(table, Path(tmp) / f"c{size}.h5", backbone=backbone,
                          weights=WeightSource("random"), image_size=size, compile="off",
                          average_views=(),
                          progress=lambda k, marks=marks: marks.append((time.perf_counter(), k)))
            total = time.perf_counter() - start
            first_t, first_n = marks[0]
            steady = (len(table) - first_n) / max(marks[-1][0] - first_t, 1e-9)
            print(f"{size:>5} {res.precision:<9} {len(table) / total:>7.1f} {steady:>7.1f} "
                  f"{FULL / steady / 3600:>13.1f} h", flush=True)


def make_set(root: Path, rows: int, dim: int, seed: int = 0) -> Path:
    """``root/train-metadata.csv`` of ``rows`` ISIC 2024-shaped rows and ``root/cache.h5``."""
    from skinfeat.data.synthetic_isic2024 import write_isic2024
    from skinfeat.embed.cache import CacheContents, write_cache

    rng = np.random.default_rng(seed)
    seedset = write_isic2024(root / "seed", 400, rng, (8, 8))
    base = pd.read_csv(seedset / "train-metadata.csv")
    pick = rng.integers(0, len(base), rows)
    table = base.iloc[pick].reset_index(drop=True)
    numeric = [c for c in table.columns if table[c].dtype.kind == "f" and c.startswith("tbp_lv")]
    table[numeric] += rng.normal(0, 0.05, (rows, len(numeric))) * table[numeric].std().to_numpy()
    n_patients = max(5, rows // PER_PATIENT)
    patient = rng.integers(0, n_patients, rows)
    table["patient_id"] = [f"IP_{p:07d}" for p in patient]
    table["isic_id"] = [f"ISIC_{i:07d}" for i in range(rows)]
    y = (rng.random(rows) < 0.01).astype(int)
    table["target"] = y
    table.to_csv(root / "train-metadata.csv", index=False)
    per_patient = 0.7 * rng.standard_normal((n_patients, dim), dtype=np.float32)
    emb = rng.standard_normal((rows, dim), dtype=np.float32) + per_patient[patient]
    emb[:, :8] += 0.5 * y[:, None]
    write_cache(root / "cache.h5", CacheContents(
        table["isic_id"].to_numpy(object), emb,
        identity={"backbone": "synthetic", "weights": {"kind": "synthetic"}},
        attrs={"weights": "synthetic benchmark embeddings"}))
    return root


def one(root: Path, task: str, jobs: int) -> dict:
    """Run one task on the set in ``root``; its wall time and peak memory (PSS, all
    processes)."""
    from skinfeat.data.datasets import load_dataset
    from skinfeat.learn.cv import CVConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.cv import cv_run
    from skinfeat.workflows.fit import fit_run

    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    data = load_dataset(root, "isic2024", images=False)
    cache, out = root / "cache.h5", Path(tempfile.mkdtemp(dir=root))
    if task == "fit":
        fit_run(data, cache, out, RunConfig())
    else:
        cfg = CVConfig(folds=5, models=("head", "lgbm"), inputs=("fused",),
                       recipe=RunConfig(group_context=task == "cv-context"))
        cv_run(data, cache, out, cfg, jobs=jobs)
    seconds = time.perf_counter() - start
    sampler.halt.set()
    sampler.join()
    return {"seconds": seconds, "gb": sampler.total_kb / 2 ** 20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,50000,100000,401059")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tasks", default="fit,cv,cv-context")
    ap.add_argument("--stage-one", type=int, metavar="N",
                    help="Measure extract's img/s on N small crops instead (sizes 224, 128).")
    ap.add_argument("--backbone", default="convnext_tiny", help="--stage-one's backbone.")
    ap.add_argument("--one", nargs=2, metavar=("ROOT", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1], args.jobs)))
        return 0
    print(cpu_line())
    if args.stage_one:
        stage_one(args.stage_one, args.backbone)
        return 0
    print(f"{'rows':>8} {'task':<11} {'seconds':>9} {'peak GB':>8} {'s / 1k rows':>12}",
          flush=True)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="skinfeat-scale-") as tmp:
            root = make_set(Path(tmp), rows, args.dim)
            for task in args.tasks.split(","):
                r = subprocess.run([sys.executable, __file__, "--one", str(root), task,
                                    "--jobs", str(args.jobs)], capture_output=True, text=True)
                if r.returncode:
                    print(f"{rows:>8} {task:<11} failed: {r.stderr.strip().splitlines()[-1:]}")
                    continue
                got = json.loads(r.stdout.strip().splitlines()[-1])
                results.append({"rows": rows, "task": task, **got})
                print(f"{rows:>8} {task:<11} {got['seconds']:>9.1f} {got['gb']:>8.2f} "
                      f"{1000 * got['seconds'] / rows:>12.3f}", flush=True)
    full = [r for r in results if r["rows"] == FULL and r["task"].startswith("cv")]
    for r in full:
        ok = r["seconds"] <= TARGETS["cv"] and r["gb"] <= TARGETS["gb"]
        print(f"target at {FULL} rows, {r['task']}: {r['seconds'] / 60:.1f} min (<= 15), "
              f"{r['gb']:.2f} GB (<= 8): {'met' if ok else 'MISSED'}")
    if not full:
        print(f"targets at {FULL} rows: not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
