"""Loading a bundle: parse its typed config, load the stage-two model (or an ensemble's
members), the metadata encoder and the calibrator, and rebuild the backbone that filled the
training cache. ``model.Model`` adds the prediction (embed, calibrate, decide) on top.

An image goes through exactly what filled the training cache: the backbone rebuilt from the
bundle's identity (timm name; random weights from the stored seed, timm's pretrained weights, or
a local checkpoint whose sha256 must match), the stored ``TransformSpec``, and stage one's
``Embedder`` at the cache's precision.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..data.metadata import MetadataEncoder
from ..data.spec import DatasetSpec, SpecError, Task
from ..embed.backbone import create_backbone
from ..embed.cache import random_weights, source_identities
from ..embed.device import resolve_device
from ..embed.engines import QuantizedModelMissing, make_embedder
from ..embed.extract import Embedder, Int8Embedder
from ..embed.transform import TransformSpec
from ..embed.weights import WeightSource, resolve_weights
from ..evaluate.model_text import random_line
from ..learn.calibration import Calibrator
from ..learn.context import context_columns
from ..learn.models import registry
from ..learn.protocol import StageTwoModel
from .bundle import (
    CONFIG,
    QUANTIZED,
    BundleConfig,
    BundleError,
    EnsembleConfig,
    load_into,
    load_state,
    load_typed,
    read_file,
)

log = logging.getLogger(__name__)


def load_model(run: Path, config: BundleConfig) -> tuple[StageTwoModel, MetadataEncoder]:
    """The bundle's stage-two model and metadata encoder, checked against each other (the
    config's plain values were checked by its schema, ``bundle_config``)."""
    source = run / CONFIG
    embed_dim, meta_dim, n_classes = config.dims
    try:
        encoder = MetadataEncoder.from_dict(config.encoder, key="encoder")
    except ValueError as exc:
        raise BundleError(f"{source}: {exc}") from exc
    made, what = encoder.n_features, "the encoder makes"
    if config.group_context:   # the context features follow the encoder's
        made += len(context_columns(encoder.numeric))
        what = "the encoder and the group context make"
    if made != meta_dim:
        raise BundleError(f"{source}: {what} {made} metadata features but the head expects "
                          f"meta_dim {meta_dim}")
    return load_stage_two(run, config, (embed_dim, meta_dim, n_classes)), encoder


def load_stage_two(run: Path, config: BundleConfig,
                   dims: tuple[int, int, int]) -> StageTwoModel:
    """The bundle's model through its class (the registry, ``learn.models``), each error
    naming the file."""
    source, kind, models = run / CONFIG, config.model_type, registry()
    if kind not in models:
        raise BundleError(f"{source}: unknown model_type {kind!r} (expected one of "
                          f"{', '.join(models)})")
    cls = models[kind]
    weights: str | dict | Callable
    if cls.weights_format == "folder":   # an ensemble: its members' files, read when asked
        path, weights = source, partial(read_file, run)
    elif cls.weights_format == "text":
        path = run / cls.file_name()
        if not path.is_file():
            raise BundleError(f"{path}: {cls.title} model file missing")
        weights = path.read_text(encoding="utf-8")
    else:
        path, weights = source, load_state(run, cls.file_name())
    try:
        model = cls.from_bundle(config.to_dict(), weights, dims,
                                load_state=lambda m, state: load_into(m, state,
                                                                      run / cls.file_name()))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        what = str(exc).splitlines()[0] if str(exc) else repr(exc)
        if cls.weights_format == "text":
            raise BundleError(f"{path}: unreadable {cls.title} model ({what})") \
                from exc
        raise BundleError(f"{path}: {what}") from exc
    return model


def bundle_spec(config: BundleConfig | EnsembleConfig, source: Path) -> tuple[DatasetSpec, Task]:
    """The dataset description and task the model was trained with (an older bundle's were
    filled in by ``bundle_config.migrate``)."""
    try:   # each error names the file and the key (dataset.classes, task.kind, ...)
        spec = DatasetSpec.from_dict(config.dataset or {}, str(source), "dataset")
        task = Task.from_dict(config.task or {}, str(source), "task")
    except SpecError as exc:
        raise BundleError(str(exc)) from exc
    return spec, task


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
            raise BundleError(f"{weights_file}: sha256 {str(got.sha256)[:12]} does not match "
                              f"the checkpoint the model was trained with ({want[:12]})")
        return got
    if kind == "local":  # a local model folder, found again and verified by its sha256
        from ..embed.encoders import local_weight_source
        return local_weight_source(identity, weights_file)
    if kind == "pretrained":
        if weights_file is None:
            return WeightSource("pretrained")
        # Offline use of the hub weights; the bundle has no checksum of them to compare with.
        log.warning("using %s as the pretrained weights (not verifiable against the hub's)",
                    weights_file)
        return resolve_weights(weights_file=weights_file)
    raise BundleError(f"{source}: unknown backbone weight source {kind!r}")


def bundle_calibrator(config: BundleConfig, source: Path) -> Calibrator:
    """The calibration fitted on the validation split at training time (an older bundle's
    temperature was made one by ``bundle_config.migrate``); its vectors must have one entry
    per class."""
    try:
        return Calibrator.from_dict(config.calibration, n_classes=len(config.classes))
    except ValueError as exc:
        raise BundleError(f"{source}: {exc}") from exc


class LoadedBundle:
    """A trained run's bundle, loaded and checked (the backbone is rebuilt on first use)."""

    def __init__(self, run: str | Path, *, weights_file: str | Path | None = None,
                 device: str = "auto", batch_size: int = 32, num_workers: int = 0):
        self.run = Path(run)
        # the table as written (reports quote it) and its typed schema (what this code reads)
        self.config, self.bundle = load_typed(self.run)
        self.classes = list(self.bundle.classes)
        self.spec, self.task = bundle_spec(self.bundle, self.run / CONFIG)
        self.members: Sequence[LoadedBundle] = []
        self.fallback: LoadedBundle | None = None   # rows with every metadata field missing
        if isinstance(self.bundle, EnsembleConfig):
            self._load_members(weights_file, device, batch_size, num_workers)
        else:
            self.model, self.encoder = load_model(self.run, self.bundle)
            self.threshold = self.bundle.threshold
            self.calibrator = bundle_calibrator(self.bundle, self.run / CONFIG)
            self._check_fields()
        self.temperature = self.calibrator.temperature
        # Patient context features (--group-context): a model's own, or any member's.
        self.group_context: bool = any(m.group_context for m in self.members) \
            if isinstance(self.bundle, EnsembleConfig) else bool(self.bundle.group_context)
        self.identity = self.bundle.backbone or {}
        self.embed_dim = int(self.bundle.head["embed_dim"])
        # Test-time augmentation over the cached views, when the model was scored that way.
        self.views = list(self.identity.get("views", [])) if self.bundle.tta else []
        self.weights_file, self.device = weights_file, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self._embedders: list[tuple[Embedder | Int8Embedder, TransformSpec]] | None = None
        if isinstance(self.bundle, BundleConfig) and self.bundle.fallback is not None:
            self._load_fallback(self.bundle.fallback)

    def _load_fallback(self, folder: str) -> None:
        """The image-only model of rows with every metadata field missing (``fallback/``): a
        bundle of its own that must take this model's embeddings and metadata. It never embeds
        an image itself (the model's backbone does, once for both), so its backbone is not
        rebuilt or compared."""
        source, where = self.run / CONFIG, self.run / folder
        if not (where / CONFIG).is_file():
            raise BundleError(f"{source}: key 'fallback': expected a bundle folder beside "
                              f"{CONFIG} (there is no {folder}/{CONFIG})")
        fb = type(self)(where, weights_file=self.weights_file, device=self.device,
                        batch_size=self.batch_size, num_workers=self.num_workers)
        theirs = fb.run / CONFIG
        if fb.members or fb.fallback is not None or fb.model.inputs != "image":
            raise BundleError(f"{theirs}: a fallback must be one image-only model (no "
                              "ensemble, no fallback of its own)")
        for key, mine, other in (("classes", self.classes, fb.classes),
                                 ("head.embed_dim", self.embed_dim, fb.embed_dim),
                                 ("tta", self.bundle.tta, fb.bundle.tta),
                                 ("encoder", self.bundle.encoder, fb.bundle.encoder)):
            if mine != other:
                raise BundleError(f"{theirs}: key '{key}' differs from the model's ({source}), "
                                  "so the fallback cannot take its inputs")
        self.fallback = fb

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
        assert isinstance(self.bundle, EnsembleConfig)   # called for an ensemble only
        self.members = [type(self)(self.run / m, weights_file=weights_file, device=device,
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
        self.model, self.encoder = self.members[0].model, self.members[0].encoder
        offsets = [o for m in self.members if (o := m.calibrator.decision_offset) is not None]
        self.calibrator = Calibrator("temperature")
        if len(offsets) == len(self.members):
            self.calibrator.decision_offset = np.mean(offsets, axis=0).tolist()
        thresholds = [t for m in self.members if (t := m.threshold) is not None]
        self.threshold = float(np.mean(thresholds)) if len(thresholds) == len(self.members) \
            else None

    @property
    def random_weights(self) -> bool:
        return random_weights(self.identity)

    def random_note(self, whole: str = "these probabilities mean nothing clinically.") -> str:
        """What had random weights, in one line (``model_text.random_line``): the whole model
        (``RANDOM backbone weights: {whole}``) or only the fused sources that were random, by
        name; "" for real weights."""
        return random_line(self.identity, whole, self.random_weights)

    @property
    def weights(self) -> str:
        return self.bundle.weights


    @property
    def sources(self) -> list[dict]:
        """The identity of each embedding source, in the order their embeddings are joined."""
        return source_identities(self.identity)

    @property
    def average_views(self) -> tuple[str, ...]:
        """The views a single-source model's embeddings average (``--average-views``), which
        explain and export make from the resized image (``embed.turns``); () for one view."""
        return tuple(self.sources[0].get("average_views") or ()) \
            if len(self.sources) == 1 else ()

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
