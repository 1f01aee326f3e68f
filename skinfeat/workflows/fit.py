"""fit-head as a function: one split, fit -> calibrate -> score, then the run folder (bundle,
splits, metrics, report, model card). It combines the layers below (learn, evaluate, deploy's
bundle) and is what the CLI's ``fit-head`` and ``skinfeat.fit`` call."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import Dataset
from ..data.splits import assign_split, parse_split, protocol, source_sides
from ..deploy.bundle import write_bundle
from ..deploy.bundle_config import BundleConfig
from ..deploy.inputs import cache_paths, dataset_or_path, recipe_or_default
from ..embed.cache import CacheContents, cache_label, read_caches
from ..embed.embedding_cache import Caches, PathLike
from ..errors import InputError
from ..evaluate.metrics import majority_baseline
from ..learn.cv import align_dataset
from ..learn.runconfig import RunConfig
from ..learn.train import (
    FALLBACK_DIR,
    SplitFit,
    _tta_note,
    as_dataset,
    bundle_config,
    check_inputs,
    fallback_fit,
    fit_split,
    prepare_split,
)
from ..version import __version__
from .results import FitResult, run_folder
from .summary import RunSummary


def save_fit(out: Path, fit: SplitFit, config: dict | BundleConfig,
             quantized: bool = True) -> None:
    """The bundle of one fitted split (``write_bundle``): the model's weights + config.json,
    and a copy of its int8 backbone, if any (``quantized``; a CV's folds share their
    ensemble's). ``config``: ``bundle_config``'s table, checked against the schema here."""
    if not isinstance(config, BundleConfig):
        config = BundleConfig.from_dict(config, str(Path(out) / "config.json"))
    if fit.fallback is not None:   # first: the model's config.json last means a whole bundle
        write_bundle(Path(out) / FALLBACK_DIR, fallback_config(config, fit),
                     fit.fallback.model, quantized=False)
    write_bundle(out, config, fit.model, quantized=quantized)


def fallback_config(config: BundleConfig, fit: SplitFit) -> BundleConfig:
    """The image-only fallback's bundle config: the model's, with the fallback's recipe,
    calibration and threshold (the same encoder, sizes and backbone)."""
    fb = fallback_fit(fit)
    kind = config.model_type   # the recipe's model table: the model's config
    run = None if config.run is None else \
        {**config.run, "fallback": False, kind: {**config.run.get(kind, {}), "inputs": "image"}}
    return replace(config, head={**fb.model.config_dict(), **{k: config.head[k] for k in
                                                             ("embed_dim", "meta_dim",
                                                              "n_classes")}},
                   temperature=fb.temperature, calibration=fb.calibrator.to_dict(),
                   threshold=fb.threshold, best_epoch=fb.model.best_epoch_, run=run,
                   fallback=None)


def fit_run(data: Dataset | pd.DataFrame, cache_path, out: str | Path,
            recipe: RunConfig | None = None, *, calibrate: bool = True,
            subgroups: str | Sequence[str] | None = None) -> FitResult:
    """Train one model on one split by ``recipe`` (its model config on its ``seed``);
    write bundle, metrics.json, report.md and figures to ``out``. Returns a ``FitResult``
    (metrics, baseline, ``info`` a ``RunSummary``, the model).

    ``cache_path``: one cache file or several (fused per image, in order). ``recipe.split=
    "none"`` trains on every row but an inner validation part (``val_size``, grouped) that
    stops early and calibrates: the model to deploy after a CV study; its report's scores are
    on that part, optimistic, and say so. ``calibrate=False`` keeps the raw logits (T = 1).
    ``recipe.split="by:COLUMN=VALUE"`` scores the rows of that value and trains on the others.
    ``subgroups``: the fields of the scored part's subgroup tables (None: the default ones,
    "none": no tables; ``analyse_subgroups``).
    """
    from ..evaluate.report import write_run_report
    from ..evaluate.subgroup_fields import analyse_subgroups, subgroup_columns

    recipe = (recipe or RunConfig()).seeded().check()
    data = as_dataset(data)
    out = Path(out)
    if data.spec.evaluation_only:
        raise InputError(f"{data.spec.name} is a test set: evaluate models on it, do not train")
    model = recipe.model
    check_inputs(data, recipe.params.inputs)
    subgroup_columns(subgroups, data.spec)   # a bad --subgroups fails before the fit
    contents = read_caches(cache_path)
    source = cache_label(cache_path)
    dropped, audited = len(data.table), dict(data.table.attrs)
    data, image = align_dataset(data, contents, source)
    table, full = data.table, data.with_described()   # full: + subgroup-only columns
    full.attrs.update(audited)   # --merge-duplicate-groups: splits.csv says how many merged
    dropped -= len(table)
    if parse_split(recipe.split).by:   # refused before the run folder exists
        assign_split(full, recipe.split, recipe.test_size, recipe.val_size, recipe.seed)
    out.mkdir(parents=True, exist_ok=True)   # after the checks: a refused run leaves nothing
    sides, kind = prepare_split(full, out, recipe.split, recipe.seed, recipe.test_size,
                                recipe.val_size)
    names = ("train", "val", "test") if kind != "none" else ("train", "val")
    rows = {s: np.flatnonzero((sides == s).to_numpy()) for s in names}
    fit = fit_split(data, image, rows, recipe, calibrate=calibrate)
    classes, y = list(data.classes), table["label"].to_numpy()
    scored = rows.get("test", rows[recipe.select_on])
    baseline = majority_baseline(y[rows["train"]], y[scored], classes)
    info = RunSummary(
        model=model, config={**fit.model.config_dict(), **fit.model.chosen},
        best_epoch=fit.model.best_epoch_, epochs_run=fit.model.epochs_run_, split=kind,
        protocol=protocol(kind, data.spec.group_name), select_on=recipe.select_on,
        scored_on="test" if "test" in rows else recipe.select_on, seed=recipe.seed,
        dataset=data.spec.name, task=str(data.task), classes=classes,
        class_names=data.class_names, group=data.spec.group_name,
        fields=list(data.spec.metadata),
        reference_recipe=data.spec.reference_recipe and not data.task.binary,
        sizes={s: int(len(r)) for s, r in rows.items()},
        lesions={s: int(table["group_id"].iloc[r].nunique()) for s, r in rows.items()},
        without_embedding=dropped, **contents.provenance(source),
        sources=cache_sources(contents, cache_path), temperature=fit.temperature,
        calibration=fit.calibrator.describe(), threshold=fit.threshold, tta=recipe.tta,
        tta_models=_tta_note(model, recipe.tta, image), encoding=fit.encoder.describe(),
        skinfeat=__version__, embed_dim=int(image.shape[-1]),
        meta_features=fit.encoder.feature_names,
        sources_split=source_sides(full, sides, kind), fallback=fallback_note(fit))
    config = bundle_config(data, fit, contents.identity, info.weights,
                           embed_dim=int(image.shape[-1]), tta=recipe.tta, split=kind,
                           seed=recipe.seed, run=recipe.to_dict())
    save_fit(out, fit, config)
    found = analyse_subgroups(full.iloc[scored].reset_index(drop=True),
                              full.iloc[rows["train"]], y[scored],
                              fit.calibrator(fit.test_logits), fit.test_pred, data.spec,
                              classes, subgroups, out)
    write_run_report(out, fit.metrics, baseline, info, y_true=y[scored],
                     logits=fit.test_logits, calibrator=fit.calibrator, y_pred=fit.test_pred,
                     groups=table["group_id"].to_numpy()[scored], subgroups=found)
    return FitResult(fit.metrics, baseline, info, out)


def fallback_note(fit: SplitFit) -> str:
    """What the fallback did on the scored part, for the report."""
    if fit.fallback is None or fit.missing_rows is None:
        return "none"
    return (f"an image-only head trained on the same split, calibrated on the same part; it "
            f"scored {fit.fell_back} of {len(fit.missing_rows)} scored row(s)")


def cache_sources(contents: CacheContents, paths) -> list[dict]:
    """Each embedding source of a run, for its reports: file, backbone, width."""
    if "fused" in contents.identity:
        ident = contents.identity
        return [{"cache": src, "backbone": i.get("backbone", "outside skinfeat"), "dim": d}
                for src, i, d in zip(ident["sources"], ident["fused"], ident["dims"], strict=False)]
    return [{"cache": cache_label(paths),
             "backbone": contents.identity.get("backbone", "outside skinfeat"),
             "dim": contents.dim}]


def fit(data: Dataset | PathLike, caches: Caches, *, recipe: RunConfig | None = None,
        out: PathLike | None = None,
        subgroups: str | Sequence[str] | None = None) -> FitResult:
    """Stage two on one split (``skinfeat fit-head``): train, calibrate on validation, score
    on the held-out test part (``recipe.split="none"``: every row trains; ``"by:COLUMN=VALUE"``:
    that value is the test part). ``subgroups``: the fields of the report's subgroup tables
    (None: the default ones, "none": no tables)."""
    where, owner = run_folder(out, "fit")
    res = fit_run(dataset_or_path(data), cache_paths(caches, "caches"), where,
                  recipe_or_default(recipe).check(), subgroups=subgroups)
    return replace(res, _owner=owner)
