"""Predict: a trained run's bundle + raw images and metadata -> calibrated class probabilities.

An image goes through exactly what filled the training cache: the backbone rebuilt from the
bundle's identity (timm name; random weights from the stored seed, timm's pretrained weights, or
a local checkpoint whose sha256 must match), the stored ``TransformSpec``, and stage one's
``Embedder`` at the cache's precision. Then the bundle's metadata encoder, the head and the stored
temperature. Metadata fields are the ones the model was trained with (its dataset description
travels in the bundle); a field that is absent or blank is missing, exactly as in training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..data.datasets import HAM10000, DataError, clean_metadata
from ..data.metadata import MetadataEncoder
from ..data.spec import DatasetSpec, SpecError, Task
from ..embed.backbone import (TransformSpec, WeightSource, create_backbone, resolve_device,
                              resolve_weights)
from ..embed.cache import random_weights, source_identities
from ..embed.engines import QuantizedModelMissing, make_embedder
from ..embed.extract import Embedder, Int8Embedder, embed_files
from ..learn.calibration import Calibrator
from ..learn.models import MODELS
from ..learn.protocol import Trained
from .bundle import (CONFIG, LGBM, QUANTIZED, WEIGHTS, BundleConfig, BundleError,
                     EnsembleConfig, atomic_write_text, load_into, load_state, load_typed)

log = logging.getLogger(__name__)


def load_model(run: Path, config: BundleConfig) -> tuple[Trained, MetadataEncoder]:
    """The bundle's stage-two model and metadata encoder, checked against each other (the
    config's plain values were checked by its schema, ``bundle_config``)."""
    source = run / CONFIG
    embed_dim, meta_dim, n_classes = config.dims
    try:
        encoder = MetadataEncoder.from_dict(config.encoder, key="encoder")
    except ValueError as exc:
        raise BundleError(f"{source}: {exc}") from exc
    if encoder.n_features != meta_dim:
        raise BundleError(f"{source}: the encoder makes {encoder.n_features} metadata features "
                          f"but the head expects meta_dim {meta_dim}")
    return load_stage_two(run, config, (embed_dim, meta_dim, n_classes)), encoder


def load_stage_two(run: Path, config: BundleConfig, dims: tuple[int, int, int]) -> Trained:
    """The bundle's model through its class (``learn.models.MODELS``), each error naming the
    file."""
    source, kind = run / CONFIG, config.model_type
    if kind not in MODELS:
        raise BundleError(f"{source}: unknown model_type {kind!r} (expected one of "
                          f"{', '.join(MODELS)})")
    cls = MODELS[kind]
    if cls.weights_format == "text":
        path = run / LGBM
        if not path.is_file():
            raise BundleError(f"{path}: {cls.title} model file missing")
        weights = path.read_text(encoding="utf-8")
    else:
        path, weights = source, load_state(run)
    try:
        model = cls.from_bundle(config.to_dict(), weights, dims,
                                load_state=lambda m, state: load_into(m, state, run / WEIGHTS))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        what = str(exc).splitlines()[0] if str(exc) else repr(exc)
        if cls.weights_format == "text":
            raise BundleError(f"{path}: unreadable {cls.title} model ({what})") \
                from exc
        raise BundleError(f"{path}: {what}") from exc
    return Trained(model)


def bundle_spec(config: BundleConfig | EnsembleConfig, source: Path) -> tuple[DatasetSpec, Task]:
    """The dataset description and task the model was trained with (HAM10000 for bundles made
    before descriptions were stored)."""
    try:   # each error names the file and the key (dataset.classes, task.kind, ...)
        spec = DatasetSpec.from_dict(config.dataset, str(source), "dataset") \
            if config.dataset is not None else HAM10000
        task = Task.from_dict(config.task, str(source), "task") \
            if config.task is not None else Task()
    except SpecError as exc:
        raise BundleError(str(exc)) from exc
    return spec, task


def parse_meta(pairs: Sequence[str], spec: DatasetSpec) -> dict[str, str]:
    """``FIELD=VALUE`` pairs (``--meta``) -> a dict; unknown fields are an error naming the
    model's fields. A value that spells "missing" (``nan``, ``unknown``, ...) is kept, and so
    missing, with a warning: ``--age nan`` is more often a slip than a choice. (Text, inf and
    implausible numbers are warned about where the values are read, ``tables.clean_numeric``.)"""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise DataError(f"--meta {pair!r}: use FIELD=VALUE, e.g. age=55")
        if name not in spec.metadata:
            if not spec.metadata:
                raise DataError(f"--meta {name}: this model takes no metadata fields (it was "
                                "trained on the image alone); drop --meta")
            raise DataError(f"--meta {name}: this model has no such field; its fields are "
                            f"{', '.join(spec.metadata)}")
        if value.strip() and value.strip().lower() in spec.missing:
            log.warning("--meta %s=%s: %r means missing; %s is treated as missing", name,
                        value, value, name)
        out[name] = value
    return out


def weight_source(identity: dict, weights_file: str | Path | None, source: Path) -> WeightSource:
    """The backbone weights the training cache was made with; a checkpoint must match its sha256."""
    w = identity.get("weights") or {}
    kind = w.get("kind")
    if kind == "random":
        return WeightSource("random", seed=int(w.get("seed", 0)))
    if kind == "file":
        want = str(w.get("sha256"))
        if weights_file is None:
            raise BundleError(f"{source}: the model was trained on embeddings from a local "
                              f"checkpoint (sha256 {want[:12]}); pass --weights-file PATH to it")
        got = resolve_weights(weights_file=weights_file)
        if got.sha256 != want:
            raise BundleError(f"{weights_file}: sha256 {got.sha256[:12]} does not match the "
                              f"checkpoint the model was trained with ({want[:12]})")
        return got
    if kind == "pretrained":
        if weights_file is None:
            return WeightSource("pretrained")
        # Offline use of the hub weights; the bundle has no checksum of them to compare with.
        log.warning("using %s as the pretrained weights (not verifiable against the hub's)",
                    weights_file)
        return resolve_weights(weights_file=weights_file)
    raise BundleError(f"{source}: unknown backbone weight source {kind!r}")


def bundle_calibrator(config: BundleConfig, source: Path) -> Calibrator:
    """The calibration fitted on the validation split at training time (older bundles: their
    temperature alone); its vectors must have one entry per class."""
    key = "calibration" if config.calibration is not None else "temperature"
    try:
        return Calibrator.from_dict(getattr(config, key), n_classes=len(config.classes),
                                    key=key)
    except ValueError as exc:
        raise BundleError(f"{source}: {exc}") from exc


@dataclass
class Predictions:
    """Per input row: calibrated probabilities, raw logits, and a reason when unreadable."""
    image_ids: list[str]
    paths: list[str]
    classes: list[str]
    logits: np.ndarray          # (N, K); NaN rows for unreadable images
    proba: np.ndarray           # (N, K) calibrated probabilities
    errors: list[str]           # "" when the image was read
    decided: np.ndarray         # (N,) the model's decision (class index), -1 where unreadable
    missing: dict[str, int] = field(default_factory=dict)  # per field: scored rows missing it

    @property
    def ok(self) -> np.ndarray:
        return np.array([e == "" for e in self.errors], dtype=bool)

    def to_frame(self) -> pd.DataFrame:
        pred = [self.classes[int(i)] if ok else "" for i, ok in zip(self.decided, self.ok)]
        frame = pd.DataFrame({"image_id": self.image_ids, "path": self.paths, "prediction": pred})
        for j, c in enumerate(self.classes):
            frame[f"p_{c}"] = np.round(self.proba[:, j], 6)
        frame["error"] = self.errors
        return frame


def save_predictions(preds: Predictions, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, preds.to_frame().to_csv(index=False))


class Predictor:
    """A trained run, ready to score raw images with metadata (the backbone is built on first use)."""

    def __init__(self, run: str | Path, *, weights_file: str | Path | None = None,
                 device: str = "auto", batch_size: int = 32, num_workers: int = 0):
        self.run = Path(run)
        # the table as written (reports quote it) and its typed schema (what this code reads)
        self.config, self.bundle = load_typed(self.run)
        self.classes = list(self.bundle.classes)
        self.spec, self.task = bundle_spec(self.bundle, self.run / CONFIG)
        self.members: list[Predictor] = []
        if isinstance(self.bundle, EnsembleConfig):
            self._load_members(weights_file, device, batch_size, num_workers)
        else:
            self.trained, self.encoder = load_model(self.run, self.bundle)
            self.threshold = self.bundle.threshold
            self.calibrator = bundle_calibrator(self.bundle, self.run / CONFIG)
            self._check_fields()
        self.temperature = self.calibrator.temperature
        self.identity = self.bundle.backbone or {}
        self.embed_dim = int(self.bundle.head["embed_dim"])
        # Test-time augmentation over the cached views, when the model was scored that way.
        self.views = list(self.identity.get("views", [])) if self.bundle.tta else []
        self.weights_file, self.device = weights_file, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self._embedders: list[tuple[Embedder, TransformSpec]] | None = None

    def _check_fields(self) -> None:
        """The encoder reads the dataset description's fields, each as its kind: a field the
        description lacks (or of the other kind) would be missing on every row, silently."""
        for kind in ("numeric", "categorical"):
            odd = [f for f in getattr(self.encoder, kind) if f not in getattr(self.spec, kind)]
            if odd:
                raise BundleError(f"{self.run / CONFIG}: key 'encoder.{kind}': {odd[0]!r} is "
                                  f"not a {kind} field of the model's dataset description "
                                  f"({', '.join(getattr(self.spec, kind)) or 'none'})")

    def _load_members(self, weights_file, device, batch_size, num_workers) -> None:
        """A fold ensemble (``cv --save-models``): its members' calibrated probabilities are
        averaged. The members' class weights differ only by fold noise; the ensemble decides by
        the balanced rule with their mean log weight (for a binary task, their mean threshold),
        and its own calibrator is the identity on the log of the averaged probabilities.

        Every member takes the ensemble's embeddings (one backbone embeds each image for all of
        them), so each must have been trained on that backbone, size and view set."""
        source = self.run / CONFIG
        self.members = [Predictor(self.run / m, weights_file=weights_file, device=device,
                                  batch_size=batch_size, num_workers=num_workers)
                        for m in self.bundle.members]
        for i, m in enumerate(self.members):
            theirs = m.run / CONFIG
            if m.members:
                raise BundleError(f"{theirs}: an ensemble cannot be a member of {source}")
            for key, mine, other in (
                    ("classes", self.classes, m.classes),
                    ("backbone", self.bundle.backbone, m.bundle.backbone),
                    ("head.embed_dim", self.bundle.head["embed_dim"], m.embed_dim),
                    ("tta", self.bundle.tta, m.bundle.tta)):
                if mine != other:
                    raise BundleError(f"{theirs}: key '{key}' differs from the ensemble's "
                                      f"({source}, members[{i}]), so it cannot take the "
                                      "ensemble's embeddings")
        self.trained, self.encoder = self.members[0].trained, self.members[0].encoder
        offsets = [m.calibrator.decision_offset for m in self.members]
        self.calibrator = Calibrator("temperature")
        if all(o is not None for o in offsets):
            self.calibrator.decision_offset = np.mean(offsets, axis=0).tolist()
        thresholds = [m.threshold for m in self.members]
        self.threshold = float(np.mean(thresholds)) if None not in thresholds else None

    @property
    def random_weights(self) -> bool:
        return random_weights(self.identity)

    @property
    def weights(self) -> str:
        return self.bundle.weights

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the head's logits (the one place calibration is applied)."""
        return self.calibrator(logits)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """The model's decisions from calibrated probabilities: the calibrator's balanced rule,
        or a binary model's threshold chosen on validation."""
        return self.calibrator.decide(proba, self.threshold)

    @property
    def sources(self) -> list[dict]:
        """The identity of each embedding source, in the order their embeddings are joined."""
        return source_identities(self.identity)

    def _backbones(self) -> list[tuple[Embedder | Int8Embedder, TransformSpec]]:
        """Every source's backbone, rebuilt from the bundle (a fused model has several)."""
        if self._embedders is None:
            source, built = self.run / CONFIG, []
            dims = self.identity.get("dims", [self.embed_dim])
            files = self.identity.get("sources", ["the training cache"])
            for i, ident in enumerate(self.sources):
                if not ident.get("backbone") or "preprocessing" not in ident:
                    which = f" (source {i + 1} of {len(self.sources)}, {files[i]})" \
                        if len(self.sources) > 1 else ""
                    raise BundleError(
                        f"{source}: this model was trained on embeddings made outside skinfeat"
                        f"{which}, so it cannot embed raw images; pass --cache FILE: an HDF5 "
                        f"file with the same encoder's {dims[i]}-d embeddings of these images "
                        "(datasets image_id and embedding)"
                        + (", one --cache per source in training order" if which else ""))
                try:
                    spec = TransformSpec.from_dict(ident["preprocessing"])
                except (KeyError, TypeError) as exc:
                    raise BundleError(f"{source}: invalid preprocessing ({exc!r})") from exc
                if self.views and "view_transform" not in ident:
                    raise BundleError(f"{source}: trained with test-time views from a cache made "
                                      "before views were taken from the full image; re-extract "
                                      "the cache and refit to use --tta models on raw images")
                model = create_backbone(ident["backbone"],
                                        weight_source(ident, self.weights_file, source))
                int8 = ident.get("precision") == "int8"
                device = resolve_device("cpu" if int8 and self.device == "auto" else self.device)
                try:  # int8: the quantized model the cache was made with, from the on-disk store
                    # ... or the bundle's copy (a CV fold looks in its ensemble's folder)
                    bundled = (self.run / QUANTIZED, self.run.parent / QUANTIZED)
                    built.append((make_embedder(model, device, ident, spec, bundled=bundled),
                                  spec))
                except QuantizedModelMissing as exc:
                    raise BundleError(f"{source}: {exc}") from exc
            self._embedders = built
        return self._embedders

    def _backbone(self) -> tuple[Embedder | Int8Embedder, TransformSpec]:
        """The one backbone of a single-source model (explain, export, serve need one)."""
        if len(self.sources) > 1:
            raise BundleError(f"{self.run / CONFIG}: a model on fused embeddings "
                              f"({len(self.sources)} backbones) cannot be explained, exported "
                              "or served; predict and evaluate work")
        return self._backbones()[0]

    def embed(self, paths: Sequence[str],
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str]]:
        """Embeddings (N, D), or (N, 1+V, D) with TTA views, and per-image read errors ("" if ok);
        a fused model's sources are embedded in turn and joined in training order.

        Unreadable images get a zero row and their reason, as stage one records them.
        """
        outs, errors = [], [""] * len(paths)
        dims = self.identity.get("dims", [self.embed_dim])
        for i, (embedder, spec) in enumerate(self._backbones()):
            dim = int(dims[i])
            shape = (len(paths), 1 + len(self.views), dim) if self.views else (len(paths), dim)
            out = np.zeros(shape, dtype=np.float32)
            for batch in embed_files(embedder, paths, spec, views=self.views,
                                     batch_size=self.batch_size,
                                     num_workers=self.num_workers):
                for j, reason in batch.failed.items():
                    errors[j] = reason
                if len(batch.rows):
                    if batch.embeddings.shape[-1] != dim:
                        raise BundleError(f"{self.run / CONFIG}: backbone "
                                          f"{self.sources[i]['backbone']} gives "
                                          f"{batch.embeddings.shape[-1]}-d embeddings, the "
                                          f"head expects {dim}")
                    out[batch.rows] = np.concatenate([batch.embeddings[:, None], batch.views],
                                                     1) if self.views else batch.embeddings
                if progress and i == len(self.sources) - 1:
                    progress(batch.size)
            outs.append(out)
        return np.concatenate(outs, axis=-1), errors

    def cached(self, image_ids: Sequence[str], caches) -> tuple[np.ndarray, list[str]]:
        """Embeddings of ``image_ids`` from cache file(s) (several: fused per image in the
        order given, as in training), and per-row errors for ids that are not cached. The
        caches must be the model's sources in training order: their number, and each one's
        width and encoder identity (``sources.check_sources``)."""
        from ..embed.cache import fuse_caches, read_cache
        from ..embed.sources import check_sources

        paths = [str(caches)] if isinstance(caches, (str, Path)) else [str(c) for c in caches]
        parts = [read_cache(c) for c in paths]
        check_sources(self.identity, self.embed_dim, paths, parts)
        contents = fuse_caches(parts, paths)
        pos = {iid: i for i, iid in enumerate(contents.image_ids)}
        errors = ["" if i in pos else "no embedding in the cache" for i in image_ids]
        rows = np.array([pos.get(i, 0) for i in image_ids], dtype=np.int64)
        image = contents.embeddings[rows]
        if self.views:
            if contents.view_embeddings is None or contents.views != self.views:
                raise BundleError(f"{contents.source}: the model averages over the views "
                                  f"{self.views}; the cache has "
                                  + (", ".join(contents.views) or "none"))
            image = np.concatenate([image[:, None], contents.view_embeddings[rows]], axis=1)
        return image, errors

    @property
    def fields(self) -> tuple[str, ...]:
        """The metadata fields the model takes (the others of a table are ignored)."""
        return self.spec.metadata

    def encode_metadata(self, table: pd.DataFrame) -> np.ndarray:
        """Metadata rows -> the head's metadata features (the model's fields; absent columns,
        None and blank values are missing)."""
        return self.encoder.transform(clean_metadata(table, self.spec, "input"))

    def logits(self, image: np.ndarray, table: pd.DataFrame) -> np.ndarray:
        """Uncalibrated logits for embeddings + metadata rows (an ensemble: the log of its
        members' mean calibrated probabilities)."""
        if self.members:
            proba = np.mean([m.calibrate(m.logits(image, table)) for m in self.members], axis=0)
            return np.log(np.clip(proba, 1e-12, None))
        return self.trained.logits(image, self.encode_metadata(table), tta=bool(self.views))


    def predict_table(self, table: pd.DataFrame,
                      progress: Callable[[int], None] | None = None,
                      cache=None, source: str | Path = "input") -> Predictions:
        """Rows with ``path`` (or, with ``cache``, ``image_id``s of cached embeddings) and the
        model's metadata fields -> calibrated probabilities. ``source`` names the table in
        warnings about its values."""
        table = table.reset_index(drop=True)
        if cache:
            image, errors = self.cached(table["image_id"].astype(str).tolist(), cache)
            if progress:
                progress(len(table))
        else:
            image, errors = self.embed(table["path"].astype(str).tolist(), progress)
        preds = Predictions(table["image_id"].astype(str).tolist(),
                            table["path"].astype(str).tolist(), self.classes,
                            np.full((len(table), len(self.classes)), np.nan),
                            np.full((len(table), len(self.classes)), np.nan), errors,
                            np.full(len(table), -1, dtype=np.int64))
        ok = preds.ok
        # Cleaned once here (each bad value warned about once); cleaning is idempotent, so the
        # encoder reads the same values through ``logits``.
        clean = clean_metadata(table, self.spec, source)
        preds.missing = {f: int(m[ok].sum()) for f, m in self.encoder.missing_mask(clean).items()}
        if ok.any():
            preds.logits[ok] = self.logits(image[ok], clean[ok])
            preds.proba[ok] = self.calibrate(preds.logits[ok])
            preds.decided[ok] = self.decide(preds.proba[ok])
        if not ok.all():
            log.warning("%d image(s) could not be scored: %s", int((~ok).sum()), "; ".join(
                f"{p}: {e}" for p, e in zip(preds.paths, errors) if e)[:300])
        return preds

    def score_image(self, path: str | Path, meta: dict | None = None, cache=None,
                    **fields) -> Predictions:
        """``predict_image`` as one row of ``Predictions`` (with the fields it was missing)."""
        values = {**(meta or {}), **fields}
        table = pd.DataFrame({"image_id": [Path(path).stem], "path": [str(path)],
                              **{k: [v] for k, v in values.items()}}, dtype=object)
        preds = self.predict_table(table, cache=cache)
        if preds.errors[0]:
            raise DataError(f"{path}: cannot read the image ({preds.errors[0]})")
        return preds

    def predict_image(self, path: str | Path, meta: dict | None = None, cache=None,
                      **fields) -> dict[str, float]:
        """Calibrated class probabilities for one image. Metadata by field name (``meta`` or
        keywords, e.g. ``age=55``); an absent field or ``None`` is missing. With ``cache``,
        the image's embedding is looked up by its id (the file name's stem)."""
        preds = self.score_image(path, meta, cache, **fields)
        return dict(zip(self.classes, map(float, preds.proba[0])))
