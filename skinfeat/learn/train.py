"""Stage two for one split: cached embeddings + metadata -> trained bundle, metrics and report.

``fit_split`` is the one training path: ``fit-head`` runs it on one saved split and ``cv`` on every
fold, so encoding, training, calibration and scoring cannot drift apart. The metadata encoder is
fitted on training rows only; the epoch (or boosting round), the calibration temperature and a
binary task's threshold are chosen on ``val``; the scores are computed on ``test`` unless the
reference's protocol is asked for explicitly (``select_on="test"``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import HAM10000, DataError, Dataset
from ..data.metadata import MetadataEncoder
from ..data.splits import assign_split, load_split, save_split
from ..embed.cache import CacheContents, CacheError
from ..errors import InputError
from ..evaluate.metrics import calibrated_metrics
from ..version import __version__
from .calibration import Calibrator
from .context import context_matrix
from .fallback import Fallback, applies, fallback_rows, image_part
from .fallback import combine as combine_rows
from .models import model_class
from .protocol import StageTwoModel
from .rows import Rows, chunked
from .runconfig import RunConfig

log = logging.getLogger(__name__)


def align_embeddings(table: pd.DataFrame, contents: CacheContents,
                     source: str = "cache") -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of ``table`` with their embeddings, (N, D) or (N, 1+V, D) with view 0 the original.

    Rows without an embedding (unreadable at extract time, or simply not in the cache: a cache
    made elsewhere may cover part of a table) are left out with a count; no row left is an
    error (the cache belongs to other data, or extract was not run).
    """
    failed = contents.failures
    known = set(contents.image_ids)
    absent = ~table["image_id"].isin(known)
    unreadable = absent & table["image_id"].isin(failed.keys())
    if absent.all():
        raise CacheError(f"{source}: none of the {len(table)} image(s) of the data set has an "
                         f"embedding (e.g. {', '.join(table['image_id'][:3])}; the cache has "
                         f"e.g. {', '.join(map(str, contents.image_ids[:3]))}); run skinfeat "
                         "extract on this data, or check that the ids match")
    if unreadable.any():
        log.warning("%s: %d image(s) could not be read at extract time and are left out: %s",
                    source, int(unreadable.sum()), ", ".join(table.loc[unreadable, "image_id"][:5]))
    other = absent & ~unreadable
    if other.any():
        log.warning("%s: %d of %d image(s) have no embedding in the cache and are left out "
                    "(e.g. %s)", source, int(other.sum()), len(table),
                    ", ".join(table.loc[other, "image_id"][:5]))
    if absent.any():
        table = table[~absent].reset_index(drop=True)
    rows = contents.rows_for(table["image_id"].tolist())
    # The table in the cache's own order (a cache extracted from it): the array itself, no
    # copy (at 400k rows x 768 that copy alone is 1.2 GB).
    same = len(rows) == len(contents.embeddings) and np.array_equal(rows, np.arange(len(rows)))
    image = contents.embeddings if same else contents.embeddings[rows]
    if contents.view_embeddings is not None:
        image = np.concatenate([image[:, None], contents.view_embeddings[rows]], axis=1)
    return table, image


def train_models(kind: str, config, trains: list[tuple], vals: list[tuple], n_classes: int,
                 meta_fields: list[list | None] | None = None, batched: bool = True,
                 groups: list[np.ndarray | None] | None = None) -> list[StageTwoModel]:
    """One fitted model per (train, val) pair, all with one ``config``, through the model's
    class (the registry): ``fit_batched`` (heads train together as one batched network;
    ``batched=False``: one batch of one each). ``meta_fields``: each encoder's
    ``dropout_fields()``, what dropout blanks to; ``groups``: each training part's groups, for
    a model with an inner CV."""
    return list(model_class(kind).fit_batched(config, trains, vals,
                                              groups or [None] * len(trains),
                                              n_classes=n_classes,
                                              meta_fields=meta_fields or [None] * len(trains),
                                              batched=batched))


def _tta_note(model: str, tta: bool, image: np.ndarray) -> str:
    """What --tta did, for the report and the bundle."""
    if not tta:
        return "off"
    if image.ndim != 3:
        return "asked for, but the cache has no view embeddings: off"
    return (f"{model_class(model).title} probabilities averaged over the original and "
            f"{image.shape[1] - 1} cached view(s)")


def as_dataset(data: Dataset | pd.DataFrame) -> Dataset:
    """A validated table without its description is HAM10000's (older callers, tests)."""
    return data if isinstance(data, Dataset) else Dataset(data, HAM10000, HAM10000.classes)


@dataclass
class SplitFit:
    """One model fitted on one split's ``train`` rows, calibrated on ``val``, scored on ``test``."""
    model: StageTwoModel
    encoder: MetadataEncoder
    calibrator: Calibrator
    threshold: float | None       # a binary task's decision threshold, chosen on val
    metrics: dict                 # on test: calibrated probabilities, the model's decisions
    test_logits: np.ndarray
    test_pred: np.ndarray         # decided class per test row
    meta_dim: int
    test_proba: np.ndarray | None = None   # calibrated probabilities per test row
    group_context: bool = False   # context features appended to the metadata (--group-context)
    fallback: Fallback | None = None   # the image-only model of rows with every field missing
    # Scored rows whose every metadata field is missing (scored by ``fallback`` when there is one)
    missing_rows: np.ndarray | None = None

    @property
    def fell_back(self) -> int:
        """How many scored rows the fallback scored."""
        if self.fallback is None or self.missing_rows is None:
            return 0
        return int(self.missing_rows.sum())

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


def check_inputs(data: Dataset, inputs: str | tuple[str, ...]) -> None:
    """A metadata-only model needs metadata fields: refused before anything is written (a
    set without fields trains ``image``, and ``fused``, which is then the image alone)."""
    asked = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if "meta" in asked and not data.spec.metadata:
        raise DataError(f"{data.source}: --inputs meta needs metadata fields, and this data set "
                        "has none (no numeric or categorical columns declared); use --inputs "
                        "image, or name its fields with --numeric / --categorical (spec file: "
                        "numeric = [...], categorical = [...])")


def make_encoder(data: Dataset, encoding: str = "robust") -> MetadataEncoder:
    """The dataset's metadata fields, with its own missing tokens, in ``encoding``."""
    tokens = {f: list(data.spec.missing_tokens) for f in data.spec.metadata} \
        if data.spec.missing_tokens else None
    return MetadataEncoder(data.spec.numeric, data.spec.categorical, encoding,
                           missing_tokens=tokens)


@dataclass
class EncodedSplit:
    """One split's rows with the metadata encoded by an encoder fitted on its training rows.
    Each side's image is ``Rows`` of the one embedding array (indices, no copy); its metadata
    (a fold's own encoding, a tenth of the embedding's width or less) and labels are arrays."""
    encoder: MetadataEncoder
    parts: dict[str, tuple]          # side -> (image Rows, meta, y)
    meta_dim: int
    groups: dict[str, np.ndarray] | None = None   # side -> each row's group (lesion, patient)
    group_context: bool = False


def table_context(data: Dataset, image: np.ndarray) -> np.ndarray:
    """The ``--group-context`` features of every row of ``data.table`` (``context_matrix``).

    Computed once over the whole table, not per split or fold: a row's features come from its
    own group's rows only (their metadata and embeddings, never a label), so they are the same
    whichever rows are around it. With a grouped split (lesion / patient) a group lies on one
    side, so these are exactly the per-side values, and predict ``--csv`` on a group's rows
    gives them again; with an image-level split a test row's context includes its group's
    training rows (their features only), as predict would with the whole group in the CSV."""
    if "group_id" not in data.table:
        raise DataError(f"{data.source}: --group-context needs a group column (patient or "
                        "lesion id); this data set has none")
    return context_matrix(data.table, data.spec.numeric, data.table["group_id"].to_numpy(),
                          image)


def encode_split(data: Dataset, image: np.ndarray, rows: dict[str, np.ndarray],
                 encoding: str, context: np.ndarray | None = None) -> EncodedSplit:
    """Encode the metadata (fitted on ``rows["train"]``), append ``context`` (the
    ``table_context`` features, or None) and cut the split's sides: the image side as ``Rows``
    of ``image``, so folds and input sets share the one array."""
    encoder = make_encoder(data, encoding).fit(data.table.iloc[rows["train"]])
    meta = encoder.transform(data.table)
    if context is not None:
        meta = np.concatenate([meta, context.astype(meta.dtype, copy=False)], axis=1)
    y = data.table["label"].to_numpy()
    group = data.table["group_id"].to_numpy() if "group_id" in data.table else None
    return EncodedSplit(encoder, {s: (Rows(image, i), meta[i], y[i]) for s, i in rows.items()},
                        int(meta.shape[1]),
                        None if group is None else {s: group[i] for s, i in rows.items()},
                        context is not None)


def _calibrated(data: Dataset, model: StageTwoModel, select: tuple, scored: tuple,
                recipe: RunConfig, calibrate: bool) -> tuple:
    """Calibrator and threshold fitted on ``select``; logits, probabilities, decisions on
    ``scored``."""
    def logits(image: Rows, meta: np.ndarray) -> np.ndarray:   # a side in chunks of rows
        return chunked(lambda i, m: model.logits(i, m, tta=recipe.tta), image, meta)

    select_logits = logits(*select[:2])
    calibrator = Calibrator(recipe.calibration if calibrate else "temperature")
    if calibrate:
        calibrator.fit(select_logits, select[2], class_weights=model.class_weights_)
    threshold = choose_threshold(select[2] == 1, calibrator(select_logits)[:, 1]) \
        if data.task.binary else None
    scored_logits = logits(*scored[:2])
    proba = calibrator(scored_logits)
    return calibrator, threshold, scored_logits, proba, calibrator.decide(proba, threshold)


def finish_split(data: Dataset, enc: EncodedSplit, model: StageTwoModel, recipe: RunConfig, *,
                 calibrate: bool = True, fallback: StageTwoModel | None = None) -> SplitFit:
    """Calibrate on ``recipe.select_on``, choose a binary threshold there, score ``test`` (or,
    for a split without one, the ``select_on`` part itself: optimistic, and reported as such).
    ``fallback``: an image-only model, calibrated on the same part with its own calibrator and
    threshold, that scores the rows whose every metadata field is missing."""
    classes, select = data.classes, enc.parts[recipe.select_on]
    scored = enc.parts.get("test", select)
    calibrator, threshold, test_logits, proba, pred = _calibrated(data, model, select, scored,
                                                                  recipe, calibrate)
    missing = fallback_rows(scored[1][:, :enc.encoder.n_features], enc.encoder.missing_row())
    fb = None
    if fallback is not None:
        fb_cal, fb_threshold, fb_logits, fb_proba, fb_pred = _calibrated(
            data, fallback, select, scored, recipe, calibrate)
        fb = Fallback(fallback, fb_cal, fb_threshold)
        test_logits, proba, pred = combine_rows(missing, (test_logits, proba, pred),
                                                (fb_logits, fb_proba, fb_pred))
        log.info("fallback: %d of %d scored row(s) have every metadata field missing and are "
                 "scored by the image-only model", int(missing.sum()), len(missing))
    metrics = calibrated_metrics(scored[2], test_logits, proba, classes, pred)
    return SplitFit(model, enc.encoder, calibrator, threshold, metrics, test_logits, pred,
                    enc.meta_dim, proba, enc.group_context, fb, missing)


def fit_splits(data: Dataset, image: np.ndarray, splits: list[dict[str, np.ndarray]],
               recipe: RunConfig, *, calibrate: bool = True,
               batched: bool = True) -> list[SplitFit]:
    """Encode (fitted on each split's ``train`` rows), train, calibrate on
    ``recipe.select_on``, score ``test``: the whole of stage two for one or more splits with
    one recipe (the folds of a CV), shared by fit-head, cv and tune. The recipe's model,
    head / LightGBM settings, encoding, calibration and tta are used as they are (``split``,
    ``seed`` and the sizes belong to whoever made ``splits``).

    Scores use the calibrated probabilities (AUC, ECE) and the model's decisions: the balanced
    rule of the calibrator for a multi-class task, the threshold chosen on val for a binary one.
    """
    context = table_context(data, image) if recipe.group_context else None
    encs = [encode_split(data, image, rows, recipe.encoding, context) for rows in splits]
    trains = [e.parts["train"] for e in encs]
    vals = [e.parts[recipe.select_on] for e in encs]
    fields: list[list | None] = [e.encoder.dropout_fields() for e in encs]
    groups = [e.groups["train"] if e.groups else None for e in encs]
    k = len(encs)
    with_fallback = applies(recipe, bool(data.spec.metadata))
    if with_fallback:   # the fallbacks: extra members of the same batched fit (learn/fallback.py)
        trains += [image_part(p) for p in trains]
        vals += [image_part(p) for p in vals]
        fields += [None] * k   # nothing to blank in all-zero metadata
        groups += groups
    models = train_models(recipe.model, recipe.params, trains, vals, len(data.classes), fields,
                          batched, groups=groups)
    fallbacks = [m.image_only(int(image.shape[-1]), len(data.classes)) for m in models[k:]] \
        if with_fallback else [None] * k
    return [finish_split(data, e, m, recipe, calibrate=calibrate, fallback=f)
            for e, m, f in zip(encs, models[:k], fallbacks, strict=False)]


def fit_split(data: Dataset, image: np.ndarray, rows: dict[str, np.ndarray], recipe: RunConfig,
              *, calibrate: bool = True) -> SplitFit:
    """``fit_splits`` for one split."""
    return fit_splits(data, image, [rows], recipe, calibrate=calibrate)[0]


def prepare_split(table: pd.DataFrame, out: Path, kind: str, seed: int, test_size: float = 0.2,
                  val_size: float = 0.1) -> tuple[pd.Series, str]:
    """Reuse ``out/splits.csv`` when it was made with this kind and seed, else make and save it;
    a saved split of another kind or seed is an error, never a silent reuse."""
    path = out / "splits.csv"
    if path.is_file():
        split, saved_kind, saved_seed = load_split(table, path)
        if saved_kind != kind or saved_seed != seed:
            raise InputError(f"{path} holds a {saved_kind}-level split with seed {saved_seed}, "
                             f"but this run asks for {kind} with seed {seed}; use a new --out "
                             "folder (or the same --split and --seed)")
        return split, saved_kind
    split = assign_split(table, kind, test_size=test_size, val_size=val_size, seed=seed)
    save_split(table, split, path, kind, seed)
    return split, kind


def bundle_config(data: Dataset, fit: SplitFit, identity: dict, weights: str, *, embed_dim: int,
                  tta: bool, split: str, seed: int, run: dict | None = None) -> dict:
    """A fitted split's ``config.json``: everything predict needs, and the recipe (``run``)."""
    classes = list(data.classes)
    return {"model_type": fit.model.kind, "classes": classes, "encoder": fit.encoder.to_dict(),
            "dataset": data.spec.to_dict(), "task": data.task.to_dict(),
            "backbone": identity, "weights": weights,
            "head": {**fit.model.config_dict(), "embed_dim": embed_dim, "meta_dim": fit.meta_dim,
                     "n_classes": len(classes)},
            "temperature": fit.temperature, "calibration": fit.calibrator.to_dict(),
            "threshold": fit.threshold, "tta": tta, "split": split, "seed": seed,
            "best_epoch": fit.model.best_epoch_, "run": run, "skinfeat": __version__,
            **({"group_context": True} if fit.group_context else {}),
            **({"fallback": FALLBACK_DIR} if fit.fallback is not None else {})}


FALLBACK_DIR = "fallback"   # the image-only fallback's bundle, a folder inside the model's


def fallback_fit(fit: SplitFit) -> SplitFit:
    """The fallback of ``fit`` as a fit of its own (its bundle: same encoder and sizes)."""
    fb = fit.fallback
    assert fb is not None, "fallback_fit: this fit has no fallback"
    return SplitFit(fb.model, fit.encoder, fb.calibrator, fb.threshold, {}, fit.test_logits,
                    fit.test_pred, fit.meta_dim)
