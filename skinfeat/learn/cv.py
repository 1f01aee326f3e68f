"""K-fold cross-validation and input ablations over the embedding cache (``skinfeat cv``).

Every (seed, fold) trains each model on each input set on the same rows, so one table shows what
metadata adds. Folds are stratified by class and grouped by the dataset's groups (lesions,
patients; ``split="group"``) unless the reference's leaky image-level protocol is asked for.
Each fit goes through ``train.fit_splits``, the path of ``fit-head``: the metadata encoder is
fitted on the fold's training rows only, and early stopping and calibration use an inner
validation part carved from the training folds (``splits.holdout_mask``): the scored fold never
picks an epoch, a round, a temperature or a threshold. The heads of one input set's folds train
together as one batched network (``head_batch``; ``CVConfig.batched=False`` trains them one by
one, with per-fold metrics equal up to float rounding: tests/test_head_batch.py); LightGBM fits
fold by fold.

Each task seeds itself, so tasks are independent of their order and ``jobs`` run at once:
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
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..data.datasets import Dataset
from ..data.splits import (SPLIT_KINDS, check_split, fold_ids, holdout_mask,
                           parse_split, protocol)
from ..embed.cache import CacheContents
from ..evaluate.metrics import calibrated_metrics, headline, majority_baseline, mean_std
from .fallback import applies
from .fallback import combine as combine_rows
from .head import INPUTS, one_thread
from .runconfig import RunConfig
from .train import DEFAULT_MODELS, MODELS, align_embeddings, as_dataset, check_inputs, fit_splits

log = logging.getLogger(__name__)

# Inner validation share of the training folds: 10 % of all rows at 5 folds, as fit-head's 70/10/20.
VAL_FRACTION = 0.125


@dataclass
class CVConfig:
    """What to cross-validate: folds and protocol, seeds, models x input sets, and the one
    recipe every fit uses (its head, LightGBM, encoding, calibration and tta; each fit sets
    the recipe's model, input set and seed, and selects on its fold's inner val part; the
    recipe's own split, sizes and select_on belong to fit-head)."""
    folds: int = 5
    split: str = "group"                   # or "image"; "lesion" is the older spelling
    seeds: tuple[int, ...] = (42,)
    models: tuple[str, ...] = DEFAULT_MODELS   # MODELS: every kind (+ the linear probe)
    inputs: tuple[str, ...] | None = None  # None: every set the data has (see input_sets)
    recipe: RunConfig = field(default_factory=RunConfig)
    val_fraction: float = VAL_FRACTION
    batched: bool = True                   # a head's folds as one batched network (head_batch)

    def task_recipe(self, model: str, inputs: str, seed: int) -> RunConfig:
        """The recipe of one (model, input set, seed) fit: LightGBM on one thread (cv runs
        tasks in parallel instead; its results do not depend on the thread count)."""
        r = self.recipe
        return replace(r, model=model, seed=seed, select_on="val",
                       head=replace(r.head, inputs=inputs, seed=seed),
                       lgbm=replace(r.lgbm, inputs=inputs, seed=seed, num_threads=1))

    def check(self) -> None:
        inputs = INPUTS if self.inputs is None else self.inputs
        split = parse_split(self.split)   # group (older: lesion), image, or by:COLUMN
        if split.kind == "none" or split.value is not None:
            raise ValueError(f"split: {split}; expected from {', '.join(SPLIT_KINDS)} or "
                             "by:COLUMN (each value one fold; by:COLUMN=VALUE is fit-head's)")
        self.split = str(split)
        for name, got, allowed in (("models", self.models, MODELS), ("inputs", inputs, INPUTS)):
            bad = [x for x in got if x not in allowed]
            if bad or not got:
                raise ValueError(f"{name}: {', '.join(bad) or 'none given'}; "
                                 f"expected from {', '.join(allowed)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        repeated = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
        if repeated:   # one run reported as several, with a spread of 0 across "seeds"
            raise ValueError(f"--seeds {','.join(map(str, self.seeds))}: seed(s) "
                             f"{', '.join(map(str, repeated))} given more than once; give "
                             "each seed once")

    def to_dict(self) -> dict:
        """The protocol's fields and the recipe nested under ``"recipe"``."""
        return {**{k: v for k, v in asdict(self).items() if k != "recipe"},
                "recipe": self.recipe.to_dict()}


@dataclass
class Fold:
    """Row numbers of one fold: ``test`` is scored; ``val`` (from the other folds) stops early."""
    seed: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_folds(table: pd.DataFrame, n_folds: int, kind: str = "group", seed: int = 42,
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
    """One model on one input set on one or more folds of one seed (a head's folds train as one
    batched network): everything a worker needs except the embeddings."""
    inputs: str
    rows: list[Fold]
    data: Dataset                    # the validated table (metadata not yet encoded) and its spec
    recipe: RunConfig                # model, seed and input set already set (task_recipe)
    save: dict | None = None         # where and how to write each fold's bundle (save_models)
    on_fit: Callable | None = None   # on_fit(task, fold, fit, image) after each fold's fit
    # A fused head whose fallback is the same fold's image-only model (cv runs both):
    # combined after the fits (``reuse_fallbacks``), no extra training.
    reuse_fallback: bool = False

    # Read-only views of the recipe, for on_fit hooks (the recipe is the one copy).
    model = property(lambda self: self.recipe.model)
    head = property(lambda self: self.recipe.head)
    lgbm = property(lambda self: self.recipe.lgbm)
    tta = property(lambda self: self.recipe.tta)
    encoding = property(lambda self: self.recipe.encoding)
    calibration = property(lambda self: self.recipe.calibration)


def run_task(task: FitTask, image: np.ndarray) -> list[dict]:
    """Train on each fold's training rows, stop early on its inner val, score the held-out fold."""
    splits = [{"train": f.train, "val": f.val, "test": f.test} for f in task.rows]
    fits = fit_splits(task.data, image, splits, task.recipe)
    records = []
    for fold, fit in zip(task.rows, fits):
        if task.on_fit is not None:
            task.on_fit(task, fold, fit, image)
        records.append({"seed": fold.seed, "fold": fold.fold, "model": task.model,
                        "inputs": task.inputs, "best_epoch": fit.trained.best_epoch,
                        "temperature": fit.temperature, "threshold": fit.threshold,
                        "metrics": fit.metrics, "test": fold.test, "proba": fit.test_proba,
                        "decided": fit.test_pred, "logits": fit.test_logits,
                        "fell_back": fit.fell_back,
                        "missing_rows": fit.missing_rows if task.reuse_fallback else None})
    return records


_WORKER_IMAGE: np.ndarray | None = None  # the embeddings, read once by each worker process


def _init_worker(path: str) -> None:
    """Map the embeddings this process saved (copy-on-write: pages are shared until written).
    Handing the array over in ``initargs`` instead would pickle it down the spawn pipe, and
    the parent blocks on that write until the child has imported torch (2-3 s)."""
    import torch
    global _WORKER_IMAGE
    _WORKER_IMAGE = np.load(path, mmap_mode="c")
    torch.set_num_threads(1)


def _warm_up() -> None:
    """Nothing: unpickling this function imports skinfeat.learn.cv and torch in the worker."""


def _run_in_worker(task: FitTask) -> list[dict]:
    return run_task(task, _WORKER_IMAGE)


@one_thread
def _run_tasks(tasks: Iterator[FitTask], image: np.ndarray, jobs: int,
               progress: Callable[[int], None] | None,
               idle: Callable[[list[dict]], bool] | None = None) -> list[dict]:
    """This process and ``jobs - 1`` workers each take the next task whenever they are free.

    A feeder thread hands tasks to the workers the moment one finishes, so a worker never idles
    while this process is busy with a task of its own (the thread only waits; the work is in the
    processes). Tasks are made as they are needed, so workers start while later folds are still
    being carved. ``idle(records so far)``, when this process has no task left but workers
    are still busy: the caller's follow-up work on what is complete, one piece per call
    (False: nothing to do yet).
    """
    results: dict[int, list[dict]] = {}
    queue, lock, errors = enumerate(tasks), threading.Lock(), []

    def take():
        with lock:
            return None if errors else next(queue, None)

    def finished(i: int, records: list[dict]) -> None:
        with lock:
            results[i] = records
            if progress:
                progress(len(records))

    def feed(pool: ProcessPoolExecutor, warm: list) -> None:
        running: dict = {}
        try:
            # Tasks come heaviest first: while the workers still import torch, this process
            # takes the first ones; a task handed to a cold worker would wait seconds for it.
            wait(warm)
            while True:
                while len(running) < jobs - 1 and (nxt := take()) is not None:
                    running[pool.submit(_run_in_worker, nxt[1])] = nxt[0]
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(running.pop(fut), fut.result())
        except BaseException as exc:   # re-raised by the main thread
            errors.append(exc)
            for fut in running:
                fut.cancel()

    with ExitStack() as stack:
        pool = None
        if jobs > 1:
            shared = Path(stack.enter_context(TemporaryDirectory(prefix="skinfeat-cv-"))) / \
                "embeddings.npy"
            np.save(shared, image)
            pool = stack.enter_context(ProcessPoolExecutor(
                jobs - 1, get_context("spawn"), initializer=_init_worker,
                initargs=(str(shared),)))
        feeder = None
        if pool is not None:
            # Workers start (a torch import each, seconds) while the folds are carved.
            warm = [pool.submit(_warm_up) for _ in range(jobs - 1)]
            feeder = threading.Thread(target=feed, args=(pool, warm), daemon=True)
            feeder.start()
        try:
            while (nxt := take()) is not None:
                finished(nxt[0], run_task(nxt[1], image))
            while idle is not None and feeder is not None and feeder.is_alive() and not errors:
                with lock:
                    done = [r for i in sorted(results) for r in results[i]]
                if not idle(done):
                    feeder.join(0.05)
        except BaseException as exc:
            errors.append(exc)
        if feeder is not None:
            feeder.join()
    if errors:
        raise errors[0]
    return [r for i in range(len(results)) for r in results[i]]


def fold_tasks(data: Dataset, folds: list[Fold], cfg: CVConfig, save: dict | None = None,
               on_fit: Callable | None = None) -> list[FitTask]:
    """The fits of one seed's folds: per input set, the head on all folds at once (batched) and
    LightGBM fold by fold. Heaviest first, so that workers finish together."""
    tasks = []
    for model in cfg.models:
        for inputs in cfg.inputs:
            groups = [folds] if model == "head" and cfg.batched else [[f] for f in folds]
            recipe = cfg.task_recipe(model, inputs, folds[0].seed)
            # With the image input set in the run, its models are the fused ones' fallbacks.
            reuse = "image" in cfg.inputs and applies(recipe, bool(data.spec.metadata))
            if reuse:
                recipe = replace(recipe, fallback=False)
            tasks += [FitTask(inputs, group, data, recipe, save, on_fit, reuse)
                      for group in groups]
    cost = {"fused": 2, "image": 1, "meta": 0}
    return sorted(tasks, key=lambda t: (t.model != "head", -len(t.rows), -cost[t.inputs]))


ALL_INPUTS = ("image", "meta", "fused")


def input_sets(cfg: CVConfig, data: Dataset) -> tuple[CVConfig, list[str]]:
    """``cfg`` with the input sets to run on ``data``, and the report's notes about them.

    By default (``inputs=None``) every set: image, meta, fused. A data set without metadata
    fields has only ``image``: ``meta`` cannot exist and ``fused`` would be the image alone, so
    both are left out with a note. Asked for explicitly, ``meta`` is refused there and
    ``fused`` runs (an image-only model under that name, noted)."""
    if data.spec.metadata:
        return (cfg if cfg.inputs is not None else replace(cfg, inputs=ALL_INPUTS)), []
    if cfg.inputs is None:
        return replace(cfg, inputs=("image",)), [
            "the data set has no metadata fields: only the image input set is cross-validated "
            "(meta cannot exist; fused would be the image alone)"]
    check_inputs(data, cfg.inputs)
    return cfg, (["the data set has no metadata fields: fused is the image alone"]
                 if "fused" in cfg.inputs else [])


def run_cv(data: Dataset | pd.DataFrame, contents: CacheContents, cfg: CVConfig, *,
           jobs: int = 1, source: str = "cache", progress: Callable[[int], None] | None = None,
           on_start: Callable[[int], None] | None = None, save: dict | None = None,
           on_fit: Callable | None = None,
           on_ready: Callable[[str, str, pd.DataFrame], None] | None = None) -> dict:
    """Cross-validate every model x input set; per-fit records plus mean +- std summaries.

    ``jobs`` tasks at a time (0: one per CPU core); the results do not depend on it.
    ``on_fit(task, fold, fit, image)`` runs after each fold's fit, in the process that fitted
    it (a module-level function: workers receive it by name), with ``save`` in ``task.save``:
    the workflow writes each fold's bundle that way. ``on_ready(model, inputs, oof)``: the
    first seed's out-of-fold predictions of a model and input set, once all its folds are in,
    handed over while this process waits for the workers' last tasks (its reports then cost
    no extra time); those not handed over by the end are the caller's to make from ``oof``.
    """
    data = as_dataset(data)
    cfg, notes = input_sets(cfg, data)
    cfg.check()
    if data.spec.evaluation_only:
        raise ValueError(f"{data.spec.name} is a test set: evaluate models on it, do not train")
    for note in notes:
        log.warning("%s: %s", data.source, note)
    data, image = align_dataset(data, contents, source)
    table = data.with_described()   # the folds may read a described column (by:COLUMN)
    classes = list(data.classes)
    if cfg.recipe.tta and image.ndim != 3:
        log.warning("%s has no view embeddings: --tta has no effect", source)
    ids = {seed: fold_ids(table, cfg.folds, cfg.split, seed) for seed in cfg.seeds}  # fail early
    n_folds = int(max(f.max() for f in ids.values())) + 1
    if n_folds != cfg.folds:   # by:COLUMN: one fold per value, whatever --folds said
        cfg = replace(cfg, folds=n_folds)
    folds: list[Fold] = []

    def tasks() -> Iterator[FitTask]:
        for seed, fold_of_row in ids.items():
            seed_folds = list(iter_folds(table, fold_of_row, cfg.split, seed, cfg.val_fraction))
            folds.extend(seed_folds)
            yield from fold_tasks(data, seed_folds, cfg, save, on_fit)

    n_fits = len(cfg.seeds) * cfg.folds * len(cfg.models) * len(cfg.inputs)
    if on_start:
        on_start(n_fits)
    n_tasks = len(cfg.seeds) * len(cfg.inputs) * sum(
        1 if m == "head" and cfg.batched else cfg.folds for m in cfg.models)
    handed: set = set()

    def idle(done: list[dict]) -> bool:
        first = cfg.seeds[0]

        def of(model: str, inputs: str) -> list[dict]:
            return sorted((r for r in done if r["seed"] == first and r["model"] == model
                           and r["inputs"] == inputs), key=lambda r: r["fold"])

        for model in cfg.models:
            for inputs in cfg.inputs:
                rs = of(model, inputs)
                if (model, inputs) in handed or len(rs) != cfg.folds:
                    continue
                if any(r.get("missing_rows") is not None for r in rs):
                    # a fused model whose fallback is the image model: ready with it
                    images = of(model, "image")
                    if len(images) != cfg.folds:
                        continue
                    rs = [with_fallback(r, o) for r, o in zip(rs, images)]
                handed.add((model, inputs))
                on_ready(model, inputs, oof_frame(table, rs, classes, consume=False))
                return True
        return False

    records = _run_tasks(tasks(), image, min(jobs or os.cpu_count() or 1, n_tasks), progress,
                         idle if on_ready is not None else None)
    records.sort(key=lambda r: (r["seed"], r["fold"], cfg.models.index(r["model"]),
                                cfg.inputs.index(r["inputs"])))
    y = table["label"].to_numpy()
    reuse_fallbacks(records, y, classes)
    oof = oof_frame(table, records, classes)
    majority = [majority_baseline(y[f.train], y[f.test], classes) for f in folds]
    keys = headline(len(classes))
    return {"split": cfg.split, "protocol": protocol(cfg.split, data.spec.group_name),
            "config": cfg.to_dict(),
            "dataset": data.spec.name, "task": str(data.task), "classes": classes,
            "group": data.spec.group_name,
            "reference_recipe": data.spec.reference_recipe and not data.task.binary,
            "headline": list(keys),
            "images": int(len(table)), "lesions": int(table["group_id"].nunique()),
            "views": int(image.shape[1] - 1) if image.ndim == 3 else 0,
            "embed_dim": int(image.shape[-1]),
            "folds_table": table[["image_id", "group_id", "dx"]].assign(
                **{f"fold_seed{s}": fold_of_row for s, fold_of_row in ids.items()}),
            "records": records, "oof": oof, "summary": summarize(records, cfg, classes),
            "notes": notes,
            "majority_baseline": {k: _mean_std([m[k] for m in majority]) for k in keys}}


def with_fallback(record: dict, image: dict) -> dict:
    """A fused fit's record (a copy) with, on its scored rows with every metadata field
    missing (``missing_rows``), the same fold's image-only model's logits, probabilities and
    decisions."""
    rows = record.get("missing_rows")
    if rows is None:
        return record
    keys = ("logits", "proba", "decided")
    return {**record, **dict(zip(keys, combine_rows(rows, tuple(record[k] for k in keys),
                                                    tuple(image[k] for k in keys))))}


def reuse_fallbacks(records: list[dict], y: np.ndarray, classes: list[str]) -> None:
    """Each fused fit marked ``reuse_fallback`` takes, on its scored rows with every metadata
    field missing, the same seed and fold's image-only model's logits, probabilities and
    decisions, and its metrics are recomputed; then the arrays only this needed are dropped."""
    image = {(r["seed"], r["fold"], r["model"]): r for r in records if r["inputs"] == "image"}
    for r in records:
        if r.get("missing_rows") is None:
            r.pop("missing_rows", None)
            continue
        r.update(with_fallback(r, image[(r["seed"], r["fold"], r["model"])]))
        rows = r.pop("missing_rows")
        r["metrics"] = calibrated_metrics(y[r["test"]], r["logits"], r["proba"], classes,
                                          r["decided"])
        r["fell_back"], r["reused_fallback"] = int(rows.sum()), True
    for r in records:
        r.pop("logits", None)


def align_dataset(data: Dataset, contents: CacheContents,
                  source: str = "cache") -> tuple[Dataset, np.ndarray]:
    """``align_embeddings`` on the table and its described columns together, so the subgroup-
    only columns stay row-aligned with the rows that have an embedding."""
    full, image = align_embeddings(data.with_described(), contents, source)
    described = None if data.described is None else full[list(data.described.columns)]
    return replace(data, table=full[list(data.table.columns)], described=described), image


OOF_KEYS = ("image_id", "group", "fold", "seed", "model", "inputs")


def oof_frame(table: pd.DataFrame, records: list[dict], classes: list[str], *,
              consume: bool = True) -> pd.DataFrame:
    """The out-of-fold predictions, taken out of ``records`` (left in them: ``consume=False``):
    per fit, each scored row's image_id, group (the dataset's grouping id), fold, seed, model,
    inputs, calibrated probability of each class (``p_CLASS``) and decision (a class name)."""
    parts = []
    for r in records:
        test, proba, decided = ((r.pop(k) if consume else r[k])
                                for k in ("test", "proba", "decided"))
        part = pd.DataFrame({"image_id": table["image_id"].to_numpy()[test],
                             "group": table["group_id"].to_numpy()[test],
                             "fold": r["fold"], "seed": r["seed"], "model": r["model"],
                             "inputs": r["inputs"]})
        for k, c in enumerate(classes):
            part[f"p_{c}"] = np.asarray(proba)[:, k]
        part["decision"] = np.asarray(classes, dtype=object)[np.asarray(decided, dtype=int)]
        parts.append(part)
    columns = [*OOF_KEYS, *(f"p_{c}" for c in classes), "decision"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


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
