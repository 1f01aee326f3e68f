"""Stage two's speed on HAM10000's real metadata (10,015 rows) with synthetic 768-d embeddings.

    .venv/bin/python benchmarks/stage_two.py [--jobs N] [--before REF] [--repeat N]
                                             [--before-tune] [--skip-sequential-cv]
                                             [--skip-full-cv] [--skip-lgbm-compare]

Times a full ``fit-head`` (reference head, early stopping, bundle and report), ``cv --folds 5
--models head`` over the three input sets (batched fold heads, and fold by fold), ``cv --folds
5`` with head and LightGBM, and ``tune --trials 50`` (and ``--sequential-tune-trials`` trials on
one worker with sequential and with batched heads). fit-head and cv-head are timed on this
working tree and on commit ``--before`` (e.g. the commit before a change) alike: every step runs
in a fresh process on its tree's code, ``--repeat`` times per tree with the trees' order
alternating, and the table shows medians, the ratio this tree / ``--before``, and the CPU
seconds of each step's processes (getrusage of the children: steadier than seconds on a busy
machine). ``--before-tune`` times ``--before``'s tune too; a search with several workers takes
a path that depends on their timing, so tune is also reported as seconds per epoch (one fold's
head, one epoch) for each trial kind. Peak memory is sampled from this process, per step, over
the step's process and its workers. Also compares LightGBM on PCA-64 (the default) with all 768
columns on one CV fold. Prints the CPU's lscpu flags, the load average, a table and PASS/FAIL
per target. The embeddings carry a weak class signal plus a per-lesion component (so images of
one lesion look alike, as real ones do); their scores say nothing about real performance, only
the times do.
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

from skinfeat.data.datasets import CLASSES, load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.embed.cache import CacheContents
from skinfeat.evaluate.metrics import classification_metrics
from skinfeat.learn.baseline import LGBMConfig, fit_lgbm
from skinfeat.learn.cv import make_folds

ROOT = Path(__file__).resolve().parents[1]
METADATA = ROOT.parent / "shared/data/HAM10000_metadata_full.csv"
# seconds (fit-head, cv of the head on 3 input sets, full cv, tune --trials 50), GB
TARGETS = {"fit-head": 8.0, "cv-head": 15.0, "cv": 90.0, "tune": 300.0, "rss": 2.0}
# The head's training defaults when these targets were set (7c926aa; since issue 29 the default
# head trains at Adam 3e-4 for up to 80 epochs, patience 10: about twice the epochs). Both trees
# train this workload, so their code is compared on the same work; ``--head-workload own`` gives
# each tree its own defaults instead.
HEAD_WORKLOAD = '{"lr": 0.001, "max_epochs": 40, "patience": 5}'


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


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (each thread's ``children`` file: no scan of /proc)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:
                continue
    return out


class MemorySampler(threading.Thread):
    """Peak memory of one timed subprocess and its workers together, sampled every 0.5 s from
    this (parent) process, so the timed process runs undisturbed (no sampling thread holding
    its GIL) and both trees are measured alike.

    The total is the summed PSS (``smaps_rollup``): RSS with shared library pages split between
    the processes that map them, where summed RSS would count torch's ~0.3 GB of shared pages
    once per process; ``worker_kb`` is the largest single process's peak RSS (VmHWM).
    """

    def __init__(self, root: int | None = None) -> None:
        super().__init__(daemon=True)
        self.root = os.getpid() if root is None else root   # None: this process (scale.py)
        self.total_kb = self.largest_kb = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            pids = _tree(self.root)
            self.total_kb = max(self.total_kb, sum(_proc_kb(p, "Pss", "smaps_rollup")
                                                   for p in pids))
            self.largest_kb = max([self.largest_kb] + [_proc_kb(p, "VmHWM") for p in pids])


# Runs one step in a fresh process, inside either tree (this working tree or ``--before``'s
# archive; any commit with the stage-grouped layout, a02a792 or later), on that tree's code:
#   run_step.py TREE METADATA CACHE STEP JOBS TRIALS BATCHED OUT
# and prints one JSON line: the step's seconds (the call alone, imports excluded), this
# process's CPU seconds before the step, and for tune each trial's kind, epochs and seconds.
STEP_SNIPPET = """
import json, logging, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from stage_two import load_table, synthetic_cache
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
import optuna
import os

FOLDS = 5
# The head's training workload (STAGE_TWO_HEAD, JSON; unset: the tree's own defaults), the same
# on both trees so that their code is compared on one workload.
_HEAD = json.loads(os.environ.get("STAGE_TWO_HEAD") or "null")


def recipe():
    from skinfeat.learn.runconfig import RunConfig

    # the head, on both trees (the default model became the head + linear ensemble after the
    # targets were set: benchmarks/default_model.py times that)
    return RunConfig.from_dict({"model": "head"} if _HEAD is None
                               else {"model": "head", "head": _HEAD})


def pick(obj, *path):
    # a result's field, whether the workflows return dicts or dataclasses
    try:
        for key in path:
            obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
        return obj
    except (KeyError, AttributeError, TypeError, IndexError):
        return None


def trials(study):
    out = []
    for t in study.trials:
        best = t.user_attrs.get("best_epochs")
        p = t.params
        if best is not None:   # complete: each fold stops patience epochs after its best
            fold_epochs = sum(min(b + p["patience"], p["max_epochs"]) for b in best)
        else:                  # pruned: the batched fit's reported epochs, every fold
            fold_epochs = len(t.intermediate_values) * FOLDS
        done = t.datetime_complete or t.datetime_start
        out.append({"number": t.number, "state": t.state.name, "head": p.get("head"),
                    "dense_width": p.get("dense_width"), "fold_epochs": fold_epochs,
                    "seconds": (done - t.datetime_start).total_seconds()})
    return out


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tree, metadata, cache, step, jobs, n_trials, batched, out = sys.argv[1:9]
    jobs, n_trials, batched = int(jobs), int(n_trials), batched == "1"
    table = load_table(Path(metadata))
    if step == "prepare":
        write_cache(Path(cache), synthetic_cache(table))
        sys.exit(0)
    studies = []
    create = optuna.create_study

    def recorded(*args, **kw):
        studies.append(create(*args, **kw))
        return studies[-1]

    optuna.create_study = recorded
    res, note = {}, {}
    cpu0 = time.process_time()
    t = time.perf_counter()
    if step == "fit-head":
        r = fit_run(table, cache, Path(out), recipe())
        note = {"best_epoch": pick(r, "info", "best_epoch"),
                "balanced_accuracy": pick(r, "metrics", "balanced_accuracy")}
    elif step.startswith("cv"):
        pinned = {} if _HEAD is None else {"recipe": recipe()}
        # "cv": head + LightGBM, what the target was set on (the default became the ensemble)
        cfg = CVConfig(folds=FOLDS, models=("head", "lgbm"), **pinned) if step == "cv" else \
            CVConfig(folds=FOLDS, models=("head",), batched=step != "cv-head-seq", **pinned)
        r = cv_run(table, cache, Path(out), cfg, jobs=jobs)
        note = {"fused": pick(r, "summary", "head", "fused", "balanced_accuracy")
                or pick(r, "run", "summary", "head", "fused", "balanced_accuracy")}
    else:
        pinned = {} if _HEAD is None else {"start": recipe()}
        r = tune_run(table, cache, Path(out), TuneConfig(trials=n_trials, jobs=jobs,
                                                         batched=batched, **pinned))
        note = {"best": pick(r, "best", "value"),
                "held_out": pick(r, "held_out", "metrics", "balanced_accuracy"),
                "trials": trials(studies[-1])}
    res["seconds"] = time.perf_counter() - t
    res["cpu_before_step"] = cpu0   # the start, the imports and the table: not the step's
    res["mode"] = "batched" if batched else "sequential"
    print(json.dumps({**res, **note}, default=float))
"""


class Tree:
    """A tree whose steps are timed: this working tree, or ``ref``'s files (git archive)."""

    def __init__(self, label: str, root: Path, tmp: Path):
        self.label, self.root, self.tmp = label, root, tmp
        self.cache = tmp / f"{label.strip('-').split()[0]}.h5"   # this.h5, before.h5
        self.runs: dict[str, list[dict]] = {}

    @classmethod
    def archive(cls, ref: str, tmp: Path) -> Tree | None:
        import subprocess

        dest = tmp / "before"
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "skinfeat",
                                  "benchmarks"], capture_output=True)
        if archive.returncode:
            print(f"(--before not measured: git archive {ref} failed)")
            return None
        dest.mkdir()
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return cls(f"--before {ref}", dest, tmp)

    def run(self, step: str, jobs: int = 1, trials: int = 0, batched: bool = True) -> dict:
        """One step in a fresh process on this tree's code: its result, with the load average
        before it, the step's CPU seconds (the process's and its workers', getrusage of this
        process's children, less what the process spent before the step) and the peak memory
        of its process tree."""
        import json
        import subprocess

        snippet = self.tmp / "run_step.py"
        if not snippet.exists():
            snippet.write_text(STEP_SNIPPET)
        out = self.tmp / f"out-{len(list(self.tmp.iterdir()))}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        proc = subprocess.Popen([sys.executable, str(snippet), str(self.root), str(METADATA),
                                 str(self.cache), step, str(jobs), str(trials),
                                 str(int(batched)), str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(self.root),
                                     "STAGE_TWO_HEAD": HEAD_WORKLOAD},
                                cwd=self.tmp)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        stdout, stderr = proc.communicate()
        sampler.halt.set()
        sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(f"{self.label} {step} failed: {stderr.strip()[-2000:]}")
        if step == "prepare":
            return {}
        res = json.loads(stdout.strip().splitlines()[-1])
        res.update(load=load, child_cpu=(after.ru_utime + after.ru_stime)
                   - (before.ru_utime + before.ru_stime) - res["cpu_before_step"],
                   pss_gb=sampler.total_kb / 2**20, largest_gb=sampler.largest_kb / 2**20)
        self.runs.setdefault(step if step != "tune" else f"tune-{trials}-{jobs}-{int(batched)}",
                             []).append(res)
        print(f"{self.label:>18} {step:<12} {res['seconds']:7.1f} s  CPU {res['child_cpu']:7.1f} s"
              f"  load {load:4.2f}  peak {res['pss_gb']:.2f} GB", flush=True)
        return res

    def median(self, key: str, field: str = "seconds") -> float | None:
        runs = self.runs.get(key)
        return float(np.median([r[field] for r in runs])) if runs else None


def by_kind(runs: list[dict]) -> dict[str, tuple[int, float, int]]:
    """Trials of tune runs by kind (head type; sequential or batched): (trials, seconds,
    fold-epochs)."""
    out: dict[str, list] = {}
    for run in runs:
        for t in run["trials"]:
            row = out.setdefault(f"{t['head']}, {run['mode']}", [0, 0.0, 0])
            row[0] += 1
            row[1] += t["seconds"]
            row[2] += t["fold_epochs"]
    return {k: tuple(v) for k, v in sorted(out.items())}


def cpu_flags() -> str:
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "lscpu not available"
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
    return f"{lines.get('Model name', '?')}; Flags: {lines.get('Flags', '?')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=0, help="cv/tune processes (0: all cores)")
    parser.add_argument("--before", default="HEAD", help="git commit whose fit-head and cv "
                        "are timed beside this working tree, e.g. the commit before a change "
                        "('' to skip)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time fit-head and cv-head this many times on each tree, "
                        "alternating the trees' order, and report the medians (all values "
                        "printed): on a shared machine one run of each can differ by a third")
    parser.add_argument("--tune-trials", type=int, default=50, help="0 to skip tune")
    parser.add_argument("--head-workload", choices=("pinned", "own"), default="pinned",
                        help="pinned: both trees train the head on the targets' workload (Adam "
                        "1e-3, up to 40 epochs, patience 5); own: each tree's default head")
    parser.add_argument("--before-tune", action="store_true",
                        help="also time --before's tune: the same trials with one worker (the "
                        "same search path), and the --tune-trials search, whose path varies "
                        "with the workers' timing (compare its seconds per epoch by trial kind)")
    parser.add_argument("--sequential-tune-trials", type=int, default=10,
                        help="trials run twice with one worker, sequential and batched heads "
                        "(0 to skip)")
    parser.add_argument("--skip-sequential-cv", action="store_true",
                        help="skip cv-head fold by fold (the batched cv's comparison)")
    parser.add_argument("--skip-full-cv", action="store_true",
                        help="skip cv with head and LightGBM (30 fits)")
    parser.add_argument("--skip-lgbm-compare", action="store_true",
                        help="skip the (slow) PCA vs all-columns LightGBM comparison")
    args = parser.parse_args()
    global HEAD_WORKLOAD
    if args.head_workload == "own":
        HEAD_WORKLOAD = ""
    print(f"head workload: {HEAD_WORKLOAD or 'each tree its own defaults'}")
    if not METADATA.is_file():
        print(f"SKIP: {METADATA} not found; this benchmark needs HAM10000's metadata file "
              "(10,015 rows) there.")
        return 0
    table = load_table(METADATA)
    jobs = args.jobs or os.cpu_count() or 1
    print(cpu_flags())
    print(f"{len(table)} images, {table['group_id'].nunique()} lesions, 768-d synthetic "
          f"embeddings; {os.cpu_count()} CPU cores, jobs {jobs}; every step in a fresh process "
          "(seconds: the call alone; CPU: the process and its workers, getrusage)")
    with tempfile.TemporaryDirectory() as tmp:
        this = Tree("this tree", ROOT, Path(tmp))
        before = Tree.archive(args.before, Path(tmp)) if args.before else None
        trees = [t for t in (before, this) if t is not None]
        for tree in trees:
            tree.run("prepare")

        def alternate(step: str, **kw) -> None:   # ABBA...: drift in the load cancels out
            for r in range(args.repeat):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    tree.run(step, **kw)

        alternate("fit-head")
        alternate("cv-head", jobs=jobs)
        if not args.skip_sequential_cv:
            this.run("cv-head-seq", jobs=jobs)
        if not args.skip_full_cv:
            this.run("cv", jobs=jobs)
        both = trees if args.before_tune else [this]
        n_seq = args.sequential_tune_trials
        if n_seq:   # the same trials (one worker, same seed): sequential, then batched heads
            this.run("tune", 1, n_seq, batched=False)
            for tree in both:
                tree.run("tune", 1, n_seq)
        if args.tune_trials:
            for tree in both:
                tree.run("tune", jobs, args.tune_trials)
    lgbm = {} if args.skip_lgbm_compare else lgbm_pca_cost(table, synthetic_cache(table))
    report(this, before, args, jobs)
    if lgbm:
        print("\nLightGBM, fused inputs, CV fold 0, one thread:")
        for name, row in lgbm.items():
            print(f"  {name:<8} {row['seconds']:6.1f} s  {row['rounds']:3d} rounds  "
                  f"balanced acc {row['balanced_accuracy']:.3f}")
    peak = max(r["pss_gb"] for runs in this.runs.values() for r in runs)
    return 0 if all(ok for ok in _verdicts(this, args, jobs)) and peak <= TARGETS["rss"] else 1


def _steps(args, jobs: int) -> list[tuple[str, str, str | None, str]]:
    """(key, row name, target, note kind) of the table's rows."""
    n, t = args.sequential_tune_trials, args.tune_trials
    rows = [("fit-head", "fit-head (reference head, bundle + report)", "fit-head", "fit"),
            ("cv-head", "cv --folds 5 --models head (3 input sets)", "cv-head", "cv"),
            ("cv-head-seq", "  the same, fold by fold", None, "cv"),
            ("cv", "cv --folds 5 (head + lgbm x image/meta/fused)", "cv", "")]
    if n:
        rows += [(f"tune-{n}-1-0", f"tune --trials {n} --jobs 1, sequential heads", None, ""),
                 (f"tune-{n}-1-1", f"tune --trials {n} --jobs 1, batched heads", None, "tune")]
    if t:
        rows.append((f"tune-{t}-{jobs}-1", f"tune --trials {t} (--jobs {jobs})", "tune", "tune"))
    return rows


def _verdicts(this: Tree, args, jobs: int) -> list[bool]:
    return [this.median(key) <= TARGETS[target] for key, _, target, _ in _steps(args, jobs)
            if target and this.runs.get(key)]


def report(this: Tree, before: Tree | None, args, jobs: int) -> None:
    """The table (medians; this tree beside --before's, same run), seconds per epoch by trial
    kind, and peak memory."""
    loads = [r["load"] for t in (this, before) if t for runs in t.runs.values() for r in runs]
    print(f"\nload average (1 min) before each step: {min(loads):.2f} to {max(loads):.2f}; "
          f"now {os.getloadavg()[0]:.2f}")
    ref = before.label if before else "--before"
    print(f"\n{'step':<46}{'value':>8}{'target':>8}  result{'before':>9}{'x':>6}"
          f"{'CPU s':>8}{'before':>8}{'x':>6}  notes  (x: this tree / {ref})")
    for key, name, target, kind in _steps(args, jobs):
        if not this.runs.get(key):
            continue
        value, cpu, first = this.median(key), this.median(key, "child_cpu"), this.runs[key][0]
        old = before.median(key) if before else None
        old_cpu = before.median(key, "child_cpu") if before else None
        cells = (f"{target and TARGETS[target] or 0:>7.0f}s  {verdict(value, TARGETS[target])}"
                 if target else " " * 8 + "  " + " " * 4)
        note = ""
        if kind == "fit" and first.get("best_epoch") is not None:
            note = (f"best epoch {first['best_epoch']}, balanced acc "
                    f"{first['balanced_accuracy']:.3f}")
        elif kind == "cv" and first.get("fused"):
            note = f"fused balanced acc {first['fused']['mean']:.3f} ± {first['fused']['std']:.3f}"
        elif kind == "tune" and first.get("best") is not None:
            note = f"best CV {first['best']:.3f}, held-out {first['held_out']:.3f}"
        runs = len(this.runs[key])
        if runs > 1:
            note += f"; {runs} runs each: " + " ".join(
                f"{r['seconds']:.1f}" for r in this.runs[key]) + (
                " vs " + " ".join(f"{r['seconds']:.1f}" for r in before.runs[key])
                if old else "")
        print(f"{name:<46}{value:>7.1f}s{cells}" + _pair(old, value) + _pair(old_cpu, cpu, cpu)
              + f"  {note}")
    for key, name, _, kind in _steps(args, jobs):
        if kind != "tune" or not this.runs.get(key):
            continue
        print(f"\n{name.strip()}: seconds per epoch (one fold's head, one epoch) by trial kind")
        mine = by_kind(this.runs[key])
        old = by_kind(before.runs[key]) if before and before.runs.get(key) else {}
        for kind_ in sorted(set(mine) | set(old)):
            cells = []
            for got in (mine.get(kind_), old.get(kind_)):
                cells.append(f"{got[0]:3d} trials {got[2]:5d} epochs {got[1] / got[2]:6.3f} s"
                             if got and got[2] else " " * 33)
            ratio = (f"x {(mine[kind_][1] / mine[kind_][2]) / (old[kind_][1] / old[kind_][2]):.2f}"
                     if kind_ in mine and kind_ in old and mine[kind_][2] and old[kind_][2]
                     else "")
            print(f"  {kind_:<22} this tree {cells[0]}   {ref} {cells[1]}  {ratio}")
    peaks = {t.label: max(((r["pss_gb"], r["largest_gb"], k) for k, runs in t.runs.items()
                           for r in runs), default=(0, 0, "")) for t in (this, before) if t}
    total, largest, step = peaks[this.label]
    print(f"\n{'peak memory, one step (summed PSS)':<46}{total:>6.2f}GB{TARGETS['rss']:>6.0f}GB  "
          f"{verdict(total, TARGETS['rss'])}  in {step}; largest process {largest:.2f} GB (RSS)"
          + ("; {}: {:.2f} GB in {}".format(ref, *peaks[ref][::2]) if before else ""))


def _pair(old: float | None, new: float, shown: float | None = None) -> str:
    """``before`` and the ratio this / before, or blanks; ``shown`` prints ``new`` first."""
    head = f"{shown:>7.1f}s" if shown is not None else ""
    if not old:
        return head + " " * 14
    return head + f"{old:>8.1f}s{new / old:>5.2f}"


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
