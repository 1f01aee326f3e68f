"""The public Python API: dataset -> cache -> cross-validate / fit -> model -> predictions.

What a notebook user imports (``import skinfeat``); each function is the library call behind one
CLI command and returns a typed result instead of printing::

    import skinfeat
    data = skinfeat.load_dataset("data/ham10000")
    cache = skinfeat.extract(data, "cache/ham.h5")
    cv = skinfeat.cross_validate(data, cache, folds=5)
    cv.table                                   # one row per model x inputs, mean +- std
    fit = skinfeat.fit(data, cache, recipe=skinfeat.Recipe(seed=0))
    fit.metrics["balanced_accuracy"], fit.model.classes
    preds = fit.model.predict(embeddings=cache, metadata=data.table.head())
    preds.to_frame()

``out=None`` keeps a run out of the way: it is written to a temporary folder that lives as long
as the returned result (the workflows write their artifacts atomically, then read them back),
and is removed with it. Pass ``out`` to keep the run folder (report, figures, bundle).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .data.datasets import Dataset, load_dataset
from .data.spec import DatasetSpec, Task
from .deploy.predict import Predictions, Predictor
from .embed.backbone import DEFAULT_BACKBONE
from .embed.cache import CacheContents, read_cache
from .learn.runconfig import RunConfig
from .learn.sklearn import FusionHeadClassifier

Recipe = RunConfig   # the recipe of a stage-two run: model, split, encoding, head, lgbm, ...
PathLike = str | Path


@dataclass
class EmbeddingCache:
    """An HDF5 embedding cache on disk (stage one's output), read on first use."""
    path: Path
    _contents: CacheContents | None = field(default=None, repr=False)

    @property
    def contents(self) -> CacheContents:
        if self._contents is None:
            self._contents = read_cache(self.path)
        return self._contents

    @property
    def image_ids(self) -> list[str]:
        return list(self.contents.image_ids)

    @property
    def embeddings(self) -> np.ndarray:
        return self.contents.embeddings

    @property
    def identity(self) -> dict:
        return dict(self.contents.identity or {})

    def __len__(self) -> int:
        return len(self.contents.image_ids)


Caches = PathLike | EmbeddingCache | Sequence[PathLike | EmbeddingCache]


def _paths(caches: Caches) -> list[str]:
    """One cache or several (fused per image, in order) as file paths."""
    items = [caches] if isinstance(caches, (str, Path, EmbeddingCache)) else list(caches)
    if not items:
        raise ValueError("give at least one embedding cache")
    return [str(c.path if isinstance(c, EmbeddingCache) else c) for c in items]


def _dataset(data: Dataset | PathLike) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data, images=False)


class _RunFolder:
    """``out`` as a Path, or a temporary folder owned by the result (removed with it)."""

    def __init__(self, out: PathLike | None, prefix: str):
        self._tmp = tempfile.TemporaryDirectory(prefix=f"skinfeat-{prefix}-") if out is None \
            else None
        self.path = Path(self._tmp.name if self._tmp else out)


def extract(data: Dataset | PathLike, cache: PathLike, *, backbone: str = DEFAULT_BACKBONE,
            weights: str = "pretrained", weights_file: PathLike | None = None,
            precision: str = "auto", device: str = "auto", image_size: int | None = None,
            batch_size: int | None = None, num_workers: int | None = None,
            progress: Callable[[int], None] | None = None) -> EmbeddingCache:
    """Stage one: embed every image of ``data`` once into ``cache`` (resumable; images already
    cached are skipped). ``weights``: pretrained (timm / Hugging Face hub, or its local cache) or
    random (a smoke test); ``weights_file``: a local checkpoint instead."""
    from .embed.backbone import resolve_weights
    from .embed.extract import extract as run_extract

    data = data if isinstance(data, Dataset) else load_dataset(data)
    run_extract(data.table, cache, backbone=backbone,
                weights=resolve_weights(weights, str(weights_file) if weights_file else None),
                precision=precision, device=device, image_size=image_size,
                batch_size=batch_size, num_workers=num_workers, progress=progress)
    return EmbeddingCache(Path(cache))


@dataclass
class Model:
    """A trained stage-two model (a bundle): predict, evaluate, explain, export."""
    predictor: Predictor
    _owner: object = field(default=None, repr=False)   # keeps a temporary run folder alive

    @property
    def path(self) -> Path:
        return self.predictor.run

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def fields(self) -> tuple[str, ...]:
        """The metadata fields the model reads (others are ignored; absent ones are missing)."""
        return tuple(self.predictor.fields)

    def predict(self, images: Sequence[PathLike] | None = None, *,
                embeddings: Caches | None = None, metadata: pd.DataFrame | None = None,
                image_ids: Sequence[str] | None = None) -> Predictions:
        """Calibrated probabilities for raw ``images`` (file paths) or for cached
        ``embeddings`` (looked up by ``image_ids``, else by ``metadata['image_id']``), with the
        model's metadata fields as columns of ``metadata`` (one row per image, in order)."""
        if (images is None) == (embeddings is None):
            raise ValueError("give images (file paths) or embeddings (a cache), not both")
        table = pd.DataFrame(index=range(len(images) if images is not None else 0)) \
            if metadata is None else metadata.reset_index(drop=True).copy()
        if images is not None:
            if len(table) != len(images):
                raise ValueError(f"{len(images)} images but {len(table)} metadata rows")
            table["path"] = [str(p) for p in images]
            table["image_id"] = [Path(p).stem for p in images]
            return self.predictor.predict_table(table)
        if image_ids is not None:
            table = table.reindex(range(len(image_ids))) if metadata is None else table
            table["image_id"] = list(image_ids)
        elif "image_id" not in table:
            raise ValueError("give image_ids, or an image_id column in metadata")
        table["path"] = table["image_id"].astype(str)
        return self.predictor.predict_table(table, cache=_paths(embeddings))

    def evaluate(self, data: PathLike, *, embeddings: Caches | None = None,
                 out: PathLike | None = None, include_seen: bool = False) -> dict:
        """Score the model on another labelled set (a folder of any preset or a CSV); returns
        metrics, bootstrap intervals and the majority baseline (see ``skinfeat evaluate``)."""
        from .workflows.evaluate import evaluate_run

        folder = _RunFolder(out, "evaluate")
        return evaluate_run(self.path, data, folder.path, include_seen=include_seen,
                            cache=_paths(embeddings) if embeddings is not None else None)

    def explain(self, image: PathLike, metadata: dict | None = None, *,
                target: str | None = None, method: str | None = None):
        """Heatmap(s) and per-field metadata attribution for one raw image (needs the
        ``explain`` extra); ``skinfeat.deploy.explain.save_figure`` draws the result."""
        from .deploy.explain import Explainer

        return Explainer(self.predictor).explain(image, metadata, target=target, method=method)

    def export_onnx(self, path: PathLike, opset: int = 17) -> tuple[Path, Path]:
        """One ONNX graph (image + encoded metadata -> calibrated probabilities) and its JSON
        sidecar; needs the ``export`` extra."""
        from .deploy.export import export_onnx

        return export_onnx(self.predictor, path, opset=opset)


def load_model(path: PathLike, *, weights_file: PathLike | None = None,
               device: str = "auto") -> Model:
    """A run folder written by ``fit`` / ``fit-head`` (or a fold ensemble from ``cv
    --save-models``)."""
    return Model(Predictor(path, weights_file=weights_file, device=device))


@dataclass
class FitResult:
    model: Model
    metrics: dict                 # the scored part's metrics (see metrics.json)
    baseline: dict                # the majority-class baseline on the same rows
    info: dict                    # protocol, sizes, sources, calibration, ...
    out: Path                     # the run folder (temporary when ``out=None``)

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


def fit(data: Dataset | PathLike, caches: Caches, *, recipe: RunConfig | None = None,
        out: PathLike | None = None) -> FitResult:
    """Stage two on one split (``skinfeat fit-head``): train, calibrate on validation, score
    on the held-out test part (``recipe.split="none"``: every row trains)."""
    from .workflows.fit import fit_run

    recipe = recipe or RunConfig()
    recipe.check()
    folder = _RunFolder(out, "fit")
    res = fit_run(_dataset(data), _paths(caches), folder.path, split=recipe.split,
                  seed=recipe.seed, select_on=recipe.select_on, model=recipe.model,
                  head_cfg=recipe.head, lgbm_cfg=recipe.lgbm, tta=recipe.tta,
                  encoding=recipe.encoding, calibration=recipe.calibration,
                  test_size=recipe.test_size, val_size=recipe.val_size)
    model = Model(Predictor(folder.path), _owner=folder)
    return FitResult(model, res["metrics"], res["baseline"], res["info"], folder.path)


@dataclass
class CVResult:
    table: pd.DataFrame           # one row per model x inputs: mean and std of each metric
    fits: pd.DataFrame            # one row per fit: seed, fold, model, inputs, epoch, metrics
    folds: pd.DataFrame           # image_id, lesion_id, dx and each seed's fold of the image
    raw: dict                     # everything cv_metrics.json holds
    out: Path
    _owner: object = field(default=None, repr=False)

    @property
    def report_path(self) -> Path:
        return self.out / "cv_report.md"

    @property
    def models(self) -> dict[str, Model]:
        """The fold ensembles (``save_models=True``), by "MODEL_INPUTS"."""
        return {name: Model(Predictor(where), _owner=self._owner)
                for name, where in self.raw.get("models", {}).items()}


def cross_validate(data: Dataset | PathLike, caches: Caches, *, folds: int = 5,
                   models: Sequence[str] = ("head", "lgbm"),
                   inputs: Sequence[str] = ("image", "meta", "fused"),
                   recipe: RunConfig | None = None, seeds: Sequence[int] | None = None,
                   split: str = "lesion", jobs: int = 1, save_models: bool = False,
                   out: PathLike | None = None,
                   progress: Callable[[int], None] | None = None) -> CVResult:
    """Grouped k-fold CV of every model x input set on identical folds (``skinfeat cv``)."""
    from .learn.cv import CVConfig
    from .workflows.cv import cv_run

    recipe = recipe or RunConfig()
    cfg = CVConfig(folds=folds, split=split, seeds=tuple(seeds or (recipe.seed,)),
                   models=tuple(models), inputs=tuple(inputs), head=recipe.head,
                   lgbm=recipe.lgbm, tta=recipe.tta, encoding=recipe.encoding,
                   calibration=recipe.calibration)
    folder = _RunFolder(out, "cv")
    res = cv_run(_dataset(data), _paths(caches), folder.path, cfg, jobs=jobs, progress=progress,
                 save_models=save_models)
    headline = res["headline"]
    rows = [{"model": m, "inputs": i,
             **{f"{k}_{s}": e[k][s] for k in headline for s in ("mean", "std")}}
            for m, by_inputs in res["summary"].items() for i, e in by_inputs.items()]
    fits = pd.DataFrame([{**{k: r[k] for k in ("seed", "fold", "model", "inputs", "best_epoch")},
                          **{k: r["metrics"][k] for k in headline}} for r in res["records"]])
    return CVResult(pd.DataFrame(rows), fits, res["folds_table"], res, folder.path, folder)


def tune(data: Dataset | PathLike, caches: Caches, out: PathLike, *, trials: int = 50,
         folds: int = 5, recipe: RunConfig | None = None, storage: str | None = None,
         study_name: str = "skinfeat-tune", jobs: int = 1,
         progress: Callable[[int], None] | None = None) -> dict:
    """Optuna search over the head's settings, grouped CV per trial on the rows outside a held-
    out test part that scores the chosen recipe once (``skinfeat tune``; needs the ``tune``
    extra). Returns the best trial, the held-out score and ``out/best_config.json``."""
    from .learn.tune import TuneConfig
    from .workflows.tune import tune_run

    recipe = recipe or RunConfig()
    cfg = TuneConfig(trials=trials, folds=folds, seed=recipe.seed, storage=storage,
                     study_name=study_name, start=recipe, jobs=jobs)
    return tune_run(_dataset(data), _paths(caches), out, cfg, progress=progress)


__all__ = ["CVResult", "Dataset", "DatasetSpec", "EmbeddingCache", "FitResult",
           "FusionHeadClassifier", "Model", "Predictions", "Recipe", "RunConfig", "Task",
           "cross_validate", "extract", "fit",
           "load_dataset", "load_model", "tune"]
