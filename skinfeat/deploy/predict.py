"""Predict: a trained run's bundle + raw images and metadata -> calibrated class probabilities.

An image goes through exactly what filled the training cache: the backbone rebuilt from the
bundle's identity (timm name; random weights from the stored seed, timm's pretrained weights, or
a local checkpoint whose sha256 must match), the stored ``TransformSpec``, and stage one's
``Embedder`` at the cache's precision. Then the bundle's metadata encoder, the head and the stored
temperature. Metadata fields are the ones the model was trained with (its dataset description
travels in the bundle); a field that is absent or blank is missing, exactly as in training.
Loading the bundle (typed config, model or ensemble members, backbone) is ``loading.py``'s;
this module embeds, calibrates and decides.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import DataError, clean_metadata
from ..data.spec import DatasetSpec
from ..embed.extract import embed_files
from ..learn.context import context_matrix
from ..learn.fallback import fallback_rows
from .bundle import CONFIG, BundleError, atomic_write_text
from .decision import FIELDS, Decision, decisions, predictor_rule
from .loading import (  # noqa: F401 (their home
    LoadedBundle,
    bundle_calibrator,
    bundle_spec,
    load_model,  # before the split)
    load_stage_two,
    weight_source,
)

log = logging.getLogger(__name__)


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
    fell_back: int = 0   # scored rows with every field missing, scored by the image-only fallback
    rule: str = ""       # the decision rule in one line (``decision.decision_rule``)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e == "" for e in self.errors], dtype=bool)

    def decisions(self) -> list[Decision | None]:
        """Each row's decision fields (None where the row was not scored)."""
        return decisions(self.classes, self.proba, self.decided, self.rule)

    def to_frame(self) -> pd.DataFrame:
        """One row per input: the decision fields (``decision.FIELDS``), then p_CLASS."""
        frame = pd.DataFrame({"image_id": self.image_ids, "path": self.paths})
        blank = {**dict.fromkeys(FIELDS, ""), "most_probable_probability": np.nan}
        rows = [d.to_dict() if d else blank for d in self.decisions()]
        for name in FIELDS:
            frame[name] = [r[name] for r in rows]
        frame["prediction"] = frame["decision"]   # the older name of "decision"
        top = "most_probable_probability"
        frame[top] = frame[top].astype(float).round(6)
        for j, c in enumerate(self.classes):
            frame[f"p_{c}"] = np.round(self.proba[:, j], 6)
        frame["error"] = self.errors
        return frame


def save_predictions(preds: Predictions, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, preds.to_frame().to_csv(index=False))


class Predictor(LoadedBundle):
    """A trained run, ready to score raw images with metadata: the loaded bundle
    (``loading.LoadedBundle``) + embedding, calibration and decisions."""

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
        if rows.any():
            fb = self.fallback
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

    def predict_image(self, path: str | Path, meta: dict | None = None, cache=None,
                      **fields) -> dict[str, float]:
        """Calibrated class probabilities for one image. Metadata by field name (``meta`` or
        keywords, e.g. ``age=55``); an absent field or ``None`` is missing. With ``cache``,
        the image's embedding is looked up by its id (the file name's stem)."""
        preds = self.score_image(path, meta, cache, **fields)
        return dict(zip(self.classes, map(float, preds.proba[0]), strict=False))
