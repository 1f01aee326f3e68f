"""Stage one: every image once through the frozen backbone, pooled embeddings into the cache."""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .backbone import (DEFAULT_BACKBONE, TransformSpec, WeightSource, create_backbone, preprocess,
                       resolve_device, resolve_precision, transform_for)
from .cache import CacheContents, CacheWriter

log = logging.getLogger(__name__)

VIEW_NAMES = ("flip", "rot90", "rot180", "rot270")
VIEW_PRESETS = {"none": (), "flip": ("flip",), "rot90": ("rot90",), "all": VIEW_NAMES}
# torch.compile costs ~30 s once on 2 cores and then roughly doubles bf16 throughput: worth it
# from a few thousand images on.
COMPILE_MIN_IMAGES = 2000


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """Deterministic view of an NCHW batch: horizontal flip or rotation by k*90 degrees."""
    if view == "flip":
        return torch.flip(x, dims=[3])
    k = {"rot90": 1, "rot180": 2, "rot270": 3}[view]
    return torch.rot90(x, k, dims=[2, 3])


class ImageFiles(Dataset):
    """Decodes images for the DataLoader; a bad file yields a reason instead of a crash."""

    def __init__(self, paths: Sequence[str], spec: TransformSpec):
        self.paths, self.spec = list(paths), spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, preprocess(self.paths[i], self.spec), ""
        except Exception as exc:  # any decoder error means "skip this image", recorded by id
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            return i, torch.zeros(3, self.spec.size, self.spec.size), reason


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
                   views: Sequence[str], shard: tuple[int, int] | None = None) -> dict:
    """What makes two embeddings comparable; a cache refuses rows of another identity."""
    ident = {"backbone": backbone, "weights": weights.identity(), "preprocessing": spec.to_dict(),
             "pool": "avg", "precision": precision, "views": list(views)}
    if shard is not None and shard[1] > 1:
        ident["shard"] = f"{shard[0]}/{shard[1]}"
    return ident


class PooledFeatures(torch.nn.Module):
    """Backbone -> one vector per image.

    Pooling is a plain global average of the last feature map, as Keras' ``pooling="avg"`` in
    the reference; timm's pre-logits output would add ConvNeXt's head LayerNorm, which the
    reference does not have. Models whose features are not a 2-D map (ViTs) use timm's head pooling.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 4:
            return feats.mean(dim=(2, 3))
        return self.model.forward_head(feats, pre_logits=True)


class Embedder:
    """The frozen backbone plus how to run it: device, precision, channels-last, compilation.

    ``compile`` uses ``torch.compile`` (Inductor fuses the bf16 convolutions, LayerNorms and
    GELUs); it costs ~30 s once, so it pays off on thousands of images, not on tests. Batches are
    padded to one fixed size so the compiled graph is never rebuilt for the last short batch.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 compile: bool = False):
        self.device, self.precision = device, precision
        self.net = PooledFeatures(model.to(device).to(memory_format=torch.channels_last)).eval()
        self.compiled = torch.compile(self.net, dynamic=False) if compile else None
        self.batch_size: int | None = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.net(x)
        n = x.shape[0]
        self.batch_size = self.batch_size or n
        if n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        try:
            return self.compiled(x)[:n]
        except Exception as exc:  # no C++ compiler, unsupported op: eager still works
            log.warning("torch.compile failed (%s); continuing without it",
                        str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
            self.compiled = None
            return self.net(x)[:n]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            return self._run(x).float().cpu()


@dataclass
class EmbeddedBatch:
    """One DataLoader batch embedded: ``rows`` index the input paths; unreadable ones are in
    ``failed`` (row -> reason) and have no embedding."""
    rows: np.ndarray
    embeddings: np.ndarray | None        # (len(rows), D)
    views: np.ndarray | None             # (len(rows), V, D) when views were asked for
    failed: dict[int, str]
    size: int                            # rows read in this batch, embedded or not


def embed_files(embedder: Embedder, paths: Sequence[str], spec: TransformSpec, *,
                views: Sequence[str] = (), batch_size: int = 32,
                num_workers: int = 0) -> Iterator[EmbeddedBatch]:
    """Decode (in DataLoader workers) and embed image files batch by batch, streaming: stage
    one and predict share this loop, so a raw image is embedded exactly as the cache was filled."""
    loader = DataLoader(ImageFiles(list(paths), spec), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=embedder.device.type == "cuda")
    for idx, x, reasons in loader:
        ok = torch.tensor([r == "" for r in reasons], dtype=torch.bool)
        failed = {int(i): r for i, r in zip(idx.tolist(), reasons) if r}
        emb = vemb = None
        if ok.any():
            x = x[ok]
            emb = embedder(x).numpy()
            if views:
                vemb = np.stack([embedder(apply_view(x, v)).numpy() for v in views], 1)
        yield EmbeddedBatch(idx[ok].numpy(), emb, vemb, failed, len(reasons))


def shard_rows(image_ids: Sequence[str], shard: tuple[int, int]) -> np.ndarray:
    """Rows of shard i of n, by sorted image id, so every worker agrees without talking."""
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {i}/{n}")
    order = np.argsort(np.asarray(image_ids, dtype=str), kind="stable")
    return np.sort(order[i::n])


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def extract(table: pd.DataFrame, cache_path: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE,
            weights: WeightSource = WeightSource("pretrained"), resize: str = "squash",
            image_size: int | None = None, precision: str = "auto", device: str = "auto",
            batch_size: int = 32, num_workers: int | None = None, views: Sequence[str] = (),
            shard: tuple[int, int] | None = None, compile: str = "auto",
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Embed every image of ``table`` not yet in the cache; resumable and crash-safe.

    ``on_start(todo, skipped)`` is called once the work is known; ``progress(n)`` after each batch.
    ``compile``: ``on``, ``off`` or ``auto`` (on from COMPILE_MIN_IMAGES images to embed).
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    unknown = sorted(set(views) - set(VIEW_NAMES))
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; expected some of {VIEW_NAMES}")
    model = create_backbone(backbone, weights)
    spec = transform_for(model, resize, image_size)
    identity = cache_identity(backbone, weights, spec, prec, views, shard)
    attrs = {"versions": __import__("json").dumps(library_versions()), "backbone": backbone,
             "weights": weights.describe(), "precision": prec}
    rows = shard_rows(table["image_id"].tolist(), shard) if shard else np.arange(len(table))
    sub = table.iloc[rows]
    with CacheWriter(cache_path, identity, attrs) as writer:
        todo = sub[~sub["image_id"].isin(writer.done)]
        skipped = len(sub) - len(todo)
        log.info("extract: %d to embed, %d already cached (%s, %s, %s)", len(todo), skipped,
                 backbone, prec, dev)
        if on_start:
            on_start(len(todo), skipped)
        if len(todo):
            use_compile = compile == "on" or (compile == "auto" and len(todo) >= COMPILE_MIN_IMAGES)
            embedder = Embedder(model, dev, prec, compile=use_compile)
            workers = default_workers() if num_workers is None else num_workers
            ids, paths = todo["image_id"].tolist(), todo["path"].tolist()
            for batch in embed_files(embedder, paths, spec, views=views, batch_size=batch_size,
                                     num_workers=workers):
                for j, reason in batch.failed.items():
                    writer.add_failure(ids[j], reason)
                    log.warning("skipped %s: %s", paths[j], reason)
                if len(batch.rows):
                    writer.add([ids[j] for j in batch.rows], batch.embeddings, batch.views)
                if progress:
                    progress(batch.size)
        contents = writer.finalize()
    return ExtractResult(contents, len(todo) - len(writer.failures.keys() & set(todo["image_id"])),
                         skipped, writer.failures, prec, str(dev))
