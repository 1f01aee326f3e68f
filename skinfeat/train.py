"""Stage two for one split: cached embeddings + metadata -> trained bundle, metrics and report.

This is what ``skinfeat fit-head`` runs. The split is saved in the run folder and reused by every
later command on that run; the metadata encoder is fitted on training rows only; the epoch (or
boosting round) is chosen on ``val`` and the scores are computed on ``test`` unless the reference's
protocol is asked for explicitly (``select_on="test"``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .baseline import LGBMConfig, LGBMModel, fit_lgbm
from .bundle import save_bundle
from .cache import CacheContents, read_cache
from .calibration import fit_temperature
from .datasets import CLASSES
from .head import FusionHead, HeadConfig, fit_head, head_logits
from .metadata import MetadataEncoder
from .metrics import (classification_metrics, expected_calibration_error, majority_baseline,
                      softmax)
from .splits import PROTOCOLS, assign_split, load_split, save_split

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


def meta_field_slices(encoder: MetadataEncoder) -> list[tuple[int, int]]:
    """Column ranges of each metadata field in the encoded matrix (for field dropout)."""
    slices, start = [], 0
    for col in encoder.numeric:
        slices.append((start, start + 1))
        start += 1
    for col in encoder.categorical:
        width = len(encoder.kept_categories(col))
        slices.append((start, start + width))
        start += width
    return slices


@dataclass
class Trained:
    """A fitted stage-two model with one way to get logits, whatever its kind."""
    kind: str
    model: FusionHead | LGBMModel
    config: dict
    best_epoch: int | None = None
    epochs_run: int | None = None

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        if self.kind == "head":
            return head_logits(self.model, image, meta, tta=tta)
        return np.log(np.clip(self.model.predict_proba(image, meta), 1e-12, None))


def train_model(kind: str, train: tuple, val: tuple, n_classes: int,
                head_cfg: HeadConfig, lgbm_cfg: LGBMConfig,
                meta_fields: list[tuple[int, int]] | None = None) -> Trained:
    if kind == "head":
        res = fit_head(train, val, n_classes, head_cfg, meta_fields)
        return Trained("head", res.model, head_cfg.to_dict(), res.best_epoch, len(res.history))
    if kind == "lgbm":
        model = fit_lgbm(train, val, n_classes, lgbm_cfg)
        return Trained("lgbm", model, lgbm_cfg.to_dict(), int(model.booster.best_iteration))
    raise ValueError(f"--model must be one of {MODELS}, got {kind!r}")


def prepare_split(table: pd.DataFrame, out: Path, kind: str, seed: int) -> tuple[pd.Series, str]:
    """Reuse ``out/splits.csv`` when it exists, else make and save the split."""
    path = out / "splits.csv"
    if path.is_file():
        split, saved_kind = load_split(table, path)
        if saved_kind != kind:
            log.warning("%s holds a %s-level split; reusing it (asked for %s)", path, saved_kind, kind)
        return split, saved_kind
    split = assign_split(table, kind, seed=seed)
    save_split(table, split, path, kind, seed)
    return split, kind


def fit_run(table: pd.DataFrame, cache_path: str | Path, out: str | Path, *, split: str = "lesion",
            seed: int = 42, select_on: str = "val", model: str = "head",
            head_cfg: HeadConfig | None = None, lgbm_cfg: LGBMConfig | None = None,
            tta: bool = False, calibrate: bool = True) -> dict:
    """Train one model on one split; write bundle, metrics.json, report.md and figures to ``out``."""
    from .report import write_run_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head_cfg = head_cfg or HeadConfig(seed=seed)
    lgbm_cfg = lgbm_cfg or LGBMConfig(seed=seed)
    if select_on not in ("val", "test"):
        raise ValueError("--select-on must be 'val' or 'test'")
    contents = read_cache(cache_path)
    table, image = align_embeddings(table, contents, str(cache_path))
    sides, kind = prepare_split(table, out, split, seed)
    masks = {s: (sides == s).to_numpy() for s in ("train", "val", "test")}
    encoder = MetadataEncoder().fit(table[masks["train"]])
    meta = encoder.transform(table)
    y = table["label"].to_numpy()
    part = {s: (image[m], meta[m], y[m]) for s, m in masks.items()}
    select = part[select_on]
    trained = train_model(model, part["train"], select, len(CLASSES), head_cfg, lgbm_cfg,
                          meta_field_slices(encoder))
    temperature = 1.0
    if calibrate:
        temperature = fit_temperature(trained.logits(*select[:2], tta=tta), select[2])
    test_logits = trained.logits(*part["test"][:2], tta=tta)
    metrics = classification_metrics(part["test"][2], softmax(test_logits, temperature), CLASSES)
    metrics["ece_uncalibrated"] = expected_calibration_error(part["test"][2], softmax(test_logits))
    baseline = majority_baseline(part["train"][2], part["test"][2], CLASSES)
    info = {
        "model": model, "config": trained.config, "best_epoch": trained.best_epoch,
        "epochs_run": trained.epochs_run,
        "split": kind, "protocol": PROTOCOLS[kind], "select_on": select_on, "seed": seed,
        "sizes": {s: int(m.sum()) for s, m in masks.items()},
        "lesions": {s: int(table.loc[m, "lesion_id"].nunique()) for s, m in masks.items()},
        **contents.provenance(cache_path),
        "temperature": temperature, "tta": tta, "skinfeat": __version__,
        "embed_dim": int(image.shape[-1]), "meta_features": encoder.feature_names,
    }
    config = {"model_type": model, "classes": list(CLASSES), "encoder": encoder.to_dict(),
              "backbone": contents.identity, "weights": info["weights"],
              "head": {**trained.config, "embed_dim": int(image.shape[-1]),
                       "meta_dim": int(meta.shape[1]), "n_classes": len(CLASSES)},
              "temperature": temperature, "tta": tta, "split": kind, "skinfeat": __version__}
    if model == "head":
        save_bundle(out, config, state=trained.model.state_dict())
    else:
        model_str, state = trained.model.to_state()
        save_bundle(out, {**config, "lgbm": state}, lgbm_model=model_str)
    write_run_report(out, metrics, baseline, info, y_true=part["test"][2],
                     logits=test_logits, temperature=temperature)
    return {"metrics": metrics, "baseline": baseline, "info": info}
