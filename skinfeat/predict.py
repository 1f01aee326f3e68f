"""Predict: a trained run's bundle + raw images and metadata -> calibrated class probabilities.

An image goes through exactly what filled the training cache: the backbone rebuilt from the
bundle's identity (timm name; random weights from the stored seed, timm's pretrained weights, or
a local checkpoint whose sha256 must match), the stored ``TransformSpec``, and stage one's
``Embedder`` at the cache's precision. Then the bundle's metadata encoder, the head and the stored
temperature. Missing metadata is handled as in training: a missing age becomes the training mean,
a blank sex or site becomes ``unknown``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .backbone import (TransformSpec, WeightSource, create_backbone, resolve_device,
                       resolve_weights)
from .bundle import (CONFIG, LGBM, WEIGHTS, BundleError, atomic_write_text, load_config, load_into,
                     load_state)
from .cache import random_weights
from .datasets import DataError, clean_metadata
from .engines import QuantizedModelMissing, make_embedder
from .extract import Embedder, Int8Embedder, embed_files
from .head import FusionHead
from .metadata import MetadataEncoder
from .metrics import softmax
from .train import Trained

log = logging.getLogger(__name__)


def load_model(run: Path, config: dict) -> tuple[Trained, MetadataEncoder]:
    """The bundle's stage-two model and metadata encoder, checked against each other."""
    source = run / CONFIG
    try:
        head = config["head"]
        embed_dim, meta_dim, n_classes = (int(head[k]) for k in ("embed_dim", "meta_dim",
                                                                  "n_classes"))
        encoder = MetadataEncoder.from_dict(config["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{source}: invalid head or encoder config ({exc!r})") from exc
    if encoder.n_features != meta_dim:
        raise BundleError(f"{source}: the encoder makes {encoder.n_features} metadata features "
                          f"but the head expects meta_dim {meta_dim}")
    if len(config["classes"]) != n_classes:
        raise BundleError(f"{source}: {len(config['classes'])} classes but n_classes {n_classes}")
    kind = config["model_type"]
    if kind == "head":
        try:
            model = FusionHead(embed_dim, meta_dim, n_classes, head.get("head", "reference"),
                               head.get("inputs", "fused"))
        except ValueError as exc:
            raise BundleError(f"{source}: {exc}") from exc
        load_into(model, load_state(run), run / WEIGHTS)
        model.eval()
    elif kind == "lgbm":
        model = load_lgbm(run, config, embed_dim)
    else:
        raise BundleError(f"{source}: unknown model_type {kind!r} (expected head or lgbm)")
    return Trained(kind, model, head), encoder


def load_lgbm(run: Path, config: dict, embed_dim: int):
    import lightgbm as lgb
    from .baseline import LGBMModel

    path = run / LGBM
    if not path.is_file():
        raise BundleError(f"{path}: LightGBM model file missing")
    try:
        model = LGBMModel.from_state(path.read_text(encoding="utf-8"), config["lgbm"])
    except (KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
        raise BundleError(f"{path}: unreadable LightGBM model ({str(exc).splitlines()[0]})") \
            from exc
    if model.pca is not None and model.pca.mean.shape[0] != embed_dim:
        raise BundleError(f"{path}: PCA expects {model.pca.mean.shape[0]}-d embeddings, "
                          f"config says embed_dim {embed_dim}")
    return model


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


def calibration_temperature(config: dict, source: Path) -> float:
    """The temperature fitted on the validation split at training time (1.0: uncalibrated)."""
    try:
        t = float(config.get("temperature", 1.0))
    except (TypeError, ValueError):
        t = float("nan")
    if not np.isfinite(t) or t <= 0:
        raise BundleError(f"{source}: temperature must be a positive number, "
                          f"got {config.get('temperature')!r}")
    return t


@dataclass
class Predictions:
    """Per input row: calibrated probabilities, raw logits, and a reason when unreadable."""
    image_ids: list[str]
    paths: list[str]
    classes: list[str]
    logits: np.ndarray          # (N, K); NaN rows for unreadable images
    proba: np.ndarray           # (N, K) softmax(logits / T)
    errors: list[str]           # "" when the image was read

    @property
    def ok(self) -> np.ndarray:
        return np.array([e == "" for e in self.errors], dtype=bool)

    def to_frame(self) -> pd.DataFrame:
        pred = [self.classes[int(i)] if ok else "" for i, ok in
                zip(np.nan_to_num(self.proba, nan=-1.0).argmax(axis=1), self.ok)]
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
        self.config = load_config(self.run)
        self.trained, self.encoder = load_model(self.run, self.config)
        self.classes = [str(c) for c in self.config["classes"]]
        self.temperature = calibration_temperature(self.config, self.run / CONFIG)
        self.identity = self.config["backbone"] or {}
        self.embed_dim = int(self.config["head"]["embed_dim"])
        # Test-time augmentation over the cached views, when the model was scored that way.
        self.views = list(self.identity.get("views", [])) if self.config.get("tta") else []
        self.weights_file, self.device = weights_file, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self._embedder: Embedder | Int8Embedder | None = None
        self._spec: TransformSpec | None = None

    @property
    def random_weights(self) -> bool:
        return random_weights(self.identity)

    @property
    def weights(self) -> str:
        return str(self.config.get("weights", "unknown"))

    def _backbone(self) -> tuple[Embedder | Int8Embedder, TransformSpec]:
        if self._embedder is None:
            ident, source = self.identity, self.run / CONFIG
            if not ident.get("backbone") or "preprocessing" not in ident:
                raise BundleError(f"{source}: this model was trained on embeddings made outside "
                                  "skinfeat (no backbone identity), so it cannot embed raw images")
            try:
                spec = TransformSpec.from_dict(ident["preprocessing"])
            except (KeyError, TypeError) as exc:
                raise BundleError(f"{source}: invalid preprocessing ({exc!r})") from exc
            if self.views and "view_transform" not in ident:
                raise BundleError(f"{source}: trained with test-time views from a cache made "
                                  "before views were taken from the full image; re-extract the "
                                  "cache and refit to use --tta models on raw images")
            model = create_backbone(ident["backbone"],
                                    weight_source(ident, self.weights_file, source))
            int8 = ident.get("precision") == "int8"
            device = resolve_device("cpu" if int8 and self.device == "auto" else self.device)
            try:  # int8: the quantized model the cache was made with, from the on-disk store
                self._embedder = make_embedder(model, device, ident, spec)
            except QuantizedModelMissing as exc:
                raise BundleError(f"{source}: {exc}") from exc
            self._spec = spec
        return self._embedder, self._spec

    def embed(self, paths: Sequence[str],
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str]]:
        """Embeddings (N, D), or (N, 1+V, D) with TTA views, and per-image read errors ("" if ok).

        Unreadable images get a zero row and their reason, as stage one records them.
        """
        embedder, spec = self._backbone()
        shape = (len(paths), 1 + len(self.views), self.embed_dim) if self.views else \
            (len(paths), self.embed_dim)
        out = np.zeros(shape, dtype=np.float32)
        errors = [""] * len(paths)
        for batch in embed_files(embedder, paths, spec, views=self.views,
                                 batch_size=self.batch_size, num_workers=self.num_workers):
            for j, reason in batch.failed.items():
                errors[j] = reason
            if len(batch.rows):
                if batch.embeddings.shape[-1] != self.embed_dim:
                    raise BundleError(f"{self.run / CONFIG}: backbone "
                                      f"{self.identity['backbone']} gives "
                                      f"{batch.embeddings.shape[-1]}-d embeddings, the head "
                                      f"expects embed_dim {self.embed_dim}")
                out[batch.rows] = np.concatenate([batch.embeddings[:, None], batch.views], 1) \
                    if self.views else batch.embeddings
            if progress:
                progress(batch.size)
        return out, errors

    def logits(self, image: np.ndarray, table: pd.DataFrame) -> np.ndarray:
        """Uncalibrated logits for embeddings + metadata rows (age, sex, localization)."""
        meta = self.encoder.transform(clean_metadata(table, "input"))
        return self.trained.logits(image, meta, tta=bool(self.views))

    def predict_table(self, table: pd.DataFrame,
                      progress: Callable[[int], None] | None = None) -> Predictions:
        """Rows with ``path`` and optional age/sex/localization -> calibrated probabilities."""
        table = table.reset_index(drop=True)
        image, errors = self.embed(table["path"].astype(str).tolist(), progress)
        preds = Predictions(table["image_id"].astype(str).tolist(),
                            table["path"].astype(str).tolist(), self.classes,
                            np.full((len(table), len(self.classes)), np.nan),
                            np.full((len(table), len(self.classes)), np.nan), errors)
        ok = preds.ok
        if ok.any():
            preds.logits[ok] = self.logits(image[ok], table[ok])
            preds.proba[ok] = softmax(preds.logits[ok], self.temperature)
        if not ok.all():
            log.warning("%d image(s) could not be read: %s", int((~ok).sum()), "; ".join(
                f"{p}: {e}" for p, e in zip(preds.paths, errors) if e)[:300])
        return preds

    def predict_image(self, path: str | Path, age: float | None = None, sex: str | None = None,
                      localization: str | None = None) -> dict[str, float]:
        """Calibrated class probabilities for one image; ``None`` metadata counts as missing."""
        table = pd.DataFrame({"image_id": [Path(path).stem], "path": [str(path)], "age": [age],
                              "sex": [sex], "localization": [localization]}, dtype=object)
        preds = self.predict_table(table)
        if preds.errors[0]:
            raise DataError(f"{path}: cannot read the image ({preds.errors[0]})")
        return dict(zip(self.classes, map(float, preds.proba[0])))
