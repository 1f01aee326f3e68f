"""cv as a function: k-fold CV of every model x input set, the report, and (``save_models``)
every fold's bundle plus a fold-ensemble bundle per model and input set. It combines
``learn.cv`` (the folds and fits) with the bundle and report writers."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_artifact, write_text
from ..data.datasets import Dataset
from ..data.splits import parse_split, save_split
from ..deploy.bundle import QUANTIZED, load_typed, write_bundle
from ..deploy.bundle_config import BundleConfig, EnsembleConfig
from ..deploy.inputs import cache_paths, dataset_or_path, recipe_or_default
from ..embed.cache import cache_label, read_caches
from ..embed.embedding_cache import Caches, PathLike
from ..learn.cv import (
    CVConfig,
    CVRun,
    FoldFitted,
    FoldsReady,
    align_dataset,
    input_sets,
    iter_cv,
)
from ..learn.protocol import with_fields
from ..learn.runconfig import RunConfig
from ..learn.train import FALLBACK_DIR, as_dataset, bundle_config
from .fit import cache_sources, save_fit
from .results import CVResult, run_folder


def model_dir(out: Path, model: str, inputs: str) -> Path:
    return Path(out) / "models" / f"{model}_{inputs}"


def fold_name(seed: int, fold: int) -> str:
    return f"seed{seed}_fold{fold}"


def save_fold_bundle(event: FoldFitted, save: dict) -> None:
    """The fold's model as a bundle of its own (``models/MODEL_INPUTS/seedS_foldK``), with the
    image ids it trained and early-stopped on, so evaluate can leave them out. ``save``: the
    run folder, the cache's identity and weights, the split."""
    task, fold, fit = event.task, event.fold, event.fit
    out = model_dir(Path(save["out"]), task.model, task.inputs) / fold_name(fold.seed,
                                                                            fold.fold)
    run = RunConfig(model=task.model, split=save["split"], seed=fold.seed,
                    encoding=task.encoding, calibration=task.calibration, tta=task.tta,
                    params=with_fields(task.recipe.params, num_threads=0))
    config = bundle_config(task.data, fit, save["identity"], save["weights"],
                           embed_dim=event.embed_dim, tta=task.tta, split=save["split"],
                           seed=fold.seed, run=run.to_dict())
    save_fit(out, fit, config, quantized=False)   # the ensemble's folder holds the int8 model
    table = task.data.table
    side = np.full(len(table), "test", dtype=object)
    side[fold.train], side[fold.val] = "train", "val"
    save_split(table, pd.Series(side), out / "splits.csv", save["split"], fold.seed)


def cv_run(data: Dataset | pd.DataFrame, cache_path, out: str | Path,
           cfg: CVConfig, *,
           jobs: int = 1, progress: Callable[[int], None] | None = None,
           on_start: Callable[[int], None] | None = None, save_models: bool = False,
           subgroups: str | Sequence[str] | None = None) -> CVResult:
    """Run the CV on a cache file (or several, fused per image); write cv_metrics.json,
    cv_report.md, cv_folds.csv, oof_predictions.csv (``CVResult.oof``) and PNGs.
    ``save_models``: every fold's bundle and, per model and input set, an ensemble bundle of
    its folds (``models/MODEL_INPUTS/``). ``subgroups``: the fields of the out-of-fold
    subgroup tables (None: the default fields, "none": no tables; ``analyse_subgroups``)."""
    from ..evaluate.cv_report import write_cv_report
    from ..evaluate.subgroup_fields import subgroup_columns

    out = Path(out)
    data = as_dataset(data)
    input_sets(cfg, data)[0].check()   # bad input sets or seeds fail before anything is written
    subgroup_columns(subgroups, data.spec)   # a bad --subgroups fails before the fits
    out.mkdir(parents=True, exist_ok=True)
    contents = read_caches(cache_path)
    source = cache_label(cache_path)
    info = contents.provenance(source)
    save = {"out": str(out), "identity": contents.identity, "weights": info["weights"],
            "split": cfg.split} if save_models else None
    tables = SubgroupTables(data, contents, source, subgroups, out)
    for event in iter_cv(data, contents, cfg, jobs=jobs, source=source, progress=progress,
                         on_start=on_start, keep_fits=save is not None, ready=tables.wanted):
        if isinstance(event, FoldFitted):
            assert save is not None   # folds are handed over with keep_fits=save is not None
            save_fold_bundle(event, save)
        elif isinstance(event, FoldsReady):
            tables.add(event.model, event.inputs, event.oof)
        else:
            run = event.result
    folds = run.folds_table.copy()
    for key in ("merged_groups", "dropped_label_issues"):   # an audit's changes: the report
        if key in data.table.attrs:                          # says them (write_cv_report)
            folds.attrs[key] = data.table.attrs[key]
    models = {}
    if save_models:
        attach_fallbacks(out, run)
        models = write_ensembles(out, run, replace(cfg, inputs=tuple(run.config["inputs"]),
                                                   folds=run.config["folds"]))
    res = CVResult(run, {**info, "sources": cache_sources(contents, cache_path)}, out, folds,
                   models, fold_sources(data, contents, source, run), tables.all(run))
    write_cv_report(out, res.raw)
    write_artifact(out / "oof_predictions.csv", lambda tmp: run.oof.to_csv(tmp, index=False))
    return res


def fold_sources(data: Dataset, contents, source: str, run: CVRun) -> dict | None:
    """A ``by:COLUMN`` CV's sources: which value each fold scored (trained on the others)."""
    split = parse_split(run.split)
    if not split.by:
        return None
    full = align_dataset(data, contents, source)[0].with_described()
    folds = run.folds_table[f"fold_seed{run.config['seeds'][0]}"].to_numpy()
    values = full[split.column].astype(str).to_numpy()
    return {"column": split.column,
            "scored_on": {int(k): sorted(set(values[folds == k])) for k in sorted(set(folds))}}


def subgroup_dir(model: str, inputs: str) -> str:
    return f"subgroups_{model}_{inputs}"


class SubgroupTables:
    """Per model and input set, the subgroup tables of the pooled out-of-fold predictions of
    the first seed (each image scored once, by the fold that did not train on it); forest
    plots in ``out/subgroups_MODEL_INPUTS/``. Numeric fields other than age are banded on
    every row (each row trained some fold). ``add`` takes one model and input set as soon as
    its folds are in (``iter_cv``'s ``FoldsReady``), ``all`` makes the rest from the run's
    ``oof``; nothing for ``--subgroups none``."""

    def __init__(self, data: Dataset, contents, source: str,
                 fields: str | Sequence[str] | None, out: Path):
        from ..evaluate.subgroup_fields import subgroup_columns

        self.data, self.fields, self.out = data, fields, out
        self.made: dict = {}
        self.wanted = bool(subgroup_columns(fields, data.spec))
        if self.wanted:
            self.full = align_dataset(data, contents, source)[0].with_described()
            self.by_id = self.full.set_index("image_id")

    def add(self, model: str, inputs: str, part: pd.DataFrame) -> None:
        from ..evaluate.subgroup_fields import analyse_subgroups

        classes = list(self.data.classes)
        rows = self.by_id.loc[part["image_id"]].reset_index()
        proba = part[[f"p_{c}" for c in classes]].to_numpy()
        y_pred = part["decision"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        self.made.setdefault(model, {})[inputs] = analyse_subgroups(
            rows, self.full, rows["label"].to_numpy(), proba, y_pred,
            self.data.spec, classes, self.fields, self.out / subgroup_dir(model, inputs))

    def all(self, run: CVRun) -> dict:
        if not self.wanted:
            return {}
        oof = run.oof
        oof = oof[oof["seed"] == run.config["seeds"][0]]
        for model, by_inputs in run.summary.items():
            for inputs in by_inputs:
                if inputs not in self.made.get(model, {}):
                    self.add(model, inputs, oof[(oof["model"] == model)
                                                & (oof["inputs"] == inputs)])
        return {model: {inputs: self.made[model][inputs] for inputs in by_inputs}
                for model, by_inputs in run.summary.items()}


def attach_fallbacks(out: Path, run: CVRun) -> None:
    """A fused fold bundle whose fallback was the same fold's image-only model (the records
    that fell back to it, ``learn.cv.reuse_fallbacks``) gets a copy of that bundle as its
    ``fallback/`` folder, so predict scores those rows as the CV did."""
    for r in run.records:
        if r["inputs"] != "fused" or "reused_fallback" not in r:
            continue
        name = fold_name(r["seed"], r["fold"])
        fused, image = model_dir(out, r["model"], "fused") / name, \
            model_dir(out, r["model"], "image") / name
        target = fused / FALLBACK_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(image, target, ignore=shutil.ignore_patterns("splits.csv", QUANTIZED))
        table, config = load_typed(fused)
        assert isinstance(config, BundleConfig)   # a fold's bundle: one model
        write_bundle(fused, replace(config, fallback=FALLBACK_DIR), quantized=False)


def write_ensembles(out: Path, run: CVRun, cfg: CVConfig) -> dict[str, str]:
    """Per model and input set, an ensemble bundle over its fold bundles (predict and evaluate
    average the members' calibrated probabilities; see ``deploy.model.Model``)."""
    made = {}
    table = run.folds_table
    assert cfg.inputs is not None   # the run's own
    for model in cfg.models:
        for inputs in cfg.inputs:
            where = model_dir(out, model, inputs)
            members = [fold_name(seed, k) for seed in cfg.seeds for k in range(cfg.folds)]
            first = load_typed(where / members[0])[1]
            assert isinstance(first, BundleConfig)   # a fold's bundle: one model
            write_bundle(where, EnsembleConfig.of_members(
                first, members, inputs=inputs, split=f"{cfg.split} cv, {cfg.folds} folds",
                seeds=list(cfg.seeds), combine=ENSEMBLE_RULE))
            # Every image trained or early-stopped some member: evaluate leaves them all out.
            seen = table[["image_id", "group_id", "dx"]].assign(split="train", kind=cfg.split,
                                                                 seed=cfg.seeds[0])
            write_text(where / "splits.csv", seen.to_csv(index=False))
            made[f"{model}_{inputs}"] = str(where)
    return made


ENSEMBLE_RULE = ("mean of the members' calibrated probabilities; decisions by the balanced rule "
                 "with the mean of the members' log class weights (a binary model: the mean "
                 "of their thresholds)")


def cross_validate(data: Dataset | PathLike, caches: Caches, *, folds: int = 5,
                   models: Sequence[str] | None = None,
                   inputs: Sequence[str] | None = None,
                   recipe: RunConfig | None = None, params: dict | None = None,
                   seeds: Sequence[int] | None = None,
                   split: str = "group", jobs: int = 1, save_models: bool = False,
                   out: PathLike | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_start: Callable[[int], None] | None = None,
                   subgroups: str | Sequence[str] | None = None) -> CVResult:
    """Grouped k-fold CV of every model x input set on identical folds (``skinfeat cv``), each
    fit by ``recipe``; ``models=None``: the recipe's model (the ensemble by default; the head
    with ``encoding="reference"``) and LightGBM; ``params``: each model's config by kind (a
    model not there: the recipe's own if it is the recipe's model, else its defaults);
    ``inputs=None``: every set
    the data has (image, meta, fused; a set without metadata fields: image). Writes
    ``oof_predictions.csv`` (``CVResult.oof``).
    ``split``: lesion, image or ``by:COLUMN`` (each value one fold); ``subgroups``: the fields
    of the out-of-fold subgroup tables (None: the default ones, "none": no tables)."""
    # no models: CVConfig's default, the recipe's model and LightGBM (``default_models``)
    cfg = CVConfig.of(recipe_or_default(recipe), folds, split, seeds, models or (), inputs,
                      params)
    where, owner = run_folder(out, "cv")
    res = cv_run(dataset_or_path(data), cache_paths(caches, "caches"), where, cfg, jobs=jobs,
                 progress=progress, on_start=on_start, save_models=save_models,
                 subgroups=subgroups)
    return replace(res, _owner=owner)
