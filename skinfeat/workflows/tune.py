"""tune as a function: the Optuna search of ``learn.tune`` on the rows outside a held-out
grouped test part, the chosen recipe scored once on it, and the report (history plot,
``tune_metrics.json``, ``best_config.json``)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_artifact, write_text
from ..data.datasets import Dataset
from ..data.splits import fold_ids, holdout_mask
from ..deploy.inputs import cache_paths, dataset_or_path, recipe_or_default
from ..embed.cache import cache_label, read_caches
from ..embed.embedding_cache import Caches, PathLike
from ..errors import InputError
from ..learn.cv import iter_folds
from ..learn.head import one_thread
from ..learn.runconfig import RunConfig
from ..learn.train import align_embeddings, as_dataset, check_inputs, fit_split
from ..learn.tune import (
    Search,
    TuneConfig,
    _search_worker,
    open_study,
    protocol_key,
    search,
    suggest,
    trial_recipe,
)
from ..learn.tune_storage import storage_of
from .results import TuneResult


def tune_run(data: Dataset | pd.DataFrame, cache_path, out: str | Path, cfg: TuneConfig, *,
             progress: Callable[[int], None] | None = None) -> TuneResult:
    """Search, choose, score once on the held-out part; write the report, the history plot,
    ``tune_metrics.json`` and ``best_config.json`` (a ``fit-head --config`` file)."""
    import optuna

    cfg.check()
    data = as_dataset(data)
    merged = data.table.attrs.get("merged_groups")   # --merge-duplicate-groups: the report says it
    if data.spec.evaluation_only:
        raise InputError(f"{data.spec.name} is a test set: evaluate models on it, do not tune")
    check_inputs(data, cfg.start_head.inputs)
    metric = cfg.metric_for(len(data.classes))   # a wrong metric fails before any work
    out = Path(out)
    storage = storage_of(cfg, out, repair=True)   # a storage that fails, fails before the work
    out.mkdir(parents=True, exist_ok=True)
    contents = read_caches(cache_path)
    table, image = align_embeddings(data.table, contents, cache_label(cache_path))
    data = replace(data, table=table)
    start = cfg.start
    test = holdout_mask(table, cfg.test_size, cfg.split, cfg.seed)
    rest = np.flatnonzero(~test)
    rest_table = table.iloc[rest].reset_index(drop=True)
    folds = [{"train": rest[f.train], "val": rest[f.val], "test": rest[f.test]}
             for f in iter_folds(rest_table, fold_ids(rest_table, cfg.folds, cfg.split,
                                                      cfg.seed), cfg.split, cfg.seed)]
    job = Search(data, image, folds, metric, cfg, protocol_key(table, cfg))
    if cfg.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        open_study(cfg, job.key, storage)   # made (and trial 0 queued) before the workers
        with ProcessPoolExecutor(cfg.jobs - 1, get_context("spawn")) as pool:
            others = [pool.submit(_search_worker, job, str(out), w)
                      for w in range(1, cfg.jobs)]
            study = one_thread(search)(job, storage, 0, progress)
            for f in others:
                f.result()
        study = open_study(cfg, job.key, storage)
    else:
        study = one_thread(search)(job, storage, 0, progress)
    best = study.best_trial
    best_head = replace(suggest(optuna.trial.FixedTrial(best.params),
                                replace(cfg.start_head, seed=cfg.seed)))
    # The chosen configuration, trained once on all of the search rows, scored once on test.
    inner = holdout_mask(rest_table, start.val_size / (1 - cfg.test_size), cfg.split, cfg.seed)
    chosen = replace(trial_recipe(cfg, best_head), test_size=cfg.test_size)
    final = fit_split(data, image, {"train": rest[~inner], "val": rest[inner],
                                    "test": np.flatnonzero(test)}, chosen)
    write_text(out / "best_config.json", json.dumps({"run": chosen.to_dict()}, indent=2))
    history = [{"number": t.number, "value": t.value, "state": t.state.name,
                "params": t.params, **t.user_attrs} for t in study.trials]
    res = TuneResult(
        metric=metric, best={"number": best.number, "value": best.value,
                             "params": best.params, "head": asdict(best_head)},
        start=next((h for h in history if h["number"] == 0), None),
        held_out={"n": int(test.sum()), "groups": int(table.loc[test, "group_id"].nunique()),
                  "metrics": final.metrics},
        history=history, config=cfg.to_dict(),
        sizes={"search": int(len(rest)), "held_out": int(test.sum())},
        dataset=data.spec.name, task=str(data.task), group=data.spec.group_name,
        merged_groups=merged,
        info=contents.provenance(cache_label(cache_path)), out=out)
    write_tune_report(out, res.to_dict())
    return res


def merged_lines(merged: int | None) -> list[str]:
    """The report's line for groups an audit joined before the split (none without one)."""
    return [] if merged is None else [
        f"- groups joined before splitting (skinfeat audit, --merge-duplicate-groups): "
        f"{merged} group(s) merged into others by near-duplicate pairs"]


def write_tune_report(out: Path, res: dict) -> None:
    from ..evaluate.report import fmt, new_figure

    # A pruned trial carries its last reported value (minus a validation loss), not the
    # metric: the plot and the count of finished trials are the completed ones.
    done = [h for h in res["history"] if h["state"] == "COMPLETE"]
    pruned = sum(h["state"] == "PRUNED" for h in res["history"])
    fig, ax = new_figure((6, 4))
    ax.plot([h["number"] for h in done], [h["value"] for h in done], "o", alpha=0.6,
            label="trial (mean over folds)")
    ax.plot([h["number"] for h in done], np.maximum.accumulate([h["value"] for h in done]),
            "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(res["metric"].replace("_", " ") + " (CV)")
    ax.set_title("Search history")
    ax.legend()
    fig.tight_layout()
    write_artifact(out / "tune_history.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    write_text(out / "tune_metrics.json", json.dumps(res, indent=2, default=str))
    cfg, best, held = res["config"], res["best"], res["held_out"]
    pct = res["metric"] == "balanced_accuracy"   # auc, pauc80: plain numbers
    start = res["start"]
    lines = [f"# skinfeat tune: {out.name}", "",
             f"**Held-out {res['metric'].replace('_', ' ')} of the chosen configuration: "
             f"{fmt(held['metrics'][res['metric']], pct)}** ({held['n']} images of "
             f"{held['groups']} {res['group']}s, scored once)", "",
             f"- data: {res['dataset']}, task {res['task']}; cache: {res['info']['cache']}",
             f"- protocol: a {res['group']}-grouped test part ({100 * cfg['test_size']:.0f} %) "
             f"held out first; each trial is a {cfg['folds']}-fold {res['group']}-grouped CV "
             f"on the other {res['sizes']['search']} images (early stopping and calibration "
             "on an inner validation part of each fold's training rows); the chosen "
             "configuration is trained on those rows and scored once on the held-out part",
             *merged_lines(res.get("merged_groups")),
             f"- {len(done)} finished trials"
             + (f", {pruned} pruned (their folds' validation loss trailed the median at the "
                "same epoch)" if pruned else "") + f" (Optuna TPE, seed {cfg['seed']}"
             + (f", study `{cfg['study_name']}` in `{cfg['storage']}`" if cfg["storage"] else "")
             + ")",
             f"- best: trial {best['number']}, CV {fmt(best['value'], pct)}"
             + (f"; the starting configuration (trial 0): CV {fmt(start['value'], pct)}"
                if start and start["value"] is not None else ""), "",
             "![search history](tune_history.png)", "", "## Chosen configuration", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in best["params"].items()]
    lines += ["", "`best_config.json` holds the whole recipe: `skinfeat fit-head --config "
              "best_config.json --split none` trains the model to deploy.", "",
              "## Held-out metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(held['metrics'][k], k in ('accuracy', 'balanced_accuracy'))} |"
              for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "auc")
              if held["metrics"].get(k) is not None]
    write_text(out / "tune_report.md", "\n".join(lines) + "\n")


def tune(data: Dataset | PathLike, caches: Caches, out: PathLike, *, trials: int = 50,
         folds: int = 5, recipe: RunConfig | None = None, storage: str | None = None,
         study_name: str = "skinfeat-tune", jobs: int = 1, test_size: float = 0.2,
         split: str = "group", metric: str | None = None, prune: bool = True,
         progress: Callable[[int], None] | None = None) -> TuneResult:
    """Optuna search over the head's settings, grouped CV per trial on the rows outside a held-
    out test part that scores the chosen recipe once (``skinfeat tune``; needs the ``tune``
    extra). Trials are ranked by ``metric`` (None: balanced_accuracy, or auc when binary;
    pauc80 and auc need a binary task); ``prune`` stops trials whose validation loss trails the
    median at the same epoch. Returns the best trial, the held-out score and
    ``out/best_config.json`` (a ``TuneResult``)."""
    cfg = TuneConfig(trials=trials, folds=folds, test_size=test_size, split=split,
                     storage=storage, study_name=study_name, start=recipe_or_default(recipe),
                     jobs=jobs, metric=metric, prune=prune)
    return tune_run(dataset_or_path(data), cache_paths(caches, "caches"), out, cfg,
                    progress=progress)
