"""Stage two for one split: cached embeddings + metadata -> trained bundle, metrics and report.

``fit_split`` is the one training path: ``fit-head`` runs it on one saved split and ``cv`` on every
fold, so encoding, training, calibration and scoring cannot drift apart. The metadata encoder is
fitted on training rows only; the epoch (or boosting round), the calibration temperature and a
binary task's threshold are chosen on ``val``; the scores are computed on ``test`` unless the
reference's protocol is asked for explicitly (``select_on="test"``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .baseline import LGBMConfig, LGBMModel, fit_lgbm
from .bundle import save_bundle
from .cache import CacheContents, read_cache
from .calibration import Calibrator
from .datasets import HAM10000, Dataset
from .head import FusionHead, HeadConfig, balanced_class_weights, fit_head, head_logits
from .metadata import MetadataEncoder
from .metrics import (classification_metrics, classwise_calibration, expected_calibration_error,
                      majority_baseline, softmax)
from .splits import assign_split, load_split, protocol, save_split

log = logging.getLogger(__name__)

MODELS = ("head", "lgbm")


def align_embeddings(table: pd.DataFrame, contents: CacheContents,
                     source: str = "cache") -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of ``table`` with their embeddings, (N, D) or (N, 1+V, D) with view 0 the original.

    Images that the cache records as unreadable are dropped with a warning; any other image
    without an embedding is an error (the cache belongs to other data, or extract was not run).
    """
    failed = dict(json.loads(contents.attrs.get("failures", "[]")))
    known = set(contents.image_ids)
    drop = table["image_id"].isin(failed.keys()) & ~table["image_id"].isin(known)
    if drop.any():
        log.warning("%s: %d image(s) could not be read at extract time and are left out: %s",
                    source, int(drop.sum()), ", ".join(table.loc[drop, "image_id"][:5]))
        table = table[~drop].reset_index(drop=True)
    rows = contents.rows_for(table["image_id"].tolist())
    image = contents.embeddings[rows]
    if contents.view_embeddings is not None:
        image = np.concatenate([image[:, None], contents.view_embeddings[rows]], axis=1)
    return table, image


@dataclass
class Trained:
    """A fitted stage-two model with one way to get logits, whatever its kind."""
    kind: str
    model: FusionHead | LGBMModel
    config: dict
    best_epoch: int | None = None
    epochs_run: int | None = None
    class_weights: list[float] | None = None   # of the training loss: the prior it shifted

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        if self.kind == "head":
            return head_logits(self.model, image, meta, tta=tta)
        return np.log(np.clip(self.model.predict_proba(image, meta, tta=tta), 1e-12, None))


def train_model(kind: str, train: tuple, val: tuple, n_classes: int,
                head_cfg: HeadConfig, lgbm_cfg: LGBMConfig,
                meta_fields: list | None = None) -> Trained:
    """``meta_fields``: the encoder's ``dropout_fields()``, what metadata dropout blanks to."""
    if kind == "head":
        res = fit_head(train, val, n_classes, head_cfg, meta_fields)
        return Trained("head", res.model, head_cfg.to_dict(), res.best_epoch, len(res.history),
                       res.class_weights)
    if kind == "lgbm":
        model = fit_lgbm(train, val, n_classes, lgbm_cfg)
        return Trained("lgbm", model, lgbm_cfg.to_dict(), int(model.booster.best_iteration),
                       class_weights=balanced_class_weights(train[2], n_classes).tolist())
    raise ValueError(f"--model must be one of {MODELS}, got {kind!r}")


def _tta_note(model: str, tta: bool, image: np.ndarray) -> str:
    """What --tta did, for the report and the bundle."""
    if not tta:
        return "off"
    if image.ndim != 3:
        return "asked for, but the cache has no view embeddings: off"
    what = "probabilities" if model == "head" else "LightGBM probabilities"
    return f"{what} averaged over the original and {image.shape[1] - 1} cached view(s)"


def as_dataset(data: Dataset | pd.DataFrame) -> Dataset:
    """A validated table without its description is HAM10000's (older callers, tests)."""
    return data if isinstance(data, Dataset) else Dataset(data, HAM10000, HAM10000.classes)


@dataclass
class SplitFit:
    """One model fitted on one split's ``train`` rows, calibrated on ``val``, scored on ``test``."""
    trained: Trained
    encoder: MetadataEncoder
    calibrator: Calibrator
    threshold: float | None       # a binary task's decision threshold, chosen on val
    metrics: dict                 # on test: calibrated probabilities, the model's decisions
    test_logits: np.ndarray
    test_pred: np.ndarray         # decided class per test row
    meta_dim: int

    @property
    def temperature(self) -> float:
        return self.calibrator.temperature


def choose_threshold(y: np.ndarray, p_positive: np.ndarray) -> float:
    """The threshold on the positive probability that maximises balanced accuracy (on val)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p_positive)
    best = int(np.argmax(tpr - fpr))   # Youden's J = 2 * balanced accuracy - 1
    return float(min(thresholds[best], 1.0))


ENCODINGS = ("robust", "reference")


def make_encoder(data: Dataset, encoding: str = "robust") -> MetadataEncoder:
    """The dataset's metadata fields, with its own missing tokens, in ``encoding``."""
    tokens = {f: list(data.spec.missing_tokens) for f in data.spec.metadata} \
        if data.spec.missing_tokens else None
    return MetadataEncoder(data.spec.numeric, data.spec.categorical, encoding,
                           missing_tokens=tokens)


def fit_split(data: Dataset, image: np.ndarray, rows: dict[str, np.ndarray], *, model: str,
              head_cfg: HeadConfig, lgbm_cfg: LGBMConfig, tta: bool = False,
              calibrate: bool = True, select_on: str = "val", encoding: str = "robust",
              calibration: str = "logit_adjust") -> SplitFit:
    """Encode (fitted on ``rows["train"]``), train, calibrate on ``rows[select_on]``, score
    ``rows["test"]``: the whole of stage two for one split, shared by fit-head and cv.

    Scores use the calibrated probabilities (AUC, ECE) and the model's decisions: the balanced
    rule of the calibrator for a multi-class task, the threshold chosen on val for a binary one.
    """
    table, classes = data.table, data.classes
    encoder = make_encoder(data, encoding).fit(table.iloc[rows["train"]])
    meta = encoder.transform(table)
    y = table["label"].to_numpy()
    part = {s: (image[i], meta[i], y[i]) for s, i in rows.items()}
    select = part[select_on]
    trained = train_model(model, part["train"], select, len(classes), head_cfg, lgbm_cfg,
                          encoder.dropout_fields())
    select_logits = trained.logits(*select[:2], tta=tta)
    calibrator = Calibrator(calibration if calibrate else "temperature")
    if calibrate:
        calibrator.fit(select_logits, select[2], class_weights=trained.class_weights)
    threshold = choose_threshold(select[2] == 1, calibrator(select_logits)[:, 1]) \
        if data.task.binary else None
    test_logits = trained.logits(*part["test"][:2], tta=tta)
    proba = calibrator(test_logits)
    pred = calibrator.decide(proba, threshold)
    metrics = classification_metrics(part["test"][2], proba, classes, y_pred=pred)
    metrics["ece_uncalibrated"] = expected_calibration_error(part["test"][2], softmax(test_logits))
    metrics["classwise_calibration"] = classwise_calibration(part["test"][2], proba, classes)
    metrics["classwise_calibration_uncalibrated"] = classwise_calibration(
        part["test"][2], softmax(test_logits), classes)
    return SplitFit(trained, encoder, calibrator, threshold, metrics, test_logits, pred,
                    int(meta.shape[1]))


def prepare_split(table: pd.DataFrame, out: Path, kind: str, seed: int) -> tuple[pd.Series, str]:
    """Reuse ``out/splits.csv`` when it was made with this kind and seed, else make and save it;
    a saved split of another kind or seed is an error, never a silent reuse."""
    path = out / "splits.csv"
    if path.is_file():
        split, saved_kind, saved_seed = load_split(table, path)
        if saved_kind != kind or saved_seed != seed:
            raise ValueError(f"{path} holds a {saved_kind}-level split with seed {saved_seed}, "
                             f"but this run asks for {kind} with seed {seed}; use a new --out "
                             "folder (or the same --split and --seed)")
        return split, saved_kind
    split = assign_split(table, kind, seed=seed)
    save_split(table, split, path, kind, seed)
    return split, kind


def fit_run(data: Dataset | pd.DataFrame, cache_path: str | Path, out: str | Path, *,
            split: str = "lesion", seed: int = 42, select_on: str = "val", model: str = "head",
            head_cfg: HeadConfig | None = None, lgbm_cfg: LGBMConfig | None = None,
            tta: bool = False, calibrate: bool = True, encoding: str = "robust",
            calibration: str = "logit_adjust") -> dict:
    """Train one model on one split; write bundle, metrics.json, report.md and figures to ``out``."""
    from .report import write_run_report

    data = as_dataset(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head_cfg = head_cfg or (HeadConfig.reference(seed=seed) if encoding == "reference"
                            else HeadConfig(seed=seed))
    lgbm_cfg = lgbm_cfg or LGBMConfig(seed=seed)
    if select_on not in ("val", "test"):
        raise ValueError("--select-on must be 'val' or 'test'")
    if data.spec.evaluation_only:
        raise ValueError(f"{data.spec.name} is a test set: evaluate models on it, do not train")
    contents = read_cache(cache_path)
    table, image = align_embeddings(data.table, contents, str(cache_path))
    data = replace(data, table=table)
    sides, kind = prepare_split(table, out, split, seed)
    rows = {s: np.flatnonzero((sides == s).to_numpy()) for s in ("train", "val", "test")}
    fit = fit_split(data, image, rows, model=model, head_cfg=head_cfg, lgbm_cfg=lgbm_cfg, tta=tta,
                    calibrate=calibrate, select_on=select_on, encoding=encoding,
                    calibration=calibration)
    classes, y = list(data.classes), table["label"].to_numpy()
    baseline = majority_baseline(y[rows["train"]], y[rows["test"]], classes)
    info = {
        "model": model, "config": fit.trained.config, "best_epoch": fit.trained.best_epoch,
        "epochs_run": fit.trained.epochs_run,
        "split": kind, "protocol": protocol(kind, data.spec.group_name), "select_on": select_on,
        "seed": seed,
        "dataset": data.spec.name, "task": str(data.task), "classes": classes,
        "class_names": data.class_names, "group": data.spec.group_name,
        "fields": list(data.spec.metadata),
        "reference_recipe": data.spec.reference_recipe and not data.task.binary,
        "sizes": {s: int(len(r)) for s, r in rows.items()},
        "lesions": {s: int(table["lesion_id"].iloc[r].nunique()) for s, r in rows.items()},
        **contents.provenance(cache_path),
        "temperature": fit.temperature, "calibration": fit.calibrator.describe(),
        "threshold": fit.threshold, "tta": tta, "tta_models": _tta_note(model, tta, image),
        "encoding": fit.encoder.describe(), "skinfeat": __version__,
        "embed_dim": int(image.shape[-1]), "meta_features": fit.encoder.feature_names,
    }
    config = {"model_type": model, "classes": classes, "encoder": fit.encoder.to_dict(),
              "dataset": data.spec.to_dict(), "task": data.task.to_dict(),
              "backbone": contents.identity, "weights": info["weights"],
              "head": {**fit.trained.config, "embed_dim": int(image.shape[-1]),
                       "meta_dim": fit.meta_dim, "n_classes": len(classes)},
              "temperature": fit.temperature, "calibration": fit.calibrator.to_dict(),
              "threshold": fit.threshold, "tta": tta, "split": kind, "seed": seed,
              "skinfeat": __version__}
    if model == "head":
        save_bundle(out, config, state=fit.trained.model.state_dict())
    else:
        model_str, state = fit.trained.model.to_state()
        save_bundle(out, {**config, "lgbm": state}, lgbm_model=model_str)
    write_run_report(out, fit.metrics, baseline, info, y_true=y[rows["test"]],
                     logits=fit.test_logits, calibrator=fit.calibrator, y_pred=fit.test_pred,
                     groups=table["lesion_id"].to_numpy()[rows["test"]])
    return {"metrics": fit.metrics, "baseline": baseline, "info": info}
