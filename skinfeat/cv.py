"""K-fold cross-validation and input ablations over the embedding cache (``skinfeat cv``).

Every (seed, fold) trains each model on each input set on the same rows, so one table shows what
metadata adds. Folds are stratified by class and grouped by the dataset's groups (lesions,
patients; ``split="lesion"``) unless the reference's leaky image-level protocol is asked for.
Each fit is ``train.fit_split``, the same path as ``fit-head``: the metadata encoder is fitted on
the fold's training rows only, and early stopping and calibration use an inner validation part
carved from the training folds (``splits.holdout_mask``): the scored fold never picks an epoch,
a round, a temperature or a threshold.

Each fit seeds itself, so fits are independent of their order and ``jobs`` of them run at once:
this process and ``jobs - 1`` worker processes (spawned: call it under ``if __name__ ==
"__main__"``), one thread each. That is how the CV uses every core: batch-64 head steps are far
too small for intra-op threads, and on a busy machine OpenMP threads wait on each other at every
barrier (on a shared 2-core machine, LightGBM on 2 threads ran 10x to 100x slower than on 1).
This process works too because each worker costs a torch import (~0.5 GB). Head fits always run
on one torch thread (``head.one_thread``) and LightGBM's results do not depend on its thread
count, so the metrics do not depend on ``jobs``.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from .baseline import LGBMConfig
from .cache import CacheContents, read_cache
from .datasets import Dataset
from .head import INPUTS, HeadConfig, one_thread
from .metrics import headline, majority_baseline, mean_std
from .splits import SPLIT_KINDS, check_split, fold_ids, holdout_mask, protocol
from .train import MODELS, align_embeddings, as_dataset, fit_split

log = logging.getLogger(__name__)

# Inner validation share of the training folds: 10 % of all rows at 5 folds, as fit-head's 70/10/20.
VAL_FRACTION = 0.125


@dataclass
class CVConfig:
    """What to cross-validate: folds and protocol, seeds, models x input sets, each recipe."""
    folds: int = 5
    split: str = "lesion"
    seeds: tuple[int, ...] = (42,)
    models: tuple[str, ...] = MODELS
    inputs: tuple[str, ...] = ("image", "meta", "fused")
    head: HeadConfig = field(default_factory=HeadConfig)
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)
    tta: bool = False
    val_fraction: float = VAL_FRACTION
    encoding: str = "robust"               # or "reference": the published 17-feature encoder
    calibration: str = "logit_adjust"

    def check(self) -> None:
        for name, got, allowed in (("models", self.models, MODELS), ("inputs", self.inputs, INPUTS),
                                   ("split", (self.split,), SPLIT_KINDS)):
            bad = [x for x in got if x not in allowed]
            if bad or not got:
                raise ValueError(f"{name}: {', '.join(bad) or 'none given'}; "
                                 f"expected from {', '.join(allowed)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fold:
    """Row numbers of one fold: ``test`` is scored; ``val`` (from the other folds) stops early."""
    seed: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_folds(table: pd.DataFrame, n_folds: int, kind: str = "lesion", seed: int = 42,
               val_fraction: float = VAL_FRACTION) -> list[Fold]:
    return list(iter_folds(table, fold_ids(table, n_folds, kind, seed), kind, seed, val_fraction))


def iter_folds(table: pd.DataFrame, folds: np.ndarray, kind: str, seed: int,
               val_fraction: float = VAL_FRACTION) -> Iterator[Fold]:
    """Each fold of ``fold_ids`` with its inner validation part, one at a time (each takes a
    grouped stratified split of the training rows: about a second on HAM10000)."""
    for k in range(int(folds.max()) + 1):
        rest = np.flatnonzero(folds != k)
        inner = holdout_mask(table.iloc[rest].reset_index(drop=True), val_fraction, kind, seed)
        fold = Fold(seed, k, rest[~inner], rest[inner], np.flatnonzero(folds == k))
        side = np.full(len(table), "test", dtype=object)
        side[fold.train], side[fold.val] = "train", "val"
        check_split(table, pd.Series(side, index=table.index), kind)  # the leakage guard
        yield fold


@dataclass
class FitTask:
    """One model on one input set on one fold: everything a worker needs except the embeddings."""
    model: str
    inputs: str
    rows: Fold
    data: Dataset                    # the validated table (metadata not yet encoded) and its spec
    head: HeadConfig
    lgbm: LGBMConfig
    tta: bool
    encoding: str = "robust"
    calibration: str = "logit_adjust"


def run_task(task: FitTask, image: np.ndarray) -> dict:
    """Train on the fold's training rows, stop early on its inner val, score the held-out fold."""
    rows = {"train": task.rows.train, "val": task.rows.val, "test": task.rows.test}
    fit = fit_split(task.data, image, rows, model=task.model, head_cfg=task.head,
                    lgbm_cfg=task.lgbm, tta=task.tta, encoding=task.encoding,
                    calibration=task.calibration)
    return {"seed": task.rows.seed, "fold": task.rows.fold, "model": task.model,
            "inputs": task.inputs, "best_epoch": fit.trained.best_epoch,
            "temperature": fit.temperature, "threshold": fit.threshold, "metrics": fit.metrics}


_WORKER_IMAGE: np.ndarray | None = None  # the embeddings, sent once to each worker process


def _init_worker(image: np.ndarray) -> None:
    import torch
    global _WORKER_IMAGE
    _WORKER_IMAGE = image
    torch.set_num_threads(1)


def _run_in_worker(task: FitTask) -> dict:
    return run_task(task, _WORKER_IMAGE)


@one_thread
def _run_tasks(tasks: Iterator[FitTask], image: np.ndarray, jobs: int,
               progress: Callable[[int], None] | None) -> list[dict]:
    """This process and ``jobs - 1`` workers take the next task whenever they are free; tasks
    are made as they are needed, so workers start while later folds are still being carved."""
    results: dict[int, dict] = {}
    queue, running = enumerate(tasks), {}
    nxt = next(queue, None)

    def finished(i: int, record: dict) -> None:
        results[i] = record
        if progress:
            progress(1)

    pool = ProcessPoolExecutor(jobs - 1, get_context("spawn"), initializer=_init_worker,
                               initargs=(image,)) if jobs > 1 else nullcontext()
    with pool:
        while nxt is not None or running:
            while nxt is not None and len(running) < jobs - 1:
                running[pool.submit(_run_in_worker, nxt[1])] = nxt[0]
                nxt = next(queue, None)
            if nxt is not None:
                i, task = nxt
                finished(i, run_task(task, image))
                nxt = next(queue, None)
            if running:
                done, _ = wait(running, timeout=None if nxt is None else 0,
                               return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(running.pop(fut), fut.result())
    return [results[i] for i in range(len(results))]


def fold_tasks(data: Dataset, fold: Fold, cfg: CVConfig) -> list[FitTask]:
    return [FitTask(model, inputs, fold, data,
                    replace(cfg.head, inputs=inputs, seed=fold.seed),
                    replace(cfg.lgbm, inputs=inputs, seed=fold.seed, num_threads=1), cfg.tta,
                    cfg.encoding, cfg.calibration)
            for model in cfg.models for inputs in cfg.inputs]


def run_cv(data: Dataset | pd.DataFrame, contents: CacheContents, cfg: CVConfig, *,
           jobs: int = 1, source: str = "cache", progress: Callable[[int], None] | None = None,
           on_start: Callable[[int], None] | None = None) -> dict:
    """Cross-validate every model x input set; per-fit records plus mean +- std summaries.

    ``jobs`` fits at a time (0: one per CPU core); the results do not depend on it.
    """
    cfg.check()
    data = as_dataset(data)
    if data.spec.evaluation_only:
        raise ValueError(f"{data.spec.name} is a test set: evaluate models on it, do not train")
    table, image = align_embeddings(data.table, contents, source)
    data = replace(data, table=table)
    classes = list(data.classes)
    if cfg.tta and image.ndim != 3:
        log.warning("%s has no view embeddings: --tta has no effect", source)
    ids = {seed: fold_ids(table, cfg.folds, cfg.split, seed) for seed in cfg.seeds}  # fail early
    folds: list[Fold] = []

    def tasks() -> Iterator[FitTask]:
        for seed, fold_of_row in ids.items():
            for fold in iter_folds(table, fold_of_row, cfg.split, seed, cfg.val_fraction):
                folds.append(fold)
                yield from fold_tasks(data, fold, cfg)

    n_tasks = len(cfg.seeds) * cfg.folds * len(cfg.models) * len(cfg.inputs)
    if on_start:
        on_start(n_tasks)
    records = _run_tasks(tasks(), image, min(jobs or os.cpu_count() or 1, n_tasks), progress)
    y = table["label"].to_numpy()
    majority = [majority_baseline(y[f.train], y[f.test], classes) for f in folds]
    keys = headline(len(classes))
    return {"split": cfg.split, "protocol": protocol(cfg.split, data.spec.group_name),
            "config": cfg.to_dict(),
            "dataset": data.spec.name, "task": str(data.task), "classes": classes,
            "group": data.spec.group_name,
            "reference_recipe": data.spec.reference_recipe and not data.task.binary,
            "headline": list(keys),
            "images": int(len(table)), "lesions": int(table["lesion_id"].nunique()),
            "views": int(image.shape[1] - 1) if image.ndim == 3 else 0,
            "embed_dim": int(image.shape[-1]),
            "folds_table": table[["image_id", "lesion_id", "dx"]].assign(
                **{f"fold_seed{s}": fold_of_row for s, fold_of_row in ids.items()}),
            "records": records, "summary": summarize(records, cfg, classes),
            "majority_baseline": {k: _mean_std([m[k] for m in majority]) for k in keys}}


def _mean_std(values) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std}


def summarize(records: list[dict], cfg: CVConfig, classes: list[str]) -> dict:
    """``summary[model][inputs]``: mean and std over all folds (and seeds) of each metric,
    per-class recall and F1, the summed confusion matrix, and the spread of per-seed means."""
    summary: dict = {}
    for model in cfg.models:
        for inputs in cfg.inputs:
            rs = [r for r in records if r["model"] == model and r["inputs"] == inputs]
            ms = [r["metrics"] for r in rs]
            keys = headline(len(classes))
            entry = {k: _mean_std([m[k] for m in ms]) for k in keys}
            entry["ece"] = _mean_std([m["ece"] for m in ms])
            entry["classwise_ece"] = _mean_std([m["classwise_calibration"]["classwise_ece"]
                                                for m in ms])
            entry["per_class"] = {c: {s: _mean_std([m["per_class"][c][s] for m in ms])
                                      for s in ("recall", "f1")} for c in classes}
            entry["confusion_matrix"] = np.sum([m["confusion_matrix"] for m in ms], 0).tolist()
            entry["seed_spread"] = {k: _mean_std([_mean_std(
                [r["metrics"][k] for r in rs if r["seed"] == s])["mean"] for s in cfg.seeds])
                for k in keys}
            summary.setdefault(model, {})[inputs] = entry
    return summary


def cv_run(data: Dataset | pd.DataFrame, cache_path: str | Path, out: str | Path,
           cfg: CVConfig, *,
           jobs: int = 1, progress: Callable[[int], None] | None = None,
           on_start: Callable[[int], None] | None = None) -> dict:
    """Run the CV on a cache file; write cv_metrics.json, cv_report.md, cv_folds.csv and PNGs."""
    from .cv_report import write_cv_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    contents = read_cache(cache_path)
    res = run_cv(data, contents, cfg, jobs=jobs, source=str(cache_path), progress=progress,
                 on_start=on_start)
    res["info"] = contents.provenance(cache_path)
    write_cv_report(out, res)
    return res
