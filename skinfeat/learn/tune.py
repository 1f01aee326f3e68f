"""``skinfeat tune``: a hyperparameter search over the head with Optuna, honest by construction.

1. A grouped, stratified test part is held out first (``test_size``, by lesion or patient) and
   never seen by the search.
2. Every trial is a k-fold grouped CV of one head configuration on the rest: ``train.fit_splits``,
   the one training path, with the k heads trained as one batched network. Its score is the
   mean over the folds of ``metric``: by default the task's headline (balanced accuracy, or ROC
   AUC for a binary task); ``pauc80`` (pAUC above 80 % TPR, ISIC 2024's metric) or ``auc`` for
   a binary task.
3. The best configuration is trained once more on the rest (early stopping and calibration on a
   grouped validation part of it) and scored once on the held-out part.

Trial 0 is the starting configuration (the defaults, or ``--config``), so the report shows what
the search gained over it. ``storage`` is an Optuna storage URL (``sqlite:///tune.db`` locally,
``postgresql://...`` across machines): workers started with the same URL and study name share
one study and stop when it holds ``trials`` finished trials, and a rerun after an interruption
resumes it. The protocol (data, seed, test part, folds) is stored in the study and a worker with
another one is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import Dataset
from ..errors import InputError
from .head import HeadConfig
from .head_batch import epoch_hook
from .head_model import HeadModel
from .runconfig import RunConfig
from .train import fit_splits
from .tune_storage import JOURNAL, first_line, storage_of

log = logging.getLogger(__name__)


TUNE_METRICS = ("balanced_accuracy", "auc", "pauc80")   # auc and pauc80: binary tasks


@dataclass(frozen=True)
class TuneConfig:
    """The search: how many trials, the protocol, where the study lives, where it starts (the
    recipe of trial 0, whose seed is the search's: held-out part, folds, sampler, fits)."""
    trials: int = 50
    folds: int = 5
    test_size: float = 0.2
    split: str = "group"
    storage: str | None = None            # an Optuna storage URL; None: in memory
    study_name: str = "skinfeat-tune"
    start: RunConfig = field(default_factory=RunConfig)
    jobs: int = 1                         # worker processes sharing the study on this machine
    batched: bool = True                  # each trial's fold heads as one batched network
    metric: str | None = None             # trials ranked by (TUNE_METRICS); None: the headline
    prune: bool = True                    # stop trials whose folds' val loss trails the median

    @property
    def seed(self) -> int:
        return self.start.seed

    @property
    def start_head(self) -> HeadConfig:
        """The head config trial 0 starts from: the start recipe's, if it is a head's; the
        head member's of an ensemble (the default model: its flags are the head's); else the
        defaults on its inputs (tune searches the head)."""
        from .ensemble import EnsembleConfig, member_config

        params = self.start.params
        if isinstance(params, HeadConfig):
            return params
        if isinstance(params, EnsembleConfig) and HeadModel.kind in params.members:
            return replace(member_config(params, HeadModel.kind), seed=self.start.seed)
        return HeadConfig(inputs=params.inputs, seed=self.start.seed)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "start"}, "seed": self.seed,
                "start": self.start.to_dict()}

    def metric_for(self, n_classes: int) -> str:
        """The metric trials are ranked by on a task of ``n_classes``; a binary-only metric on
        a multi-class task is a one-line error."""
        if self.metric is None:
            return "auc" if n_classes == 2 else "balanced_accuracy"
        if self.metric not in TUNE_METRICS:
            raise InputError(f"tune --metric {self.metric}: use one of {', '.join(TUNE_METRICS)}")
        if self.metric in ("auc", "pauc80") and n_classes != 2:
            raise InputError(f"tune --metric {self.metric} needs a binary task; this one has "
                             f"{n_classes} classes (use balanced_accuracy)")
        return self.metric

    def check(self) -> None:
        if self.metric is not None and self.metric not in TUNE_METRICS:
            raise InputError(f"tune --metric {self.metric}: use one of {', '.join(TUNE_METRICS)}")
        if self.trials < 1 or self.folds < 2:
            raise InputError("tune needs at least 1 trial and 2 folds")
        if not 0 < self.test_size < 1:
            raise InputError(f"test_size must be in (0, 1), got {self.test_size}")


def suggest(trial, start: HeadConfig) -> HeadConfig:
    """One trial's head: learning rate, widths, dropouts, metadata dropout, weight decay,
    patience and epoch bound, head type. Everything else stays as in ``start``; every range
    is widened to hold ``start`` (trial 0), however bad a start it is."""
    def between(name: str, lo: float, hi: float, value: float, **kw) -> float:
        return trial.suggest_float(name, min(lo, value), max(hi, value), **kw)

    def whole(name: str, lo: int, hi: int, value: int) -> int:
        return trial.suggest_int(name, min(lo, value), max(hi, value))

    def choice(name: str, options: list, value):
        return trial.suggest_categorical(name, sorted(set(options) | {value}, key=str))

    meta_width = choice("meta_width", [16, 32, 64], start.meta_width)
    return replace(
        start,
        lr=between("lr", 1e-4, 1e-2, start.lr, log=True),
        dense_width=choice("dense_width", [32, 64, 128, 256], start.dense_width),
        meta_width=meta_width, meta_out=max(1, meta_width // 2),
        image_dropout=between("image_dropout", 0.0, 0.6, start.image_dropout),
        dropout=between("dropout", 0.0, 0.6, start.dropout),
        meta_dropout=between("meta_dropout", 0.0, 0.5, start.meta_dropout),
        weight_decay=between("weight_decay", 1e-7, 1e-2, max(start.weight_decay, 1e-7),
                             log=True),
        patience=whole("patience", 2, 8, start.patience),
        max_epochs=whole("max_epochs", 10, 40, start.max_epochs),
        head=choice("head", ["reference", "film"], start.head),
        epochs=None)


def start_params(head: HeadConfig) -> dict:
    """``start`` as trial parameters (trial 0). A weight decay of 0 is the log range's floor."""
    return {"lr": head.lr, "dense_width": head.dense_width, "meta_width": head.meta_width,
            "image_dropout": head.image_dropout, "dropout": head.dropout,
            "meta_dropout": head.meta_dropout, "weight_decay": max(head.weight_decay, 1e-7),
            "patience": head.patience, "max_epochs": head.max_epochs, "head": head.head}


def protocol_key(table: pd.DataFrame, cfg: TuneConfig) -> str:
    """What every worker of one study must share: the rows, the seed, the parts."""
    digest = hashlib.sha256("\n".join(sorted(table["image_id"])).encode()).hexdigest()[:16]
    return json.dumps({"rows": digest, "n": len(table), "seed": cfg.seed, "split": cfg.split,
                       "test_size": cfg.test_size, "folds": cfg.folds,
                       "inputs": cfg.start_head.inputs, "encoding": cfg.start.encoding,
                       # trials ranked by another metric are not comparable values
                       **({"metric": cfg.metric} if cfg.metric else {})},
                      sort_keys=True)


def open_study(cfg: TuneConfig, key: str, storage=None, worker: int = 0):
    import optuna

    # Workers draw from differently seeded samplers, or they would all propose the same trial.
    from sqlalchemy.exc import SQLAlchemyError

    sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker)
    # A trial whose folds' mean best validation loss is worse than the median of the trials
    # before it at the same epoch stops there (after 5 trials and 5 epochs): what TPE learns
    # from it is its last value; the search's time goes to the promising configurations.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5) if cfg.prune \
        else optuna.pruners.NopPruner()
    where = cfg.storage or JOURNAL
    try:
        study = optuna.create_study(study_name=cfg.study_name, storage=storage,
                                    direction="maximize", sampler=sampler, pruner=pruner,
                                    load_if_exists=True)
    except SQLAlchemyError as exc:
        raise InputError(f"--storage {where}: cannot open the study "
                         f"({first_line(exc)})") from exc
    have = study.user_attrs.get("protocol")
    if have is None:
        study.set_user_attr("protocol", key)
    elif have != key:
        raise InputError(f"study {cfg.study_name!r} in {where} was made with another "
                         f"protocol ({have}); this run has {key}: use another --study-name")
    if not study.trials and worker == 0:
        study.enqueue_trial(start_params(cfg.start_head))
    return study


def trial_recipe(cfg: TuneConfig, head: HeadConfig) -> RunConfig:
    """The starting recipe with one trial's head: the head is what is searched, selected on
    each fold's inner val part, with the search's seed."""
    return replace(cfg.start, model=HeadModel.kind, seed=cfg.seed, select_on="val", params=head)


@dataclass
class Search:
    """What a search worker needs: the data, the embeddings, the folds, the recipe."""
    data: Dataset
    image: np.ndarray
    folds: list[dict]
    metric: str
    cfg: TuneConfig
    key: str


def search(job: Search, storage, worker: int = 0,
           progress: Callable[[int], None] | None = None):
    """Run trials until the study holds ``trials`` of them (any worker's)."""
    import optuna

    cfg = job.cfg

    def objective(trial) -> float:
        # No image-only fallback in a trial: it would double the heads trained for the few
        # rows with every field missing (the final fit keeps it).
        recipe = replace(trial_recipe(cfg, suggest(trial, replace(cfg.start_head,
                                                                  seed=cfg.seed))),
                         fallback=False)

        def report(epoch: int, best: list[float]) -> None:
            trial.report(-float(np.mean(best)), epoch)   # maximized: minus the val loss
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        # Pruning reads the batched fit's epochs (sequential fits would report each one's).
        try:
            with epoch_hook(report if cfg.prune and cfg.batched else None):
                fits = fit_splits(job.data, job.image, job.folds, recipe=recipe,
                                  batched=cfg.batched)
        except optuna.TrialPruned:
            if progress:
                progress(1)
            raise
        scores = [f.metrics[job.metric] for f in fits]
        trial.set_user_attr("std", float(np.std(scores)))
        trial.set_user_attr("best_epochs", [f.model.best_epoch_ for f in fits])
        if progress:
            progress(1)
        return float(np.mean(scores))

    study = open_study(cfg, job.key, storage, worker)
    waiting = optuna.trial.TrialState.WAITING   # trial 0, queued but not run yet
    left = cfg.trials - sum(t.state != waiting for t in study.trials)
    if progress and cfg.trials - left > 0:   # a resumed study: the bar starts at its trials
        progress(min(cfg.trials - left, cfg.trials))
    if left > 0:
        study.optimize(objective, n_trials=left, callbacks=[
            optuna.study.MaxTrialsCallback(cfg.trials, states=None)])
    return study


def _search_worker(job: Search, out: str, worker: int) -> None:
    import optuna
    import torch

    # This process is the library's own worker: its global settings are ours to choose (a
    # line per trial from every worker would bury the progress bar).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    search(job, storage_of(job.cfg, Path(out)), worker)
