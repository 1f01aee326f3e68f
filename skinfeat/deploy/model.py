"""The trained model, one class: a bundle loaded (``loading.LoadedBundle``) and scored.

``skinfeat.load_model(path)`` returns one; ``skinfeat.fit(...).model`` and a cv run's
``.models`` too. It embeds raw images through exactly what filled the training cache (or looks
their embeddings up in a cache), encodes the metadata, applies the model, its stored calibration
and decision rule, and, on rows with every metadata field missing, its image-only fallback.
On top of that scoring it predicts files and tables, evaluates, explains and exports.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data.datasets import DataError, clean_metadata, load_images
from ..embed.extract import embed_files
from ..errors import InputError
from ..learn.context import context_matrix
from ..learn.fallback import fallback_rows
from .bundle import CONFIG, BundleError
from .decision import calibration_text, predictor_rule
from .inputs import cache_paths, prediction_table
from .loading import LoadedBundle
from .predict import ImagePrediction, Predictions, parse_meta, save_predictions

if TYPE_CHECKING:
    from .evaluation import EvaluationResult
    from .explain import Explanation

log = logging.getLogger(__name__)
PathLike = str | Path


class Model(LoadedBundle):
    """A trained stage-two model (a bundle): predict, evaluate, explain, export.

    ``Model(path)`` loads a run folder (``skinfeat.load_model`` also takes a Hugging Face Hub
    repo id); the backbone is rebuilt on the first raw image."""

    _owner: object = None   # keeps a temporary run folder alive (the API's ``out=None``)
    # LoadedBundle loads its members and fallback as its own class (``type(self)``): Models.
    members: Sequence[Model]
    fallback: Model | None

    @property
    def path(self) -> Path:
        """The bundle's folder."""
        return self.run

    @property
    def fields(self) -> tuple[str, ...]:
        """The metadata fields the model reads (others are ignored; absent ones are missing)."""
        return self.spec.metadata

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the head's logits (the one place calibration is
        applied)."""
        return self.calibrator(logits)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """The model's decisions from calibrated probabilities: the calibrator's balanced rule,
        or a binary model's threshold chosen on validation."""
        return self.calibrator.decide(proba, self.threshold)

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
                                     average_views=self.sources[i].get("average_views", ()),
                                     view_transform=self.sources[i].get("view_transform"),
                                     batch_size=self.batch_size,
                                     num_workers=self.num_workers):
                for j, reason in batch.failed.items():
                    errors[j] = reason
                if batch.embeddings is not None:   # None: no row of the batch was read
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

    def encode_metadata(self, table: pd.DataFrame) -> np.ndarray:
        """Metadata rows -> the head's metadata features (the model's fields; absent columns,
        None and blank values are missing)."""
        return self.encoder.transform(clean_metadata(table, self.spec, "input"))

    def groups_of(self, table: pd.DataFrame, source: str | Path = "input") -> np.ndarray | None:
        """Each row's group (patient) id, for a model with context features (else None):
        the dataset's group column (``patient_id``), or in a validated table (``evaluate``:
        it has ``label``) its ``group_id``. A raw table's own ``lesion_id`` is not used for
        another group column: in ISIC 2024 it names lesions."""
        if not self.group_context:
            return None
        wanted = (self.spec.group_column or "group_id").lower()
        validated = "label" in table.columns and "group_id" in table.columns
        col = wanted if wanted in table.columns else "group_id" if validated else None
        if col is None:
            raise DataError(f"{source}: the model uses patient context features "
                            f"(--group-context), so the table needs the group column "
                            f"{wanted}: each lesion is scored among its group's "
                            "others in the same table")
        groups = table[col].to_numpy(dtype=object)
        blank = pd.isna(groups) | (pd.Series(groups, dtype=object).astype(str).str.strip()
                                   == "").to_numpy()
        if len(groups) and blank.all():
            raise DataError(f"{source}: the model uses patient context features "
                            f"(--group-context), but column {col} is blank on all "
                            f"{len(groups)} row(s); fill in each row's {col}")
        if blank.any():   # as in training: a row without a group is a group of its own
            log.warning("%s: %d of %d row(s) have a blank %s: each is scored as a %s of one",
                        source, int(blank.sum()), len(groups), col, col.removesuffix("_id"))
        return groups

    def logits(self, image: np.ndarray, table: pd.DataFrame,
               groups: np.ndarray | None = None) -> np.ndarray:
        """Uncalibrated logits for embeddings + metadata rows (an ensemble: the log of its
        members' mean calibrated probabilities). ``groups``: each row's group, needed by a
        model with context features (computed among these rows, as in training)."""
        if self.members:
            proba = np.mean([m.score(image, table, groups)[1] for m in self.members], axis=0)
            return np.log(np.clip(proba, 1e-12, None))
        meta = self.encode_metadata(table)
        if self.group_context:
            if groups is None:
                raise DataError("the model uses patient context features (--group-context): "
                                "give each row's group id")
            ctx = context_matrix(clean_metadata(table, self.spec, "input"),
                                 self.encoder.numeric, groups, image)
            meta = np.concatenate([meta, ctx.astype(meta.dtype, copy=False)], axis=1)
        return self.model.logits(image, meta, tta=bool(self.views))

    def fallback_rows(self, table: pd.DataFrame) -> np.ndarray:
        """(N,) bool: the rows the image-only fallback scores (every metadata field missing);
        all False for a model without one."""
        if self.fallback is None:
            return np.zeros(len(table), dtype=bool)
        return fallback_rows(self.encode_metadata(table), self.encoder.missing_row())

    def score(self, image: np.ndarray, table: pd.DataFrame, groups: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Logits, calibrated probabilities, decisions and the rows that fell back: rows with
        every metadata field missing are the image-only fallback's (its own calibration and
        threshold), the others the model's."""
        logits = self.logits(image, table, groups)
        proba = self.calibrate(logits)
        decided = self.decide(proba)
        rows = self.fallback_rows(table)
        fb = self.fallback
        if fb is not None and rows.any():   # rows: all False without a fallback
            fb_logits = fb.logits(image[rows], table[rows].reset_index(drop=True))
            fb_proba = fb.calibrate(fb_logits)
            logits[rows], proba[rows], decided[rows] = fb_logits, fb_proba, fb.decide(fb_proba)
        return logits, proba, decided, rows

    def predict_table(self, table: pd.DataFrame,
                      progress: Callable[[int], None] | None = None,
                      cache=None, source: str | Path = "input",
                      embeddings: np.ndarray | None = None) -> Predictions:
        """Rows with ``path`` (or, with ``cache``, ``image_id``s of cached embeddings; with
        ``embeddings``, an (N, D) array of them, one per row) and the model's metadata fields
        -> calibrated probabilities. ``source`` names the table in warnings about its values."""
        table = table.reset_index(drop=True)
        if embeddings is not None:
            image, errors = np.asarray(embeddings, np.float32), [""] * len(table)
            if progress:
                progress(len(table))
        elif cache:
            image, errors = self.cached(table["image_id"].astype(str).tolist(), cache)
            if progress:
                progress(len(table))
        else:
            image, errors = self.embed(table["path"].astype(str).tolist(), progress)
        preds = Predictions(table["image_id"].astype(str).tolist(),
                            table["path"].astype(str).tolist(), self.classes,
                            np.full((len(table), len(self.classes)), np.nan),
                            np.full((len(table), len(self.classes)), np.nan), errors,
                            np.full(len(table), -1, dtype=np.int64), rule=predictor_rule(self))
        ok = preds.ok
        groups = self.groups_of(table, source)
        # Cleaned once here (each bad value warned about once); cleaning is idempotent, so the
        # encoder reads the same values through ``logits``.
        clean = clean_metadata(table, self.spec, source)
        preds.missing = {f: int(m[ok].sum()) for f, m in self.encoder.missing_mask(clean).items()}
        if ok.any():
            scored = self.score(image[ok], clean[ok], None if groups is None else groups[ok])
            preds.logits[ok], preds.proba[ok], preds.decided[ok] = scored[:3]
            preds.fell_back = int(scored[3].sum())
            if preds.fell_back:
                log.info("%d of %d row(s) have every metadata field missing: scored by the "
                         "image-only fallback", preds.fell_back, int(ok.sum()))
        if not ok.all():
            log.warning("%d image(s) could not be scored: %s", int((~ok).sum()), "; ".join(
                f"{p}: {e}" for p, e in zip(preds.paths, errors, strict=False) if e)[:300])
        return preds

    def score_image(self, path: str | Path, meta: dict | None = None, cache=None,
                    **fields) -> Predictions:
        """``predict_image`` as one row of ``Predictions`` (with the fields it was missing)."""
        if self.group_context:
            raise DataError(f"{path}: the model uses patient context features "
                            "(--group-context), which compare a lesion with its patient's "
                            "others; a single image has none: predict a --csv of the "
                            f"patient's lesions with a {self.spec.group_column or 'group'} "
                            "column")
        values = {**(meta or {}), **fields}
        table = pd.DataFrame({"image_id": [Path(path).stem], "path": [str(path)],
                              **{k: [v] for k, v in values.items()}}, dtype=object)
        preds = self.predict_table(table, cache=cache)
        if preds.errors[0]:
            raise DataError(f"{path}: cannot read the image ({preds.errors[0]})")
        return preds

    def predict(self, images: Sequence[PathLike] | None = None, *,
                embeddings=None, metadata: pd.DataFrame | None = None,
                image_ids: Sequence[str] | None = None) -> Predictions:
        """Calibrated probabilities for raw ``images`` (a file path or a list of them), for
        cached ``embeddings`` (a cache; rows looked up by ``image_ids``, else by
        ``metadata['image_id']``) or for an in-memory (N, D) array of ``embeddings`` aligned
        with the ``metadata`` rows, with the model's metadata fields as columns of
        ``metadata`` (a DataFrame, one row per image, in order)."""
        table, where = prediction_table(self, images, embeddings, metadata, image_ids)
        return self.predict_table(table, **where)

    def predict_image(self, image: PathLike, meta: Sequence[str] | Mapping = (), *,
                      embeddings=None, **fields) -> ImagePrediction:
        """One image (with ``embeddings``: its id is the file name's stem, the file need not
        exist) and its metadata: ``FIELD=VALUE`` pairs, a ``{field: value}`` mapping or
        keywords (``age=55``); a field not given (or None) is missing."""
        values = dict(meta) if isinstance(meta, Mapping) else parse_meta(list(meta), self.spec)
        values.update(fields)
        scored = self.score_image(image, values, cache=None if embeddings is None
                                  else cache_paths(embeddings))
        proba = np.asarray(scored.proba[0], dtype=float)
        decision = scored.decisions()[0]   # the fallback's, if it scored
        assert decision is not None   # score_image raises on an unreadable image
        return ImagePrediction(
            str(image), decision.decision,
            dict(zip(self.classes, map(float, proba), strict=False)), values,
            [f for f, n in scored.missing.items() if n], decision.rule, calibration_text(self),
            {c: self.spec.class_names.get(c, "") for c in self.classes}, self.temperature,
            self.threshold, self.weights)

    def predict_csv(self, csv: PathLike, output: PathLike, *, embeddings=None,
                    progress: Callable[[int], None] | None = None,
                    on_start: Callable[[int], None] | None = None) -> Predictions:
        """A CSV of images (column image: a path, or image_id; with ``embeddings``, ids of
        cached rows) with metadata columns; the predictions are written to ``output``."""
        table = load_images(csv, self.spec, files=embeddings is None)
        if on_start:
            on_start(len(table))
        preds = self.predict_table(table, progress=progress, source=csv,
                                   cache=None if embeddings is None else cache_paths(embeddings))
        save_predictions(preds, output)
        return preds

    def evaluate(self, data: PathLike, *, embeddings=None, out: PathLike | None = None,
                 include_seen: bool = False) -> EvaluationResult:
        """Score the model on another labelled set (a folder of any preset or a CSV): metrics,
        bootstrap intervals and the majority baseline (``skinfeat.evaluate_model``;
        ``out=None``: a temporary report folder owned by the result)."""
        import dataclasses
        import tempfile

        from .evaluation import evaluate_run

        tmp = tempfile.TemporaryDirectory(prefix="skinfeat-evaluate-") if out is None else None
        res = evaluate_run(self, data, tmp.name if tmp else out, include_seen=include_seen,
                           cache=None if embeddings is None else cache_paths(embeddings))
        return dataclasses.replace(res, _owner=tmp)

    def explain(self, image: PathLike, metadata: dict | None = None, *,
                target: str | None = None, method: str | None = None) -> Explanation:
        """Heatmap(s) and per-field metadata attribution for one raw image (needs the
        ``explain`` extra); ``skinfeat.deploy.explain.save_figure`` draws the result."""
        from .explain import Explainer

        return Explainer(self).explain(image, metadata, target=target, method=method)

    def explain_to(self, out: PathLike, *, image: PathLike | None = None,
                   csv: PathLike | None = None, meta: Sequence[str] = (),
                   target: str | None = None,
                   method: str | None = None) -> list[tuple[Path, Explanation]]:
        """One PNG and its JSON (the decision fields, probabilities, attribution) per image in
        ``out`` (one ``image`` with ``FIELD=VALUE`` ``meta``, or a ``csv`` with metadata
        columns): (PNG, the explanation) per image."""
        from .explain import Explainer, save_figure, save_json

        ex = Explainer(self)
        if image is not None:
            jobs = [(image, Path(image).stem, parse_meta(list(meta), self.spec))]
        else:
            if csv is None:
                raise InputError("explain_to: give an image or a csv")
            table = load_images(csv, self.spec)
            jobs = [(row["path"], row["image_id"], {f: row[f] for f in ex.fields if f in row})
                    for _, row in table.iterrows()]
        made = []
        for path, name, values in jobs:
            res = ex.explain(path, values, target=target, method=method)
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem) or "image"
            png = save_figure(res, Path(out) / f"{stem}.png", self.weights,
                              self.random_note("meaningless clinically."))
            save_json(res, png.with_suffix(".json"))
            made.append((png, res))
        return made

    def export_onnx(self, path: PathLike, opset: int = 17) -> tuple[Path, Path]:
        """One ONNX graph (image + encoded metadata -> calibrated probabilities) and its JSON
        sidecar; needs the ``export`` extra."""
        from .export import export_onnx

        return export_onnx(self, path, opset=opset)


def load_model(path: PathLike, *, weights_file: PathLike | None = None, device: str = "auto",
               batch_size: int = 32, num_workers: int = 0) -> Model:
    """A run folder written by ``fit`` / ``fit-head`` (or a fold ensemble from ``cv
    --save-models``), or a Hugging Face Hub repo id (``org/name``, ``org/name@revision``) holding
    one, fetched through the Hub's cache (``deploy.hub``)."""
    from .hub import bundle_folder

    return Model(bundle_folder(path), weights_file=weights_file, device=device,
                 batch_size=batch_size, num_workers=num_workers)
