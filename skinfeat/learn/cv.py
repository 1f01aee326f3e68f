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

Each task seeds itself, so tasks are independent of their order and ``jobs`` run at once
(``parallel.run_unordered``: by default this process and ``jobs - 1`` of joblib's loky worker
processes, ``jobs`` as scikit-learn's ``n_jobs``), one thread each. That is how the CV uses
every core: batch-64 head steps are far too small for intra-op threads, and on a busy machine
OpenMP threads wait on each other at every barrier (on a shared 2-core machine, LightGBM on 2
threads ran 10x to 100x slower than on 1). Under ``joblib.parallel_backend("dask")`` (or
"ray", or "threading") the folds run on that backend's workers instead. Head fits always run
on one torch thread (``head.one_thread``) and LightGBM's results
do not depend on its thread count, so the metrics do not depend on ``jobs`` or the backend.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import pandas as pd

from ..data.datasets import Dataset
from ..data.splits import SPLIT_KINDS, check_split, fold_ids, holdout_mask, parse_split, protocol
from ..embed.cache import CacheContents
from ..errors import InputError
from ..evaluate.metrics import calibrated_metrics, headline, majority_baseline, mean_std
from ..schema import dump
from .fallback import applies
from .fallback import combine as combine_rows
from .head import INPUTS
from .models import default_models, model_class, model_names, registry
from .parallel import run_unordered
from .protocol import StageTwoModel, with_fields
from .runconfig import RunConfig
from .train import SplitFit, align_embeddings, as_dataset, check_inputs, fit_splits

log = logging.getLogger(__name__)

# Inner validation share of the training folds: 10 % of all rows at 5 folds, as fit-head's 70/10/20.
VAL_FRACTION = 0.125


@dataclass(frozen=True)
class CVConfig:
    """What to cross-validate: folds and protocol, seeds, models x input sets, and the one
    recipe every fit uses (its head, LightGBM, encoding, calibration and tta; each fit sets
    the recipe's model, input set and seed, and selects on its fold's inner val part; the
    recipe's own split, sizes and select_on belong to fit-head)."""
    folds: int = 5
    split: str = "group"                   # or "image"; "lesion" is the older spelling
    seeds: tuple[int, ...] = (42,)
    # kinds of the model registry (learn.models); empty: the recipe's model (the default
    # ensemble; the head of the reference recipe) and LightGBM (``default_models``)
    models: tuple[str, ...] = ()
    inputs: tuple[str, ...] | None = None  # None: every set the data has (see input_sets)
    recipe: RunConfig = field(default_factory=RunConfig)
    val_fraction: float = VAL_FRACTION
    batched: bool = True                   # a batched model's folds as one fit (head_batch)
    # Each model's config (kind -> config); a model not here takes the recipe's own config if
    # it is the recipe's model, else its defaults (``runconfig.model_params``).
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            object.__setattr__(self, "models", default_models(self.recipe.model))

    @classmethod
    def of(cls, recipe: RunConfig, folds: int, split: str, seeds, models, inputs,
           params: dict | None) -> CVConfig:
        """The API's arguments as a config (``seeds=None``: the recipe's seed alone)."""
        return cls(folds=folds, split=split, seeds=tuple(seeds or (recipe.seed,)),
                   models=tuple(models), inputs=tuple(inputs) if inputs else None,
                   recipe=recipe, params=dict(params or {}))

    def model_config(self, model: str):
        if model in self.params:
            return self.params[model]
        return self.recipe.params if model == self.recipe.model \
            else model_class(model).config_class()

    def task_recipe(self, model: str, inputs: str, seed: int) -> RunConfig:
        """The recipe of one (model, input set, seed) fit: a model with a thread count on one
        thread (cv runs tasks in parallel instead; results do not depend on the thread
        count)."""
        params = with_fields(self.model_config(model), inputs=inputs, seed=seed, num_threads=1)
        return replace(self.recipe, model=model, seed=seed, select_on="val", params=params)

    def check(self) -> CVConfig:
        """The protocol checked; returns it with the split in its current spelling."""
        inputs = INPUTS if self.inputs is None else self.inputs
        split = parse_split(self.split)   # group (older: lesion), image, or by:COLUMN
        if split.kind == "none" or split.value is not None:
            raise InputError(f"split: {split}; expected from {', '.join(SPLIT_KINDS)} or "
                             "by:COLUMN (each value one fold; by:COLUMN=VALUE is fit-head's)")
        for name, got, allowed in (("models", self.models, model_names()),
                                   ("inputs", inputs, INPUTS)):
            bad = [x for x in got if x not in allowed]
            if bad or not got:
                raise InputError(f"{name}: {', '.join(bad) or 'none given'}; "
                                 f"expected from {', '.join(allowed)}")
        if not self.seeds:
            raise InputError("seeds: give at least one seed")
        repeated = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
        if repeated:   # one run reported as several, with a spread of 0 across "seeds"
            raise InputError(f"--seeds {','.join(map(str, self.seeds))}: seed(s) "
                             f"{', '.join(map(str, repeated))} given more than once; give "
                             "each seed once")
        return replace(self, split=str(split))

    def to_dict(self) -> dict:
        """The protocol's fields, the recipe nested under ``"recipe"`` and each model's config
        under ``"params"``."""
        return {**{k: v for k, v in asdict(self).items() if k not in ("recipe", "params")},
                "recipe": self.recipe.to_dict(),
                "params": {m: dump(self.model_config(m)) for m in self.models}}


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
    keep_fits: bool = False          # hand each fold's fit back (a ``FoldFitted`` event)
    # A fused head whose fallback is the same fold's image-only model (cv runs both):
    # combined after the fits (``reuse_fallbacks``), no extra training.
    reuse_fallback: bool = False

    # Read-only views of the recipe (the recipe is the one copy).
    model = property(lambda self: self.recipe.model)
    tta = property(lambda self: self.recipe.tta)
    encoding = property(lambda self: self.recipe.encoding)
    calibration = property(lambda self: self.recipe.calibration)


def run_task(task: FitTask, image: np.ndarray) -> list[dict]:
    """Train on each fold's training rows, stop early on its inner val, score the held-out fold."""
    splits = [{"train": f.train, "val": f.val, "test": f.test} for f in task.rows]
    fits = fit_splits(task.data, image, splits, task.recipe)
    records = []
    for fold, fit in zip(task.rows, fits, strict=False):
        records.append({**({"fit": fit} if task.keep_fits else {}),
                        "seed": fold.seed, "fold": fold.fold, "model": task.model,
                        "inputs": task.inputs, "best_epoch": fit.model.best_epoch_,
                        "temperature": fit.temperature, "threshold": fit.threshold,
                        "metrics": fit.metrics, "test": fold.test, "proba": fit.test_proba,
                        "decided": fit.test_pred, "logits": fit.test_logits,
                        "fell_back": fit.fell_back,
                        "missing_rows": fit.missing_rows if task.reuse_fallback else None})
    return records


def _run_registered(job: tuple[FitTask, type[StageTwoModel]], image: np.ndarray) -> list[dict]:
    """``run_task`` in a worker, with the task's model class registered there too (a model
    registered at run time in the caller's process is not in a fresh worker's registry)."""
    task, cls = job
    registry().setdefault(cls.kind, cls)
    return run_task(task, image)


def _run_tasks(tasks: Iterator[FitTask], image: np.ndarray,
               jobs: int) -> Iterator[tuple[int, list[dict]]]:
    """Every task, ``jobs`` at a time (``parallel.run_unordered``): (task number, its records)
    as each finishes."""
    return run_unordered(_run_registered, ((t, model_class(t.model)) for t in tasks), image, jobs)


@dataclass(frozen=True)
class FoldFitted:
    """An event of ``iter_cv(keep_fits=True)``: one fold's fit (a ``train.SplitFit``), with
    the task that made it (its data, recipe, input set) and the fold's rows."""
    task: FitTask
    fold: Fold
    fit: SplitFit
    embed_dim: int


@dataclass(frozen=True)
class FoldsReady:
    """An event of ``iter_cv(ready=True)``: the first seed's out-of-fold predictions of one
    model and input set, as soon as all its folds are in (while later tasks still run)."""
    model: str
    inputs: str
    oof: pd.DataFrame


@dataclass(frozen=True, eq=False)   # tables inside: compare their fields, not the runs
class CVRun:
    """``run_cv``'s result: the protocol, the per-fit ``records`` (plain rows: seed, fold,
    model, inputs, best_epoch, temperature, threshold, metrics, fell_back), the out-of-fold
    predictions and the mean +- std ``summary[model][inputs]``. ``to_dict`` gives its fields
    as cv_metrics.json holds them (the tables left out)."""
    split: str
    protocol: str
    config: dict                  # CVConfig.to_dict(): folds and inputs as run
    dataset: str
    task: str
    classes: list[str]
    group: str
    reference_recipe: bool
    headline: list[str]
    images: int
    lesions: int
    views: int
    embed_dim: int
    folds_table: pd.DataFrame = field(repr=False)   # image_id, group_id, dx, fold_seedS
    records: list[dict] = field(repr=False)
    oof: pd.DataFrame = field(repr=False)           # oof_frame's
    summary: dict = field(repr=False)
    model_notes: dict = field(default_factory=dict)
    batched_models: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    majority_baseline: dict = field(default_factory=dict)

    TABLES = ("folds_table", "oof")

    def to_dict(self) -> dict:
        """The JSON fields, in cv_metrics.json's order (shallow: no table is copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.TABLES}


@dataclass(frozen=True)
class CVDone:
    """The last event of ``iter_cv``: the whole result (``run_cv``'s)."""
    result: CVRun


def fold_tasks(data: Dataset, folds: list[Fold], cfg: CVConfig,
               keep_fits: bool = False) -> list[FitTask]:
    """The fits of one seed's folds: per input set, the head on all folds at once (batched) and
    LightGBM fold by fold. Heaviest first, so that workers finish together."""
    assert cfg.inputs is not None   # settled by input_sets
    tasks = []
    for model in cfg.models:
        for inputs in cfg.inputs:
            batched = model_class(model).batched and cfg.batched
            groups = [folds] if batched else [[f] for f in folds]
            recipe = cfg.task_recipe(model, inputs, folds[0].seed)
            # With the image input set in the run, its models are the fused ones' fallbacks.
            reuse = "image" in cfg.inputs and applies(recipe, bool(data.spec.metadata))
            if reuse:
                recipe = replace(recipe, fallback=False)
            tasks += [FitTask(inputs, group, data, recipe, keep_fits, reuse)
                      for group in groups]
    cost = {"fused": 2, "image": 1, "meta": 0}
    return sorted(tasks, key=lambda t: (not model_class(t.model).batched, -len(t.rows),
                                        -cost[t.inputs]))


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
           on_start: Callable[[int], None] | None = None) -> CVRun:
    """Cross-validate every model x input set; per-fit records plus mean +- std summaries
    (``iter_cv``'s result, its events left aside)."""
    for event in iter_cv(data, contents, cfg, jobs=jobs, source=source, progress=progress,
                         on_start=on_start):
        if isinstance(event, CVDone):
            return event.result
    raise AssertionError("iter_cv ends with CVDone")


def iter_cv(data: Dataset | pd.DataFrame, contents: CacheContents, cfg: CVConfig, *,
            jobs: int = 1, source: str = "cache", progress: Callable[[int], None] | None = None,
            on_start: Callable[[int], None] | None = None, keep_fits: bool = False,
            ready: bool = False) -> Iterator[FoldFitted | FoldsReady | CVDone]:
    """Cross-validate every model x input set, as typed events for the caller (the workflow
    that writes bundles and reports; nothing here calls back up): ``FoldFitted`` per fold
    (``keep_fits``), ``FoldsReady`` per model and input set as soon as its folds are in
    (``ready``; those not handed over by the end are the caller's to make from ``oof``), then
    ``CVDone`` with the per-fit records and mean +- std summaries.

    ``jobs`` tasks at a time (0: one per CPU core); the results do not depend on it.
    """
    data = as_dataset(data)
    cfg, notes = input_sets(cfg, data)
    cfg = cfg.check()
    if data.spec.evaluation_only:
        raise InputError(f"{data.spec.name} is a test set: evaluate models on it, do not train")
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
    made: list[FitTask] = []

    def tasks() -> Iterator[FitTask]:
        for seed, fold_of_row in ids.items():
            seed_folds = list(iter_folds(table, fold_of_row, cfg.split, seed, cfg.val_fraction))
            folds.extend(seed_folds)
            for task in fold_tasks(data, seed_folds, cfg, keep_fits):
                made.append(task)   # before it is handed out: its number is its place here
                yield task

    sets = cfg.inputs
    assert sets is not None   # settled by input_sets
    n_fits = len(cfg.seeds) * cfg.folds * len(cfg.models) * len(sets)
    if on_start:
        on_start(n_fits)
    n_tasks = len(cfg.seeds) * len(sets) * sum(
        1 if model_class(m).batched and cfg.batched else cfg.folds for m in cfg.models)
    handed: set = set()

    def next_ready(done: list[dict]) -> FoldsReady | None:
        first = cfg.seeds[0]

        def of(model: str, inputs: str) -> list[dict]:
            return sorted((r for r in done if r["seed"] == first and r["model"] == model
                           and r["inputs"] == inputs), key=lambda r: r["fold"])

        for model in cfg.models:
            for inputs in sets:
                rs = of(model, inputs)
                if (model, inputs) in handed or len(rs) != cfg.folds:
                    continue
                if any(r.get("missing_rows") is not None for r in rs):
                    # a fused model whose fallback is the image model: ready with it
                    images = of(model, "image")
                    if len(images) != cfg.folds:
                        continue
                    rs = [with_fallback(r, o) for r, o in zip(rs, images, strict=False)]
                handed.add((model, inputs))
                return FoldsReady(model, inputs, oof_frame(table, rs, classes, consume=False))
        return None

    results: dict[int, list[dict]] = {}
    for i, recs in _run_tasks(tasks(), image, min(jobs or os.cpu_count() or 1, n_tasks)):
        for record, fold in zip(recs, made[i].rows, strict=False):
            fit = record.pop("fit", None)
            if fit is not None:
                yield FoldFitted(made[i], fold, fit, int(image.shape[-1]))
        results[i] = recs
        if progress:
            progress(len(recs))
        if ready:
            done = [r for k in sorted(results) for r in results[k]]
            while (event := next_ready(done)) is not None:
                yield event
    records = [r for i in range(len(results)) for r in results[i]]
    records.sort(key=lambda r: (r["seed"], r["fold"], cfg.models.index(r["model"]),
                                sets.index(r["inputs"])))
    y = table["label"].to_numpy()
    reuse_fallbacks(records, y, classes)
    oof = oof_frame(table, records, classes)
    majority = [majority_baseline(y[f.train], y[f.test], classes) for f in folds]
    keys = headline(len(classes))
    yield CVDone(CVRun(
        split=cfg.split, protocol=protocol(cfg.split, data.spec.group_name),
        config=cfg.to_dict(), dataset=data.spec.name, task=str(data.task), classes=classes,
        group=data.spec.group_name,
        reference_recipe=data.spec.reference_recipe and not data.task.binary,
        headline=list(keys), images=int(len(table)),
        lesions=int(table["group_id"].nunique()),
        views=int(image.shape[1] - 1) if image.ndim == 3 else 0,
        embed_dim=int(image.shape[-1]),
        folds_table=table[["image_id", "group_id", "dx"]].assign(
            **{f"fold_seed{s}": fold_of_row for s, fold_of_row in ids.items()}),
        records=records, oof=oof, summary=summarize(records, cfg, classes),
        model_notes={m: model_class(m).report_line(cfg.model_config(m)) for m in cfg.models},
        batched_models=[m for m in cfg.models if model_class(m).batched], notes=notes,
        majority_baseline={k: _mean_std([m[k] for m in majority]) for k in keys}))


def with_fallback(record: dict, image: dict) -> dict:
    """A fused fit's record (a copy) with, on its scored rows with every metadata field
    missing (``missing_rows``), the same fold's image-only model's logits, probabilities and
    decisions."""
    rows = record.get("missing_rows")
    if rows is None:
        return record
    keys = ("logits", "proba", "decided")
    return {**record, **dict(zip(keys, combine_rows(rows, tuple(record[k] for k in keys),
                                                    tuple(image[k] for k in keys)), strict=False))}


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
    assert cfg.inputs is not None   # settled by input_sets
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
