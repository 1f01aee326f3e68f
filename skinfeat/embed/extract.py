"""Stage one: every image once through the frozen backbone, pooled embeddings into the cache."""
from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..version import __version__
from .backbone import DEFAULT_BACKBONE, create_backbone
from .cache import CacheContents, CacheWriter, stored_identity
from .cache_identity import CacheIdentity, comparable
from .device import default_batch_size, resolve_device, resolve_precision
from .encoders import DEFAULT_POOL, POOLS, FamilyEncoder, resolve_backbone
from .engines import (  # noqa: F401
    CALIBRATION_IMAGES,
    Embedder,
    Int8Embedder,
    PooledFeatures,
    calibration_files,
    calibration_identity,
    make_embedder,
    require_int8,
)
from .pooling import stage_count
from .transform import TransformSpec, load_image, to_tensor, transform_for
from .turns import VIEW_NAMES, VIEW_PRESETS, turn, view_preset  # noqa: F401  (their home)
from .weights import WeightSource

log = logging.getLogger(__name__)

# torch.compile costs ~30 s once on 2 cores and then roughly doubles bf16 throughput: worth it
# from a few thousand images on.
COMPILE_MIN_IMAGES = 2000


_TRANSPOSE = {"flip": Image.Transpose.FLIP_LEFT_RIGHT, "rot90": Image.Transpose.ROTATE_90,
              "rot180": Image.Transpose.ROTATE_180, "rot270": Image.Transpose.ROTATE_270}
# How the copies are made, part of the identity of caches with views (caches made one way are
# not mixed with the other). Stored --views, and every view under the centre crop, come from the
# decoded image before the resize, so a view is exactly the embedding of the photo turned:
# turning the cropped tensor instead would shift the crop by a pixel wherever (side - size) is
# odd.
VIEW_TRANSFORM = "image-before-resize"
# --average-views under the squash turns the squashed tensor (``embed.turns``), as export's
# graph and explain do, so the graph equals predict. Against turning the decoded image it
# changes only the 8-bit rounding between the resize's two axes (the squash scales each axis on
# its own, and a quarter turn swaps the axes with their scales): on real HAM10000 images with
# MobileNetV2, embeddings within 1.5 % (relative L2; cosine >= 0.9999). Averaged-view caches
# made before it (the first way) still predict as they were made.
TURNED_TENSOR = "squashed-tensor-turned"


def views_made_by(resize: str, views: Sequence[str], average_views: Sequence[str]
                  ) -> str | None:
    """The ``view_transform`` of a cache's identity (None without views)."""
    if not views and not average_views:
        return None
    return TURNED_TENSOR if average_views and resize == "squash" else VIEW_TRANSFORM


def apply_view(img: Image.Image, view: str) -> Image.Image:
    """Deterministic view of a decoded image: horizontal flip or counter-clockwise rotation by
    k*90 degrees (``torch.rot90`` on an HxW array turns the same way)."""
    return img.transpose(_TRANSPOSE[view])


class ImageFiles(Dataset):
    """Decodes images for the DataLoader: each item is the image and its views, stacked
    (1 + V, C, H, W); a bad file yields a reason instead of a crash."""

    def __init__(self, paths: Sequence[str], spec: TransformSpec, views: Sequence[str] = (),
                 turned: bool = False):
        """``turned``: views turn the resized tensor (``TURNED_TENSOR``), else the decoded
        image."""
        self.paths, self.spec, self.views, self.turned = list(paths), spec, tuple(views), turned

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], self.spec)
            first = to_tensor(img, self.spec)
            x = [first] + [turn(first, v) if self.turned else to_tensor(apply_view(img, v),
                                                                        self.spec)
                           for v in self.views]
            return i, torch.stack(x), ""
        except Exception as exc:  # any decoder error means "skip this image", recorded by id
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            return i, torch.zeros(1 + len(self.views), 3, self.spec.size, self.spec.size), reason


@dataclass
class ExtractResult:
    contents: CacheContents
    embedded: int          # newly embedded in this run
    skipped: int           # already in the cache
    failures: dict         # image_id -> reason, over the whole cache
    precision: str
    device: str


def library_versions() -> dict:
    import h5py
    import timm
    return {"skinfeat": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "python": platform.python_version()}


def cache_identity(backbone: str, weights: WeightSource, spec: TransformSpec, precision: str,
                   views: Sequence[str], shard: tuple[int, int] | None = None,
                   calibration: dict | None = None, *, family: str = "timm",
                   pool: str | None = None, embed_dim: int | None = None,
                   location: str | None = None, layers: str = "last",
                   average_views: Sequence[str] = ()) -> dict:
    """What makes two embeddings comparable (a ``CacheIdentity``, as its dict); a cache refuses
    rows of another identity.

    int8 caches also name their calibration set (the quantized model depends on it)."""
    ident = {"backbone": backbone, "family": family, "weights": weights.identity(),
             "preprocessing": spec.to_dict(), "pool": pool or DEFAULT_POOL[family],
             "precision": precision, "views": list(views), "embed_dim": embed_dim,
             "skinfeat_version": __version__, "location": location, "layers": layers,
             "average_views": list(average_views)}
    ident["view_transform"] = views_made_by(spec.resize, views, average_views)
    if calibration is not None:
        ident["calibration"] = calibration
    if shard is not None and shard[1] > 1:
        ident["shard"] = f"{shard[0]}/{shard[1]}"
    return CacheIdentity.from_dict({k: v for k, v in ident.items() if v is not None}).to_dict()


def encoder_width(model: torch.nn.Module) -> int | None:
    """The pooled width an encoder gives (timm's ``num_features``), for the identity."""
    width = getattr(model, "num_features", None)
    return int(width) if isinstance(width, int) else None


# ``--layers``' default for a timm encoder: its last three stages, each standardised, side by
# side. Chosen by issue 29's paired compare (MobileNetV2 on all 10,015 HAM10000 images,
# lesion-grouped 5 folds x 3 seeds, the default head): image features +1.33 [+0.17, +2.51]
# points of balanced accuracy, fused -0.48 [-1.56, +0.63] (docs/features.md). A timm model
# without three stages, and the open_clip and transformers families, pool the last layer only.
TIMM_DEFAULT_LAYERS = "last3"


def default_layers(model: torch.nn.Module, spec: TransformSpec, pool: str | None,
                   cache_path: str | os.PathLike) -> str:
    """``--layers`` when not given: the layers an existing cache was made with (so a cache of
    an earlier default keeps growing as it was made), else ``TIMM_DEFAULT_LAYERS`` for a timm
    model that has that many stages, else ``last``."""
    have = stored_identity(cache_path)
    if have and "backbone" in have:      # a skinfeat cache (no key: made before --layers)
        return have.get("layers") or "last"
    if isinstance(model, FamilyEncoder):
        return "last"
    try:
        pooled_width(model, spec, pool, TIMM_DEFAULT_LAYERS)
    except InputError:
        return "last"
    return TIMM_DEFAULT_LAYERS


# ``--average-views``' default: the image and its flip and three quarter turns (five encoder
# passes), their embeddings averaged into the one stored vector. Chosen by issue 29's paired
# compare (MobileNetV2 on all 10,015 HAM10000 images, lesion-grouped 5 folds x 3 seeds, the
# default model, against the single view): image features +3.76 [+2.70, +4.89] points of
# balanced accuracy (62.2 %), fused +4.19 [+2.99, +5.44] (64.8 %), at 4.2x stage one's time
# (docs/features.md). A dermoscopic photo has no up or left, so every encoder family gets it.
DEFAULT_AVERAGE_VIEWS = VIEW_NAMES


def default_average_views(views: Sequence[str], cache_path: str | os.PathLike
                          ) -> tuple[str, ...]:
    """``--average-views`` when not given: none with ``views`` (the copies are stored, not
    averaged), the views an existing cache was made with (so a cache of an earlier default
    keeps growing as it was made), else ``DEFAULT_AVERAGE_VIEWS``."""
    if views:
        return ()
    have = stored_identity(cache_path)
    if have and "backbone" in have:      # a skinfeat cache (no key: made before the option)
        return tuple(have.get("average_views") or ())
    return DEFAULT_AVERAGE_VIEWS


def pooled_width(model: torch.nn.Module, spec: TransformSpec, pool: str | None,
                 layers: str) -> int | None:
    """The embedding width under ``pool`` and ``layers``: the encoder's own for the defaults,
    else from one blank image through it (which refuses, in one line, a pool or layers the
    model cannot give before the cache is touched)."""
    if layers == "last" and pool in (None, "avg") and not isinstance(model, FamilyEncoder):
        return encoder_width(model)
    if isinstance(model, FamilyEncoder):
        return model.num_features
    with torch.inference_mode():
        out = PooledFeatures(model, pool, layers)(torch.zeros(1, 3, spec.size, spec.size))
    return int(out.shape[-1])


@dataclass
class EmbeddedBatch:
    """One DataLoader batch embedded: ``rows`` index the input paths; unreadable ones are in
    ``failed`` (row -> reason) and have no embedding."""
    rows: np.ndarray
    embeddings: np.ndarray | None        # (len(rows), D)
    views: np.ndarray | None             # (len(rows), V, D) when views were asked for
    failed: dict[int, str]
    size: int                            # rows read in this batch, embedded or not


def embed_files(embedder: Embedder | Int8Embedder, paths: Sequence[str], spec: TransformSpec, *,
                views: Sequence[str] = (), batch_size: int = 32, num_workers: int = 0,
                average_views: Sequence[str] = (), view_transform: str | None = None
                ) -> Iterator[EmbeddedBatch]:
    """Decode (in DataLoader workers) and embed image files batch by batch, streaming: stage
    one and predict share this loop, so a raw image is embedded exactly as the cache was filled.

    ``average_views``: the embedding is the mean of the image's and these views' embeddings
    (one vector per image, for stage-two models without test-time views); ``view_transform``:
    how the cache being filled or matched made its views (``TURNED_TENSOR`` or, the default,
    ``VIEW_TRANSFORM``)."""
    views, average_views = tuple(views), tuple(average_views)
    loader = DataLoader(ImageFiles(list(paths), spec, views + average_views,
                                   turned=view_transform == TURNED_TENSOR),
                        batch_size=batch_size, num_workers=num_workers,
                        pin_memory=embedder.device.type == "cuda")
    for idx, x, reasons in loader:
        ok = torch.tensor([r == "" for r in reasons], dtype=torch.bool)
        failed = {int(i): r for i, r in zip(idx.tolist(), reasons, strict=False) if r}
        emb = vemb = None
        if ok.any():
            x = x[ok]
            emb = embedder(x[:, 0]).numpy()
            if average_views:
                first = 1 + len(views)
                emb = np.asarray(np.mean([emb] + [embedder(x[:, first + k]).numpy()
                                                  for k in range(len(average_views))], axis=0,
                                         dtype=np.float64), dtype=np.float32)
            if views:
                vemb = np.stack([embedder(x[:, 1 + k]).numpy() for k in range(len(views))], 1)
        yield EmbeddedBatch(idx[ok].numpy(), emb, vemb, failed, len(reasons))


def shard_rows(image_ids: Sequence[str], shard: tuple[int, int]) -> np.ndarray:
    """Rows of shard i of n, by sorted image id, so every worker agrees without talking."""
    i, n = shard
    if not 0 <= i < n:
        raise InputError(f"shard must be I/N with 0 <= I < N, got {i}/{n}")
    order = np.argsort(np.asarray(image_ids, dtype=str), kind="stable")
    return np.sort(order[i::n])


def default_workers(device: torch.device | None = None) -> int:
    """Decode workers: on a CPU one per core but one (decoding shares the cores with the model);
    a GPU waits on decoding, so it gets more."""
    cores = os.cpu_count() or 1
    cap = 8 if device is not None and device.type in ("cuda", "mps") else 4
    return max(0, min(cap, cores - 1))


def resume_calibration(cache_path: str | os.PathLike, identity: dict) -> dict | None:
    """The calibration set of an existing int8 cache that matches ``identity`` in all else.

    A resumed or grown extract keeps the quantized model that filled the cache, even when new
    images shift the hash-ranked calibration sample: with the same engine and sample size, the
    cache's calibration is the one to use.
    """
    have = stored_identity(cache_path)
    if not have or have.get("precision") != "int8" or "calibration" not in have:
        return None
    mine, theirs = identity["calibration"], have["calibration"]
    if any(theirs.get(k) != mine.get(k) for k in ("engine", "images")):
        return None  # another engine or sample size was asked for: refused as another identity
    same = {k: v for k, v in comparable(have).items() if k != "calibration"} == \
        {k: v for k, v in comparable(identity).items() if k != "calibration"}
    return have["calibration"] if same else None


def extract(table: pd.DataFrame, cache_path: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE,
            weights: WeightSource = WeightSource("pretrained"), resize: str = "squash",
            image_size: int | str | None = None, precision: str = "auto", device: str = "auto",
            batch_size: int | None = None, num_workers: int | None = None,
            views: Sequence[str] = (), shard: tuple[int, int] | None = None,
            pool: str | None = None, layers: str | None = None,
            average_views: Sequence[str] | None = None, compile: str = "auto",
            calibration_images: int = CALIBRATION_IMAGES,
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Embed every image of ``table`` not yet in the cache; resumable and crash-safe.

    ``on_start(todo, skipped)`` is called once the work is known; ``progress(n)`` after each batch.
    ``compile``: ``on``, ``off`` or ``auto`` (on from COMPILE_MIN_IMAGES images to embed).
    ``precision="int8"``: OpenVINO int8, calibrated on ``calibration_images`` images of the whole
    ``table`` (before sharding, so every shard gets the same model).
    ``backbone``: a timm name, ``open_clip:...``, ``hf:...`` or ``local-dir:FOLDER``
    (``encoders.parse_backbone``); ``pool``: the family's pooling [default: its first choice];
    ``layers``: last, last2 or last3 stages pooled (``pooling``; None: ``default_layers``,
    last3 for a timm model, last for the other families); ``image_size``: pixels, or
    ``train`` / ``test`` (``transform.transform_for``); ``average_views``: views averaged with
    the image into its one embedding (not with ``views``; None: ``default_average_views``, all
    four for a new cache, an existing cache's own, none with ``views``).
    """
    # int8 runs on the CPU whatever GPU is present; an explicit GPU device is an error.
    dev = (torch.device("cpu") if precision == "int8" and device == "auto"
           else resolve_device(device))
    prec = resolve_precision(precision, dev)
    views = tuple(views)
    average_views = default_average_views(views, cache_path) if average_views is None \
        else tuple(average_views)
    unknown = sorted((set(views) | set(average_views)) - set(VIEW_NAMES))
    if unknown:
        raise InputError(f"unknown view(s) {unknown}; expected some of {VIEW_NAMES}")
    if views and average_views:
        raise InputError("--views with --average-views: store the views, or average them into "
                         "the embedding, not both")
    if layers is not None:
        stage_count(layers)   # an unknown --layers fails before the backbone is built
    ref, weights = resolve_backbone(backbone, weights)
    if pool is not None and pool not in POOLS[ref.family]:
        raise InputError(f"--pool {pool}: a {ref.family} encoder pools by one of "
                         f"{', '.join(POOLS[ref.family])}")
    model = create_backbone(ref.name, weights)
    spec = transform_for(model, resize, image_size)
    if layers is None:
        layers = default_layers(model, spec, pool, cache_path)
    if isinstance(model, FamilyEncoder):
        model.set_options(pool, layers)
    width = pooled_width(model, spec, pool, layers)   # also refuses a pool the model lacks
    calib_files, calibration = None, None
    if prec == "int8":
        require_int8()
        calib_files = calibration_files(table["image_id"].tolist(), table["path"].tolist(),
                                        calibration_images)
        calibration = calibration_identity(calib_files)
    identity = cache_identity(ref.name, weights, spec, prec, views, shard, calibration,
                              family=ref.family, pool=pool, embed_dim=width,
                              location=ref.location, layers=layers,
                              average_views=average_views)
    if prec == "int8":
        kept = resume_calibration(cache_path, identity)
        if kept is not None and kept != calibration:
            log.info("int8: keeping the calibration set the cache was made with")
            identity["calibration"], calib_files = kept, None
    attrs = {"versions": __import__("json").dumps(library_versions()), "backbone": ref.name,
             "weights": weights.describe(), "precision": prec}
    rows = shard_rows(table["image_id"].tolist(), shard) if shard else np.arange(len(table))
    sub = table.iloc[rows]
    with CacheWriter(cache_path, identity, attrs) as writer:
        todo = sub[~sub["image_id"].isin(writer.done)]
        skipped = len(sub) - len(todo)
        log.info("extract: %d to embed, %d already cached (%s, %s, %s)", len(todo), skipped,
                 ref.name, prec, dev)
        if on_start:
            on_start(len(todo), skipped)
        if len(todo):
            use_compile = compile == "on" or (compile == "auto" and len(todo) >= COMPILE_MIN_IMAGES)
            embedder = make_embedder(model, dev, identity, spec, compile=use_compile,
                                     calibration=calib_files)
            workers = default_workers(dev) if num_workers is None else num_workers
            ids, paths = todo["image_id"].tolist(), todo["path"].tolist()
            for batch in embed_files(embedder, paths, spec, views=views,
                                     average_views=average_views,
                                     view_transform=identity.get("view_transform"),
                                     batch_size=batch_size or default_batch_size(dev),
                                     num_workers=workers):
                for j, reason in batch.failed.items():
                    writer.add_failure(ids[j], reason)
                    log.warning("skipped %s: %s", paths[j], reason)
                if batch.embeddings is not None:   # None: no row of the batch was read
                    writer.add([ids[j] for j in batch.rows], batch.embeddings, batch.views)
                if progress:
                    progress(batch.size)
        contents = writer.finalize()
    return ExtractResult(contents, len(todo) - len(writer.failures.keys() & set(todo["image_id"])),
                         skipped, writer.failures, prec, str(dev))
