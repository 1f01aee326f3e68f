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

This module is re-exports plus thin functions: the work is in the layers below (``workflows``,
``deploy``, ``data``, ``embed``), and the results are theirs (``workflows.results``,
``deploy.model.Model``, ``deploy.evaluation.EvaluationResult``).
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .data.crossing import settle_crossing_groups  # noqa: F401  (public, from PUBLIC)
from .data.datasets import Dataset, load_dataset
from .data.download import unpack  # noqa: F401  (public, from PUBLIC)
from .data.spec import DatasetSpec, Task  # noqa: F401  (public: in __all__, from PUBLIC)
from .embed.backbone import DEFAULT_BACKBONE
from .embed.embedding_cache import EmbeddingCache, PathLike, open_cache  # noqa: F401
from .errors import SkinfeatError  # noqa: F401  (public: in __all__, from PUBLIC)
from .public import PUBLIC

if TYPE_CHECKING:   # names of the annotations; at run time they load lazily (_LAZY)
    from .deploy.model import Model
    from .learn.runconfig import RunConfig
    from .workflows.results import FitResult

# Imported on first use (``skinfeat.fit`` is ``workflows.fit.fit``): these pull in torch, SciPy
# and scikit-learn (seconds) that ``import skinfeat`` and --help never need. ``Recipe`` is
# ``RunConfig``.
_LAZY = {"RunConfig": "learn.runconfig", "Recipe": ("learn.runconfig", "RunConfig"),
         "HeadConfig": "learn.head", "LGBMConfig": "learn.baseline",
         "LinearConfig": "learn.linear", "StageTwoModel": "learn.protocol",
         "register_model": ("learn.models", "register"), "model_names": "learn.models",
         "default_models": "learn.models", "EnsembleConfig": "learn.ensemble",
         "FusionHeadClassifier": "learn.sklearn", "Model": "deploy.model",
         "load_model": "deploy.model",
         "Predictions": "deploy.predict", "ImagePrediction": "deploy.predict",
         "EvaluationResult": "deploy.evaluation", "ExplainError": "deploy.explain",
         "RunSummary": "workflows.summary", "CacheContents": "embed.cache",
         "AuditResult": "workflows.audit", "FitResult": "workflows.results",
         "CVResult": "workflows.results", "CompareResult": "workflows.results",
         "TuneResult": "workflows.results", "fit": "workflows.fit",
         "cross_validate": "workflows.cv", "compare": "workflows.compare",
         "tune": "workflows.tune", "audit": "workflows.audit",
         "evaluate_model": "workflows.evaluate"}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dataset(data: Dataset | PathLike) -> Dataset:
    """A loaded data set, or one read from a path (its tables)."""
    return importlib.import_module(f"{__package__}.deploy.inputs").dataset_or_path(data)


def extract(data: Dataset | PathLike, cache: PathLike, *, backbone: str = DEFAULT_BACKBONE,
            weights: str = "pretrained", weights_file: PathLike | None = None,
            precision: str = "auto", device: str = "auto", image_size: int | str | None = None,
            batch_size: int | None = None, num_workers: int | None = None,
            resize: str = "squash", views: str = "none", shard: tuple[int, int] | None = None,
            compile: str = "auto", calibration_images: int | None = None,
            pool: str | None = None, layers: str | None = None,
            average_views: str | None = None,
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int, int], None] | None = None) -> EmbeddingCache:
    """Stage one: embed every image of ``data`` once into ``cache`` (resumable; images already
    cached are skipped). ``weights``: pretrained (timm / Hugging Face hub, or its local cache) or
    random (a smoke test); ``weights_file``: a local checkpoint instead. ``views``: none, flip,
    rot90 or all (embeddings of flipped / rotated copies too); ``shard=(i, n)``: only shard
    ``i`` of ``n``; ``pool``: the family's pooling (timm avg, gem, avgmax; open_clip proj, cls,
    mean; hf cls, mean; None: the family's default); ``layers``: last, last2 or last3 stages
    pooled and concatenated (timm, hf; None: last3 for a timm model with three stages, last for
    the other families, or what an existing ``cache`` was made with); ``image_size``: pixels,
    ``train`` (the encoder's training size, the default) or ``test`` (timm's
    ``test_input_size``); ``average_views``:
    none, flip, rot90 or all, views averaged into the one stored embedding (None: all for a new
    cache, an existing cache's own, none with ``views``). Every option is in
    the cache identity. The result's ``run`` holds this run's counts and failures."""
    from .embed.extract import CALIBRATION_IMAGES, view_preset
    from .embed.extract import extract as run_extract
    from .embed.weights import resolve_weights

    data = data if isinstance(data, Dataset) else load_dataset(data)
    res = run_extract(data.table, cache, backbone=backbone,
                      weights=resolve_weights(weights, str(weights_file) if weights_file
                                              else None),
                      precision=precision, device=device, image_size=image_size,
                      batch_size=batch_size, num_workers=num_workers, resize=resize,
                      views=view_preset(views), shard=shard, compile=compile, pool=pool,
                      layers=layers, average_views=None if average_views is None
                      else view_preset(average_views, "average_views"),
                      calibration_images=CALIBRATION_IMAGES if calibration_images is None
                      else calibration_images,
                      progress=progress, on_start=on_start)
    return EmbeddingCache(Path(cache), res.contents, res)


def backbones() -> tuple[list[dict], dict[str, str | None]]:
    """The recommended encoders (backbone, family, width, input_size, licence, weights,
    installed) and each encoder family's installed version (None: not installed)."""
    from .embed.encoders import installed_families, list_backbones

    return list_backbones(), installed_families()


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


def download_ham10000(dest: PathLike, *, with_isic2018_test: bool = False,
                      progress: Callable[[str, int, int | None], None] | None = None) -> Path:
    """HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T), resumable and checksummed;
    ``progress(file, done, total)`` as it goes."""
    from .data.download import download_ham10000 as fetch

    return fetch(Path(dest), with_isic2018_test=with_isic2018_test, progress=progress)


def make_recipe(config: PathLike | None = None, *, run: dict | None = None,
                head: dict | None = None, lgbm: dict | None = None) -> RunConfig:
    """Defaults < the ``config`` file (JSON or TOML: a run's config.json, a tune result, a
    hand-written one) < the given values (None: not given), every key typed and checked. With
    ``run["encoding"] == "reference"`` and no file, the head starts from the reference head's
    defaults. ``head`` / ``lgbm``: model settings, each applied to the recipe's model config
    where it has that field; the model takes the recipe's seed."""
    from .learn.runconfig import recipe_of

    return recipe_of(config, run or {}, head or {}, lgbm or {})


def model_configs(models: Sequence[str], recipe: RunConfig, config: PathLike | None = None, *,
                  head: dict | None = None, lgbm: dict | None = None) -> dict:
    """Each model's config for a run of several (``cross_validate``'s ``params``): the
    recipe's own for its model, else the ``config`` file's table of it, else its defaults;
    ``head`` / ``lgbm`` settings applied where a config has the field."""
    from .learn.runconfig import model_configs_of

    return model_configs_of(models, recipe, config, head or {}, lgbm or {})


def write_card(run: Model | PathLike) -> Path:
    """Rewrite a fit-head run's model card (README.md) from its metrics.json (with its subgroup
    tables) and every ``eval-*`` evaluation in the run folder (``skinfeat card``); returns its
    path."""
    from .evaluate.card import rewrite_card

    return rewrite_card(Path(run) if isinstance(run, (str, Path)) else run.path)


def serve(model: Model, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = 20_000_000, top_k: int = 3) -> None:
    """The local web page and JSON API for ``model`` (needs the ``serve`` extra); blocks."""
    from .deploy.serve import serve as run

    run(model, host=host, port=port, max_upload_bytes=max_upload_bytes, top_k=top_k)


def run_demo(out: PathLike, *, n_images: int = 1000, backbone: str = DEFAULT_BACKBONE,
             weights: str = "auto", precision: str = "auto",
             echo: Callable[[str], None] = print, progress: Callable | None = None) -> FitResult:
    """Synthetic HAM10000-layout data -> extract -> fit-head -> report, offline (``skinfeat
    demo``); returns fit_run's result (``info`` a ``RunSummary``)."""
    from .demo import run_demo as demo_run

    return demo_run(Path(out), n_images=n_images, backbone=backbone, weights=weights,
                    precision=precision, echo=echo, progress=progress)


def merge_duplicate_groups(data: Dataset | PathLike, duplicates: PathLike) -> Dataset:
    """``data`` with the groups (lesions, patients) that an audit's flagged pairs connect joined
    into one (``duplicates``: its duplicates.csv or folder), so that no split puts one picture
    on both sides. ``result.table.attrs["merged_groups"]``: how many groups were merged; the
    split file (``splits.csv``) and the model card say it too."""
    from .data.duplicate_groups import merge_duplicate_groups as merge

    data = _dataset(data)
    return dataclasses.replace(data, table=merge(data.table, duplicates)[0])


def drop_label_issues(data: Dataset | PathLike, label_issues: PathLike) -> Dataset:
    """``data`` without the images that an audit listed as label issues (``label_issues``: its
    label_issues.csv or folder); ``result.table.attrs["dropped_label_issues"]`` lists them, and
    cv's report says what was dropped. Labels are never changed, only rows left out."""
    from .data.duplicate_groups import drop_label_issues as drop

    return drop(_dataset(data), label_issues)


__all__ = [name for name in PUBLIC if name != "__version__"]   # the one list: the package's
