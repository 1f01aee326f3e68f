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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .data.datasets import Dataset, load_dataset
from .data.spec import DatasetSpec, Task  # noqa: F401  (public: in __all__, from PUBLIC)
from .deploy.decision import Decision, calibration_text
from .embed.backbone import DEFAULT_BACKBONE
from .errors import InputError, SkinfeatError  # noqa: F401  (SkinfeatError: public)
from .public import PUBLIC

if TYPE_CHECKING:   # names of the annotations; at run time they load lazily (_LAZY)
    from .deploy.explain import Explanation
    from .deploy.predict import Predictions, Predictor
    from .embed.cache import CacheContents
    from .embed.extract import ExtractResult
    from .learn.runconfig import RunConfig
    from .learn.sklearn import FusionHeadClassifier  # noqa: F401
    from .workflows.audit import AuditResult
    from .workflows.summary import RunSummary

PathLike = str | Path

# Imported on first use: the CLI imports this module to build its options, and these pull in
# SciPy, scikit-learn and the deploy layer (seconds) that --help never needs. ``Recipe`` is
# ``RunConfig``, the recipe of a stage-two run (model, split, encoding, head, lgbm, ...).
_LAZY = {"RunConfig": ("learn.runconfig", "RunConfig"),
         "Recipe": ("learn.runconfig", "RunConfig"),
         "HeadConfig": ("learn.head", "HeadConfig"),
         "LGBMConfig": ("learn.baseline", "LGBMConfig"),
         "LinearConfig": ("learn.linear", "LinearConfig"),
         "StageTwoModel": ("learn.protocol", "StageTwoModel"),
         "register_model": ("learn.models", "register"),
         "model_names": ("learn.models", "model_names"),
         "Predictions": ("deploy.predict", "Predictions"),
         "Predictor": ("deploy.predict", "Predictor"),
         "ExplainError": ("deploy.explain", "ExplainError"),
         "RunSummary": ("workflows.summary", "RunSummary"),
         "CacheContents": ("embed.cache", "CacheContents"),
         "FusionHeadClassifier": ("learn.sklearn", "FusionHeadClassifier"),
         "AuditResult": ("workflows.audit", "AuditResult")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class EmbeddingCache:
    """An HDF5 embedding cache on disk (stage one's output), read on first use."""
    path: Path
    _contents: CacheContents | None = field(default=None, repr=False)
    run: ExtractResult | None = field(default=None, repr=False)   # extract's counts, failures

    @property
    def contents(self) -> CacheContents:
        if self._contents is None:
            from .embed.cache import read_cache

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


def _paths(caches: Caches, name: str = "caches") -> list[str]:
    """One cache or several (fused per image, in order) as file paths."""
    from .deploy.inputs import cache_paths

    return cache_paths(caches, name)


def _dataset(data: Dataset | PathLike) -> Dataset:
    from .deploy.inputs import dataset_or_path

    return dataset_or_path(data)


def _recipe(recipe: RunConfig | None) -> RunConfig:
    from .deploy.inputs import recipe_or_default

    return recipe_or_default(recipe)


class _RunFolder:
    """``out`` as a Path, or a temporary folder owned by the result (removed with it)."""

    def __init__(self, out: PathLike | None, prefix: str):
        self._tmp = tempfile.TemporaryDirectory(prefix=f"skinfeat-{prefix}-") if out is None \
            else None
        self.path = Path(self._tmp.name if self._tmp else out)  # type: ignore[arg-type]  # out set


def extract(data: Dataset | PathLike, cache: PathLike, *, backbone: str = DEFAULT_BACKBONE,
            weights: str = "pretrained", weights_file: PathLike | None = None,
            precision: str = "auto", device: str = "auto", image_size: int | str | None = None,
            batch_size: int | None = None, num_workers: int | None = None,
            resize: str = "squash", views: str = "none", shard: tuple[int, int] | None = None,
            compile: str = "auto", calibration_images: int | None = None,
            pool: str | None = None, layers: str = "last", average_views: str = "none",
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int, int], None] | None = None) -> EmbeddingCache:
    """Stage one: embed every image of ``data`` once into ``cache`` (resumable; images already
    cached are skipped). ``weights``: pretrained (timm / Hugging Face hub, or its local cache) or
    random (a smoke test); ``weights_file``: a local checkpoint instead. ``views``: none, flip,
    rot90 or all (embeddings of flipped / rotated copies too); ``shard=(i, n)``: only shard
    ``i`` of ``n``; ``pool``: the family's pooling (timm avg, gem, avgmax; open_clip proj, cls,
    mean; hf cls, mean; None: the family's default); ``layers``: last, last2 or last3 stages
    pooled and concatenated (timm, hf); ``image_size``: pixels, ``train`` (the encoder's
    training size, the default) or ``test`` (timm's ``test_input_size``); ``average_views``:
    none, flip, rot90 or all, views averaged into the one stored embedding. Every option is in
    the cache identity. The result's ``run`` holds this run's counts and failures."""
    from .embed.extract import CALIBRATION_IMAGES, VIEW_PRESETS
    from .embed.extract import extract as run_extract
    from .embed.weights import resolve_weights

    data = data if isinstance(data, Dataset) else load_dataset(data)
    res = run_extract(data.table, cache, backbone=backbone,
                      weights=resolve_weights(weights, str(weights_file) if weights_file
                                              else None),
                      precision=precision, device=device, image_size=image_size,
                      batch_size=batch_size, num_workers=num_workers, resize=resize,
                      views=VIEW_PRESETS[views], shard=shard, compile=compile, pool=pool,
                      layers=layers, average_views=VIEW_PRESETS[average_views],
                      calibration_images=CALIBRATION_IMAGES if calibration_images is None
                      else calibration_images,
                      progress=progress, on_start=on_start)
    return EmbeddingCache(Path(cache), res.contents, res)


def backbones() -> tuple[list[dict], dict[str, str | None]]:
    """The recommended encoders (backbone, family, width, input_size, licence, weights,
    installed) and each encoder family's installed version (None: not installed)."""
    from .embed.encoders import installed_families, list_backbones

    return list_backbones(), installed_families()


def open_cache(path: PathLike) -> EmbeddingCache:
    """An embedding cache file (any HDF5 file with image_id and embedding), read now: a file
    that is not one fails here, naming it."""
    out = EmbeddingCache(Path(path))
    _ = out.contents   # read now, so that a bad file fails here
    return out


def merge_caches(inputs: Sequence[PathLike], out: PathLike, *,
                 overwrite: bool = False) -> EmbeddingCache:
    """Shard caches of one identity merged into ``out`` (an image in several is kept once when
    its embeddings agree); an existing ``out`` is refused unless ``overwrite``."""
    from .embed.cache import merge_caches as merge

    return EmbeddingCache(Path(out), merge([str(p) for p in inputs], out, overwrite))


def weights_location(backbone: str = DEFAULT_BACKBONE) -> tuple[str | None, bool]:
    """Where ``backbone``'s pretrained weights come from (a Hugging Face hub repo, or None when
    timm knows none) and whether they are cached on this machine."""
    from .embed.weights import pretrained_location

    return pretrained_location(backbone)


def check_dataset(data: Dataset | PathLike) -> dict:
    """A data set's summary (``skinfeat data check``): preset, task, images and groups per
    class, images per group, the missing values of every metadata field."""
    from .data.datasets import summarize

    return summarize(_dataset(data))


def unpack(root: PathLike) -> list[tuple[Path, Path]]:
    """Extract the dataset zips in ``root`` in place: (zip, folder) per archive; none is an
    error."""
    from .data.download import unpack_zip

    zips = sorted(Path(root).glob("*.zip"))
    if not zips:
        raise InputError(f"{root}: no .zip files to unpack")
    return [(z, unpack_zip(z, Path(root))) for z in zips]


def download_ham10000(dest: PathLike, *, with_isic2018_test: bool = False,
                      progress: Callable[[str, int, int | None], None] | None = None) -> Path:
    """HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T), resumable and checksummed;
    ``progress(file, done, total)`` as it goes."""
    from .data.download import download_ham10000 as fetch

    return fetch(Path(dest), with_isic2018_test=with_isic2018_test, progress=progress)


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

    @property
    def members(self) -> int:
        """Members of a fold ensemble (0: a single model)."""
        return len(self.predictor.members)

    @property
    def random_weights(self) -> bool:
        """Was the backbone randomly initialised (a smoke test: no clinical meaning)?"""
        return bool(self.predictor.random_weights)

    def random_note(self, whole: str = "these probabilities mean nothing clinically.") -> str:
        """What had random weights, in one line: the whole model (``RANDOM backbone weights:
        {whole}``) or only the fused sources that were random, by name; "" for real weights."""
        return self.predictor.random_note(whole)

    def predict_image(self, image: PathLike, meta: Sequence[str] = (), *,
                      embeddings: Caches | None = None) -> ImagePrediction:
        """One image (with ``embeddings``: its id is the file name's stem, the file need not
        exist) and ``FIELD=VALUE`` metadata pairs; a field not given is missing."""
        from .deploy.predict import parse_meta

        p = self.predictor
        values = parse_meta(list(meta), p.spec)
        scored = p.score_image(image, values,
                               cache=_paths(embeddings) if embeddings is not None else None)
        proba = np.asarray(scored.proba[0], dtype=float)
        decision = scored.decisions()[0]   # the fallback's, if it scored
        return ImagePrediction(
            str(image), decision.decision,
            dict(zip(p.classes, map(float, proba), strict=False)), values,
            [f for f, n in scored.missing.items() if n], decision.rule, calibration_text(p),
            {c: p.spec.class_names.get(c, "") for c in p.classes}, p.temperature,
            p.threshold, p.weights)

    def predict_csv(self, csv: PathLike, output: PathLike, *, embeddings: Caches | None = None,
                    progress: Callable[[int], None] | None = None,
                    on_start: Callable[[int], None] | None = None) -> Predictions:
        """A CSV of images (column image: a path, or image_id; with ``embeddings``, ids of
        cached rows) with metadata columns; the predictions are written to ``output``."""
        from .data.datasets import load_images
        from .deploy.predict import save_predictions

        table = load_images(csv, self.predictor.spec, files=embeddings is None)
        if on_start:
            on_start(len(table))
        preds = self.predictor.predict_table(
            table, progress=progress, source=csv,
            cache=_paths(embeddings) if embeddings is not None else None)
        save_predictions(preds, output)
        return preds

    def predict(self, images: Sequence[PathLike] | None = None, *,
                embeddings: Caches | None = None, metadata: pd.DataFrame | None = None,
                image_ids: Sequence[str] | None = None) -> Predictions:
        """Calibrated probabilities for raw ``images`` (a file path or a list of them), for
        cached ``embeddings`` (a cache; rows looked up by ``image_ids``, else by
        ``metadata['image_id']``) or for an in-memory (N, D) array of ``embeddings`` aligned
        with the ``metadata`` rows, with the model's metadata fields as columns of
        ``metadata`` (a DataFrame, one row per image, in order)."""
        from .deploy.inputs import prediction_table

        table, where = prediction_table(self.predictor, images, embeddings, metadata, image_ids)
        return self.predictor.predict_table(table, **where)

    def evaluate(self, data: PathLike, *, embeddings: Caches | None = None,
                 out: PathLike | None = None, include_seen: bool = False) -> EvaluationResult:
        """Score the model on another labelled set (a folder of any preset or a CSV): metrics,
        bootstrap intervals and the majority baseline (``evaluate_model``; ``out=None``: a
        temporary report folder owned by the result)."""
        folder = _RunFolder(out, "evaluate")
        res = evaluate_model(self, data, folder.path, include_seen=include_seen,
                             embeddings=embeddings)
        res._owner = folder
        return res

    def explain(self, image: PathLike, metadata: dict | None = None, *,
                target: str | None = None, method: str | None = None):
        """Heatmap(s) and per-field metadata attribution for one raw image (needs the
        ``explain`` extra); ``skinfeat.deploy.explain.save_figure`` draws the result."""
        from .deploy.explain import Explainer

        return Explainer(self.predictor).explain(image, metadata, target=target, method=method)

    def explain_to(self, out: PathLike, *, image: PathLike | None = None,
                   csv: PathLike | None = None, meta: Sequence[str] = (),
                   target: str | None = None,
                   method: str | None = None) -> list[tuple[Path, Explanation]]:
        """One PNG and its JSON (the decision fields, probabilities, attribution) per image in
        ``out`` (one ``image`` with ``FIELD=VALUE`` ``meta``, or a ``csv`` with metadata
        columns): (PNG, the explanation) per image."""
        from .data.datasets import load_images
        from .deploy.explain import Explainer, save_figure, save_json
        from .deploy.predict import parse_meta

        p = self.predictor
        ex = Explainer(p)
        if image is not None:
            jobs = [(image, Path(image).stem, parse_meta(list(meta), p.spec))]
        else:
            table = load_images(csv, p.spec)
            jobs = [(row["path"], row["image_id"], {f: row[f] for f in ex.fields if f in row})
                    for _, row in table.iterrows()]
        made = []
        for path, name, values in jobs:
            res = ex.explain(path, values, target=target, method=method)
            png = save_figure(res, Path(out) / f"{_safe_stem(name)}.png", p.weights,
                              p.random_note("meaningless clinically."))
            save_json(res, png.with_suffix(".json"))
            made.append((png, res))
        return made

    def export_onnx(self, path: PathLike, opset: int = 17) -> tuple[Path, Path]:
        """One ONNX graph (image + encoded metadata -> calibrated probabilities) and its JSON
        sidecar; needs the ``export`` extra."""
        from .deploy.export import export_onnx

        return export_onnx(self.predictor, path, opset=opset)


def _safe_stem(name: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem) or "image"


@dataclass
class ImagePrediction:
    """One image's calibrated probabilities and the model's decision."""
    image: str
    prediction: str                  # the decided class
    probabilities: dict[str, float]  # calibrated, by class
    metadata: dict[str, str]         # the values given
    missing: list[str]               # the model's fields that were missing
    rule: str                        # the decision rule in words
    calibration: str                 # the calibrator in words
    class_names: dict[str, str]
    temperature: float
    threshold: float | None
    weights: str

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    @property
    def decision(self) -> Decision:
        """The decision fields shown everywhere (``deploy.decision``)."""
        top, p = self.ranked()[0]
        return Decision(top, p, self.prediction, self.rule)


def load_model(path: PathLike, *, weights_file: PathLike | None = None, device: str = "auto",
               batch_size: int = 32, num_workers: int = 0) -> Model:
    """A run folder written by ``fit`` / ``fit-head`` (or a fold ensemble from ``cv
    --save-models``), or a Hugging Face Hub repo id (``org/name``, ``org/name@revision``) holding
    one, fetched through the Hub's cache (``deploy.hub``)."""
    from .deploy.hub import bundle_folder
    from .deploy.predict import Predictor

    return Model(Predictor(bundle_folder(path), weights_file=weights_file, device=device,
                           batch_size=batch_size, num_workers=num_workers))


@dataclass
class FitResult:
    model: Model
    metrics: dict                 # the scored part's metrics (see metrics.json)
    baseline: dict                # the majority-class baseline on the same rows
    info: RunSummary              # protocol, sizes, sources, calibration, ... (typed)
    out: Path                     # the run folder (temporary when ``out=None``)

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


def fit(data: Dataset | PathLike, caches: Caches, *, recipe: RunConfig | None = None,
        out: PathLike | None = None,
        subgroups: str | Sequence[str] | None = None) -> FitResult:
    """Stage two on one split (``skinfeat fit-head``): train, calibrate on validation, score
    on the held-out test part (``recipe.split="none"``: every row trains; ``"by:COLUMN=VALUE"``:
    that value is the test part). ``subgroups``: the fields of the report's subgroup tables
    (None: the default ones, "none": no tables)."""
    from .workflows.fit import fit_run

    recipe = _recipe(recipe).check()
    folder = _RunFolder(out, "fit")
    res = fit_run(_dataset(data), _paths(caches), folder.path, recipe, subgroups=subgroups)
    from .deploy.predict import Predictor

    model = Model(Predictor(folder.path), _owner=folder)
    return FitResult(model, res["metrics"], res["baseline"], res["info"], folder.path)


@dataclass
class CVResult:
    table: pd.DataFrame           # one row per model x inputs: mean and std of each metric
    fits: pd.DataFrame            # one row per fit: seed, fold, model, inputs, epoch, metrics
    folds: pd.DataFrame           # image_id, group_id, dx and each seed's fold of the image
    oof: pd.DataFrame             # out-of-fold predictions (oof_predictions.csv): one row per
                                  # image x seed x model x inputs, p_CLASS columns, decision
    raw: dict                     # everything cv_metrics.json holds
    out: Path
    _owner: object = field(default=None, repr=False)

    @property
    def report_path(self) -> Path:
        return self.out / "cv_report.md"

    @property
    def models(self) -> dict[str, Model]:
        """The fold ensembles (``save_models=True``), by "MODEL_INPUTS"."""
        from .deploy.predict import Predictor

        return {name: Model(Predictor(where), _owner=self._owner)
                for name, where in self.raw.get("models", {}).items()}


def cross_validate(data: Dataset | PathLike, caches: Caches, *, folds: int = 5,
                   models: Sequence[str] = ("head", "lgbm"),
                   inputs: Sequence[str] | None = None,
                   recipe: RunConfig | None = None, params: dict | None = None,
                   seeds: Sequence[int] | None = None,
                   split: str = "group", jobs: int = 1, save_models: bool = False,
                   out: PathLike | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_start: Callable[[int], None] | None = None,
                   subgroups: str | Sequence[str] | None = None) -> CVResult:
    """Grouped k-fold CV of every model x input set on identical folds (``skinfeat cv``), each
    fit by ``recipe``; ``params``: each model's config by kind (a model not there: the
    recipe's own if it is the recipe's model, else its defaults); ``inputs=None``: every set
    the data has (image, meta, fused; a set without metadata fields: image). Writes
    ``oof_predictions.csv`` (``CVResult.oof``).
    ``split``: lesion, image or ``by:COLUMN`` (each value one fold); ``subgroups``: the fields
    of the out-of-fold subgroup tables (None: the default ones, "none": no tables)."""
    from .learn.cv import CVConfig
    from .workflows.cv import cv_run

    recipe = _recipe(recipe)
    cfg = CVConfig(folds=folds, split=split, seeds=tuple(seeds or (recipe.seed,)),
                   models=tuple(models), inputs=tuple(inputs) if inputs else None,
                   recipe=recipe, params=dict(params or {}))
    folder = _RunFolder(out, "cv")
    res = cv_run(_dataset(data), _paths(caches), folder.path, cfg, jobs=jobs, progress=progress,
                 on_start=on_start, save_models=save_models, subgroups=subgroups)
    headline = res["headline"]
    rows = [{"model": m, "inputs": i,
             **{f"{k}_{s}": e[k][s] for k in headline for s in ("mean", "std")}}
            for m, by_inputs in res["summary"].items() for i, e in by_inputs.items()]
    fits = pd.DataFrame([{**{k: r[k] for k in ("seed", "fold", "model", "inputs", "best_epoch")},
                          **{k: r["metrics"][k] for k in headline}} for r in res["records"]])
    return CVResult(pd.DataFrame(rows), fits, res["folds_table"], res["oof"], res, folder.path,
                    folder)


def tune(data: Dataset | PathLike, caches: Caches, out: PathLike, *, trials: int = 50,
         folds: int = 5, recipe: RunConfig | None = None, storage: str | None = None,
         study_name: str = "skinfeat-tune", jobs: int = 1, test_size: float = 0.2,
         split: str = "group", metric: str | None = None, prune: bool = True,
         progress: Callable[[int], None] | None = None) -> dict:
    """Optuna search over the head's settings, grouped CV per trial on the rows outside a held-
    out test part that scores the chosen recipe once (``skinfeat tune``; needs the ``tune``
    extra). Trials are ranked by ``metric`` (None: balanced_accuracy, or auc when binary;
    pauc80 and auc need a binary task); ``prune`` stops trials whose validation loss trails the
    median at the same epoch. Returns the best trial, the held-out score and
    ``out/best_config.json``."""
    from .learn.tune import TuneConfig
    from .workflows.tune import tune_run

    recipe = _recipe(recipe)
    cfg = TuneConfig(trials=trials, folds=folds, test_size=test_size, split=split,
                     storage=storage, study_name=study_name, start=recipe, jobs=jobs,
                     metric=metric, prune=prune)
    return tune_run(_dataset(data), _paths(caches), out, cfg, progress=progress)


def make_recipe(config: PathLike | None = None, *, run: dict | None = None,
                head: dict | None = None, lgbm: dict | None = None) -> RunConfig:
    """Defaults < the ``config`` file (JSON or TOML: a run's config.json, a tune result, a
    hand-written one) < the given values (None: not given), every key typed and checked. With
    ``run["encoding"] == "reference"`` and no file, the head starts from the reference head's
    defaults. ``head`` / ``lgbm``: model settings, each applied to the recipe's model config
    where it has that field; the model takes the recipe's seed."""
    from dataclasses import replace

    from .learn.models import model_class
    from .learn.runconfig import RunConfig, merge, read_config_file

    run = run or {}
    base = read_config_file(config) if config else RunConfig()
    if not config and run.get("encoding") == "reference":   # the model's reference defaults
        kind = run.get("model") or base.model
        config_class = model_class(kind).config_class
        if hasattr(config_class, "reference"):
            base = replace(base, model=kind, params=config_class.reference())
    return merge(base, run, head or {}, lgbm or {})


def model_configs(models: Sequence[str], recipe: RunConfig, config: PathLike | None = None, *,
                  head: dict | None = None, lgbm: dict | None = None) -> dict:
    """Each model's config for a run of several (``cross_validate``'s ``params``): the
    recipe's own for its model, else the ``config`` file's table of it, else its defaults;
    ``head`` / ``lgbm`` settings applied where a config has the field."""
    from .learn.runconfig import model_params, read_model_tables

    tables = read_model_tables(config) if config else None
    return model_params(models, recipe, head or {}, lgbm or {}, tables=tables)


@dataclass
class EvaluationResult:
    metrics: dict                 # on the scored rows (see evaluate_metrics.json)
    bootstrap_ci95: dict          # group bootstrap intervals
    majority_baseline: dict | None
    info: dict                    # data, layout, n, coverage, overlap with training, ...
    out: Path                     # the report folder
    _owner: object = field(default=None, repr=False)   # keeps a temporary folder alive

    @property
    def report_path(self) -> Path:
        return self.out / "evaluate_report.md"


def evaluate_model(model: Model | PathLike, data: PathLike, out: PathLike | None = None, *,
                   preset: str = "auto", spec: PathLike | None = None,
                   columns: dict | None = None, weights_file: PathLike | None = None,
                   device: str = "auto", batch_size: int = 32, num_workers: int = 0,
                   include_seen: bool = False, embeddings: Caches | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_start: Callable[[int], None] | None = None,
                   subgroups: str | Sequence[str] | None = None) -> EvaluationResult:
    """Score a trained model (a run folder or a ``Model``) on another labelled set, read as
    the model's task (``skinfeat evaluate``); ``out=None``: ``MODEL/eval-<data name>``. (Not
    ``evaluate``: ``skinfeat.evaluate`` is the metrics and reports subpackage.) ``subgroups``:
    the fields of the subgroup tables (None: the scored set's default ones, "none": none);
    ``write_card(model)`` then shows the evaluation in the model card."""
    from .workflows.evaluate import evaluate_run

    run = model.path if isinstance(model, Model) else Path(model)
    res = evaluate_run(run, data, out, layout=preset, spec=spec, columns=columns,
                       weights_file=weights_file, device=device, batch_size=batch_size,
                       num_workers=num_workers, include_seen=include_seen,
                       cache=_paths(embeddings) if embeddings is not None else None,
                       progress=progress, on_start=on_start, subgroups=subgroups)
    return EvaluationResult(res["metrics"], res["bootstrap_ci95"], res["majority_baseline"],
                            res["info"], Path(res["out"]))


def write_card(run: Model | PathLike) -> Path:
    """Rewrite a fit-head run's model card (README.md) from its metrics.json (with its subgroup
    tables) and every ``eval-*`` evaluation in the run folder (``skinfeat card``); returns its
    path."""
    from .evaluate.card import rewrite_card

    return rewrite_card(run.path if isinstance(run, Model) else Path(run))


def serve(model: Model, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = 20_000_000, top_k: int = 3) -> None:
    """The local web page and JSON API for ``model`` (needs the ``serve`` extra); blocks."""
    import uvicorn

    from .deploy.serve import create_app

    app = create_app(model.predictor, max_upload_bytes=max_upload_bytes, top_k=top_k)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def run_demo(out: PathLike, *, n_images: int = 1000, backbone: str = DEFAULT_BACKBONE,
             weights: str = "auto", precision: str = "auto",
             echo: Callable[[str], None] = print, progress: Callable | None = None) -> dict:
    """Synthetic HAM10000-layout data -> extract -> fit-head -> report, offline (``skinfeat
    demo``); returns fit_run's result (``info`` a ``RunSummary``)."""
    from .demo import run_demo as demo_run

    return demo_run(Path(out), n_images=n_images, backbone=backbone, weights=weights,
                    precision=precision, echo=echo, progress=progress)




@dataclass
class CompareResult:
    table: pd.DataFrame           # one row per entry (cache x model [x inputs]): mean and std
                                  # over folds of each headline metric, the pooled out-of-fold
                                  # metric, and diff / diff_low / diff_high / p_value /
                                  # within_noise against the first entry
    metric: str                   # the metric the differences are in
    reference: str                # the first entry, which the others are paired against
    raw: dict                     # everything compare.json holds
    out: Path
    _owner: object = field(default=None, repr=False)

    @property
    def report_path(self) -> Path:
        return self.out / "compare_report.md"

    def difference(self, entry: str) -> dict:
        """One entry's paired difference against the reference (diff, low, high, p, noise)."""
        row = self.table.set_index("entry").loc[entry]
        return {"diff": float(row["diff"]), "low": float(row["diff_low"]),
                "high": float(row["diff_high"]), "p_value": float(row["p_value"]),
                "within_noise": bool(row["within_noise"])}


def compare(data: Dataset | PathLike, caches: Caches, *,
            models: Sequence[str] = ("linear",), inputs: str = "image", folds: int = 5,
            metric: str = "balanced_accuracy", recipe: RunConfig | None = None,
            params: dict | None = None,
            seeds: Sequence[int] | None = None, split: str = "group", n_boot: int = 2000,
            jobs: int = 1, out: PathLike | None = None,
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> CompareResult:
    """Encoders (one cache each, not fused) and / or models on identical grouped folds
    (``skinfeat compare``): cv per cache, then the paired group-bootstrap difference of each
    entry against the first in ``metric`` (balanced_accuracy; auc or pauc80 when binary)."""
    from .learn.cv import CVConfig
    from .workflows.compare import compare_run

    recipe = _recipe(recipe)
    cfg = CVConfig(folds=folds, split=split, seeds=tuple(seeds or (recipe.seed,)),
                   models=tuple(models), inputs=(inputs,), recipe=recipe,
                   params=dict(params or {}))
    folder = _RunFolder(out, "compare")
    res = compare_run(_dataset(data), _paths(caches), folder.path, cfg, metric=metric,
                      n_boot=n_boot, jobs=jobs, progress=progress, on_start=on_start)
    return CompareResult(res["table"], metric, res["reference"], res, folder.path, folder)


def _dataset_with_images(data: Dataset | PathLike) -> Dataset:
    """The data set with its image files when they are there (the audit's perceptual hashes
    and contact sheets use them), else its tables alone."""
    from .data.datasets import DataError

    if isinstance(data, Dataset):
        return data
    try:
        return load_dataset(data)
    except DataError:
        return load_dataset(data, images=False)


def audit(data: Dataset | PathLike, cache: PathLike, *, against: Dataset | PathLike | None = None,
          against_cache: PathLike | None = None, out: PathLike | None = None,
          threshold: float | None = None, oof: PathLike | None = None, labels: bool = True,
          duplicates: bool = True, outliers: bool = True, top: int = 50,
          method: str = "auto") -> AuditResult:
    """Audit a data set from its cached embeddings (``skinfeat audit``): near-duplicate pairs
    (cosine >= ``threshold``, default calibrated: docs/audit.md) classified as same group,
    different groups, conflicting labels or (with ``against`` + ``against_cache``, another set)
    across sets; label issues from ``oof`` (cv's oof_predictions.csv) or a quick linear-probe
    cv; k-NN outliers. Writes the audit folder (``out``; None: temporary) and returns an
    ``AuditResult``; nothing in the data set is changed. ``method``: auto (exact up to 150k
    rows, then faiss), exact or approximate."""
    import dataclasses

    from .workflows.audit import DEFAULT_THRESHOLD, run_audit

    folder = _RunFolder(out, "audit")
    res = run_audit(_dataset_with_images(data), Path(cache), folder.path,
                    against=None if against is None else _dataset_with_images(against),
                    against_cache=None if against_cache is None else Path(against_cache),
                    threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                    oof=None if oof is None else Path(oof), labels=labels,
                    duplicates=duplicates, outliers=outliers, top=top, method=method)
    return dataclasses.replace(res, _owner=folder)


def merge_duplicate_groups(data: Dataset | PathLike, duplicates: PathLike) -> Dataset:
    """``data`` with the groups (lesions, patients) that an audit's flagged pairs connect joined
    into one (``duplicates``: its duplicates.csv or folder), so that no split puts one picture
    on both sides. ``result.table.attrs["merged_groups"]``: how many groups were merged; the
    split file (``splits.csv``) and the model card say it too."""
    import dataclasses

    from .data.duplicate_groups import merge_duplicate_groups as merge

    data = _dataset(data)
    table, _ = merge(data.table, duplicates)
    return dataclasses.replace(data, table=table)


def drop_label_issues(data: Dataset | PathLike, label_issues: PathLike) -> Dataset:
    """``data`` without the images that an audit listed as label issues (``label_issues``: its
    label_issues.csv or folder); ``result.table.attrs["dropped_label_issues"]`` lists them, and
    cv's report says what was dropped. Labels are never changed, only rows left out."""
    import dataclasses

    from .data.duplicate_groups import drop_label_issues as drop

    data = _dataset(data)
    table, _ = drop(data.table, label_issues)
    described = None if data.described is None else \
        data.described[data.table["image_id"].isin(set(table["image_id"])).to_numpy()] \
        .reset_index(drop=True)
    return dataclasses.replace(data, table=table, described=described)


def settle_crossing_groups(data: Dataset | PathLike, split: str, how: str = "refuse"):
    """``data`` with the groups (lesions, patients) whose images sit in more than one value of
    a ``by:COLUMN`` split's column settled by ``how`` (``--crossing-groups``: refuse, drop
    them, or move each to its majority value), and a note of what was done (None: nothing)."""
    from .data.crossing import settle_crossing_groups as settle

    return settle(_dataset(data), split, how)


__all__ = [name for name in PUBLIC if name != "__version__"]   # the one list: the package's
