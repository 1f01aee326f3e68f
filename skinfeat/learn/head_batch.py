"""The head's one training loop: the heads of k splits (the folds of a CV, one configuration)
trained as one batched network; a single fit (``fit_head``) is a batch of one.

Each split's head is what it would be trained alone, up to float rounding: the same initial
weights (each built from the same seed), the same dropout masks and the same shuffles (each
split draws from its own generators), its own Adam state and step count, its own early
stopping. What is shared is the work: the k weight sets are stacked along a first axis and the
step runs the module's own ``forward`` on them (a template head whose parameters are the
stacked tensors, registered as its ``nn.Parameter`` attributes; its layers take stacked weights,
``head.StackableLinear``): one batched matrix product per layer and one optimizer update for all
splits, instead of k small steps whose cost is mostly per-op overhead on a CPU. (Binding them
per step with ``torch.func.functional_call`` instead walks the module tree and swaps and
restores every parameter on every call: +0.15 ms a step, 5 % of a fit-head.)

Splits differ in size, so at the end of an epoch some splits have no batch left: they sit that
step out (no update, no optimizer step). A split whose metadata encoder saw fewer categories
has fewer metadata columns: its first metadata layer is padded with zero columns that meet zero
inputs, so they get zero gradients and stay zero (removed again in the returned heads).
``tests/test_head_batch.py`` checks the weights and the cv metrics against independent fits.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from .head import FusionHead, HeadConfig, _eval_view, one_thread
from .optim import Adam
from .rows import Rows

log = logging.getLogger(__name__)

Part = tuple  # (image, meta, y) arrays of one split side

# Called after every epoch of a batched fit with the epoch and each member's best validation
# score so far (lower is better): what a search prunes unpromising trials on. Scoped to a
# ``with epoch_hook(fn):`` block (a context variable: other threads and later calls see none).
_EPOCH_HOOK: ContextVar[Callable[[int, list[float]], None] | None] = ContextVar(
    "skinfeat_epoch_hook", default=None)


@contextmanager
def epoch_hook(fn: Callable[[int, list[float]], None] | None) -> Iterator[None]:
    """Within the block, ``fn(epoch, best_scores)`` after every epoch of every batched fit;
    an exception it raises (e.g. optuna.TrialPruned) ends the fit."""
    token = _EPOCH_HOOK.set(fn)
    try:
        yield
    finally:
        _EPOCH_HOOK.reset(token)


class DropoutNoise:
    """The dropout masks of one fit, from their own seeded numpy stream (PCG64).

    Each element takes 16 random bits, kept when they fall below ``round(keep * 2**16)``: the
    keep probability is exact to 1/65536, and a mask costs a sixth of drawing it from torch's CPU
    generator (one double per element; ``bernoulli_`` twice that), which was a third of a head
    step.
    Each member of a batched fit draws from its own stream, in the same order (image layer,
    then classifier), so a head's weights do not depend on which heads it trained beside.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 0xD2])   # a stream of its own, not the weights'

    def keep(self, n: int, keep: float) -> np.ndarray:
        """``n`` booleans, each True with probability ``keep``."""
        bits = self.rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n]
        return bits < np.uint16(min(round(keep * 65536), 65535))


def dropout_scale(keep: float) -> torch.Tensor:
    """A kept element's factor, ``1 / keep``, computed in float32."""
    return torch.ones(1).div_(keep)


@dataclass
class FitResult:
    model: FusionHead
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    class_weights: list[float] = field(default_factory=list)


def _pick_view(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(N, V, D) -> (N, D): one random view per row (feature-level augmentation)."""
    choice = torch.randint(image.shape[1], (image.shape[0],), generator=gen)
    return image[torch.arange(image.shape[0]), choice]


MetaField = tuple  # (lo, hi) or (lo, hi, missing values): columns lo:hi of one metadata field


def _blank_fields(meta: torch.Tensor, fields: list[MetaField], p: float,
                  gen: torch.Generator, p_all: float = 0.0) -> torch.Tensor:
    """Set whole metadata fields to their "missing" encoding at random, so that training sees
    exactly the vector that a blank, unknown, unseen or absent value gets at predict time
    (``MetadataEncoder.dropout_fields``). A field given as ``(lo, hi)`` is blanked to zeros.
    ``p_all`` blanks every field of a row at once: independent fields at ``p`` alone leave a
    row with no metadata at all only ``p ** len(fields)`` of the time."""
    meta = meta.clone()
    every = torch.rand(meta.shape[0], generator=gen) < p_all if p_all > 0 else None
    for f in fields:
        lo, hi = int(f[0]), int(f[1])
        drop = torch.rand(meta.shape[0], generator=gen) < p
        if every is not None:
            drop |= every
        fill = torch.as_tensor(f[2], dtype=meta.dtype) if len(f) > 2 else 0.0
        meta[drop, lo:hi] = fill
    return meta


def _val_score(logits: torch.Tensor, y: torch.Tensor, n_classes: int, stop_on: str) -> float:
    """Lower is better, whatever the criterion."""
    if stop_on == "loss":
        return float(F.cross_entropy(logits, y))
    present = torch.bincount(y, minlength=n_classes) > 0
    if stop_on == "balanced_loss":
        ce = F.cross_entropy(logits, y, reduction="none")
        per_class = torch.zeros(n_classes).index_add_(0, y, ce) / \
            torch.bincount(y, minlength=n_classes).clamp(min=1)
        return float(per_class[present].mean())
    hit = (logits.argmax(1) == y).float()
    recall = torch.zeros(n_classes).index_add_(0, y, hit) / \
        torch.bincount(y, minlength=n_classes).clamp(min=1)
    return -float(recall[present].mean())


class _Split:
    """One split's data and its own generators: weights, dropout masks, epoch draws."""

    def __init__(self, train: Part, val: Part, n_classes: int, cfg: HeadConfig,
                 meta_fields: list[MetaField] | None, meta_dim: int):
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.xi, self.rows = _image_rows(train[0], cfg)
        self.xm, self.y = torch.as_tensor(train[1]).float(), torch.as_tensor(train[2]).long()
        vi = val[0].view(0) if isinstance(val[0], Rows) and val[0].ndim == 3 else val[0]
        vi = torch.from_numpy(vi.gather()) if isinstance(vi, Rows) else torch.as_tensor(vi)
        self.vi = _eval_view(vi.float())
        self.vm, self.vy = torch.as_tensor(val[1]).float(), torch.as_tensor(val[2]).long()
        self.meta_fields, self.n = meta_fields, len(self.y)
        self.model = FusionHead.from_config(self.xi.shape[-1], self.xm.shape[1], n_classes, cfg)
        self.noise = DropoutNoise(cfg.seed)
        self.negatives = self.positives = None
        counts = np.bincount(self.y.numpy(), minlength=n_classes).astype(np.float64)
        if cfg.negative_ratio is not None:
            if n_classes != 2:
                raise InputError(f"negative_ratio is for binary tasks; this one has {n_classes} "
                                 "classes")
            keep = min(int(counts[0]), int(round(cfg.negative_ratio * counts[1])))
            if counts[1] and keep < counts[0]:
                self.negatives = torch.nonzero(self.y == 0).flatten()
                self.positives = torch.nonzero(self.y == 1).flatten()
                self.n = int(counts[1]) + keep
        # An epoch's composition: negatives subsampled at rate keep / negatives. The loss
        # weights are balanced over that composition; the class weights reported (what
        # calibration undoes) are loss weight x sampling rate, the weighting of the full data.
        rate = np.ones(n_classes)
        if self.negatives is not None:
            rate[0] = (self.n - counts[1]) / counts[0]
        seen, weights = counts * rate, np.ones(n_classes)
        if cfg.class_weight == "balanced":   # sklearn's 'balanced' over the epoch's rows
            present = seen > 0
            weights = np.zeros(n_classes)
            weights[present] = seen.sum() / (present.sum() * seen[present])
        self.class_weights = weights * rate
        self.sample_w = torch.as_tensor(weights, dtype=torch.float32)
        self.pad = meta_dim - self.xm.shape[1]
        self.history: list[dict] = []
        self.best, self.best_epoch, self.waited = np.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def epoch(self, cfg: HeadConfig) -> None:
        """Draw this epoch's view choice, metadata blanking and shuffle."""
        img = _pick_view(self.xi, self.gen) if self.xi.ndim == 3 and cfg.view_augment \
            else _eval_view(self.xi)
        # Whole-row blanking teaches a fused head to fall back on the image; a head without
        # one has nothing to fall back on, and blanked rows are only label noise to it (on the
        # real HAM10000 metadata a metadata-only head gained nothing and trained 40 % more
        # epochs with it).
        all_rows = cfg.meta_dropout_all if self.model.use_image else 0.0
        fields = self.meta_fields if cfg.meta_dropout > 0 or all_rows > 0 else None
        meta = _blank_fields(self.xm, fields, cfg.meta_dropout, self.gen,
                             all_rows) if fields else self.xm
        if self.negatives is None or self.positives is None:   # set together, or neither
            order = torch.randperm(self.n, generator=self.gen)
        else:   # all positives + a fresh draw of negatives, shuffled together
            drawn = torch.randperm(len(self.negatives), generator=self.gen)
            take = torch.cat([self.positives,
                              self.negatives[drawn[:self.n - len(self.positives)]]])
            order = take[torch.randperm(self.n, generator=self.gen)]
        y = self.y[order]
        # The image rows in the shared array (Rows: the side's indices into it).
        image_order = order if self.rows is None else self.rows[order]
        self.current = (img, meta, order, image_order, y, self.sample_w[y])

    def batch(self, start: int, rows: int, out: tuple[torch.Tensor, ...], k: int) -> None:
        """Rows ``start:start + rows`` of this epoch's order into slot k of the step's inputs
        (the slot's other rows get weight 0: no loss, no gradient)."""
        img, meta, order, image_order, y, w = self.current
        take = order[start:start + rows]
        if img.dtype == torch.float32:
            torch.index_select(img, 0, image_order[start:start + rows], out=out[0][k, :rows])
        else:   # a float16 (or other) array: gathered, then widened into the float32 slot
            out[0][k, :rows].copy_(torch.index_select(img, 0, image_order[start:start + rows]))
        torch.index_select(meta, 0, take, out=out[1][k, :rows, :meta.shape[1]])
        out[2][k, :rows] = y[start:start + rows]
        out[3][k, :rows] = w[start:start + rows]
        out[3][k, rows:] = 0.0


def _image_rows(image, cfg: HeadConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A training side's image as (tensor, row indices into it or None).

    ``Rows`` of the shared embedding array: the whole array as a tensor over the same memory
    (float32, float16 or memory-mapped; no copy) and the side's indices, so each batch is
    gathered from the one array. With views to sample per epoch (``view_augment``) the side's
    rows are gathered once, as before: ``_pick_view`` draws over them. An array: itself."""
    if not isinstance(image, Rows):
        return torch.as_tensor(image).float(), None
    if image.ndim == 3 and cfg.view_augment:
        return torch.from_numpy(image.gather()), None
    base = image.base[:, 0] if image.ndim == 3 else image.base
    with warnings.catch_warnings():   # a read-only memory map: only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(base), torch.from_numpy(image.index)


def _stack(splits: list[_Split]) -> dict[str, nn.Parameter]:
    """The splits' parameters stacked on a first axis (metadata inputs padded with zeros)."""
    out = {}
    for name in splits[0].model.state_dict():
        parts = [s.model.state_dict()[name] for s in splits]
        if name == "meta_mlp.fc1.weight" and any(s.pad for s in splits):
            parts = [F.pad(p, (0, s.pad)) for p, s in zip(parts, splits, strict=False)]
        out[name] = nn.Parameter(_laid_out(torch.stack(parts)))
    return out


def _laid_out(stacked: torch.Tensor) -> torch.Tensor:
    """Stacked weight matrices (k, out, in) of k > 1 members, of at least ``LAID_OUT_MIN``
    elements each (the layers as wide as the image embedding: ``fuse.fc`` and FiLM's), stored
    as their transposes, (k, in, out) in memory, with the same shape and values.

    The batched product reads ``weight.mT``, and autograd computes the weight's gradient as
    ``x.mT @ grad``, in that (k, in, out) layout: with the weight laid out the same way, the
    gradient becomes ``.grad`` as it is, where a contiguous weight made autograd copy it into
    the weight's layout at every step (a tenth of a 5-member FiLM step). The trained weights are
    bit-identical either way (tests/test_head_batch.py). The small metadata and class layers
    stay contiguous: their copies cost nothing worth saving, and their products' small-matrix
    kernels round differently with the layout. One member (a single fit) runs as a plain
    ``F.linear`` and stays contiguous."""
    if stacked.dim() != 3 or len(stacked) == 1 or stacked[0].numel() < LAID_OUT_MIN:
        return stacked.contiguous()
    return stacked.mT.contiguous().mT


LAID_OUT_MIN = 4096


def _members(param: torch.Tensor, pos: list[int]) -> nn.Parameter:
    """The stacked members at ``pos`` (of one parameter), in ``_laid_out``'s layout."""
    return nn.Parameter(_laid_out(param.detach()[pos]))


def _bind(model: FusionHead, params: dict[str, nn.Parameter]) -> None:
    """Make the stacked tensors the template's parameters (plain attribute assignment, which
    registers an ``nn.Parameter``), so that ``model(...)`` runs on them."""
    for name, param in params.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, param)


class _Noise:
    """The dropout masks of the stacked splits for one step, each split's from its own
    DropoutNoise (image layer, then classifier), drawn into preallocated masks and scaled by
    ``1 / keep``."""

    def __init__(self, k: int, bs: int, widths: tuple[int, int], ps: tuple[float | None, ...]):
        self.ps = ps
        self.widths = [w if p is not None and 0.0 < p < 1.0 else 0
                       for w, p in zip(widths, ps, strict=False)]
        self.keep = [1.0 - p if w and p is not None else None
                     for w, p in zip(self.widths, ps, strict=False)]
        self.scale = [dropout_scale(keep) if keep else None for keep in self.keep]
        self.masks = [torch.zeros(k, bs, w) if w else None for w in self.widths]

    def draw(self, splits: list[_Split], active: list[int], rows: list[int]) -> tuple:
        if sum(self.widths) == 0:
            return None, None
        for mask, width, keep in zip(self.masks, self.widths, self.keep, strict=False):
            if not width or mask is None or keep is None:   # all three, or none
                continue
            for k in range(len(splits)):
                if k in active:
                    kept = splits[k].noise.keep(rows[k] * width, keep)
                    mask[k, :rows[k]].copy_(torch.from_numpy(kept).view(rows[k], width))
                mask[k, rows[k]:] = 0.0   # rows without data: noise 0 (scaled in place below)
        return tuple(None if m is None or scale is None else m.mul_(scale)
                     for m, scale in zip(self.masks, self.scale, strict=False))


def _forward(model: FusionHead, image: torch.Tensor, meta: torch.Tensor,
             masks: tuple | None = None) -> torch.Tensor:
    """``model.forward`` on its k stacked weight sets (``_bind``): (k, B, D), (k, B, M) ->
    (k, B, classes). The layers run stacked weights as batched products (``StackableLinear``);
    ``model`` stays in eval mode: the step's dropout comes in as ``masks``. One member (a single
    fit) runs as a plain module, each layer on its weights' only slice."""
    if image.shape[0] == 1:
        masks = None if masks is None else tuple(None if m is None else m[0] for m in masks)
        return model(image[0], meta[0], masks).unsqueeze(0)
    return model(image, meta, masks)


def _state(params: dict, k: int, pad: int) -> dict[str, torch.Tensor]:
    state = {name: p[k].detach().clone() for name, p in params.items()}
    if pad and "meta_mlp.fc1.weight" in state:
        state["meta_mlp.fc1.weight"] = state["meta_mlp.fc1.weight"][:, :-pad].contiguous()
    return state


@one_thread
def fit_heads(parts: list[tuple[Part, Part]], n_classes: int, cfg: HeadConfig = HeadConfig(),
              meta_fields: list[list[MetaField] | None] | None = None) -> list[FitResult]:
    """One head per (train, val) part, trained together (see the module docstring); early
    stopping on each part's val (``cfg.stop_on``), best weights kept. ``meta_fields``: each
    part's metadata fields and missing encodings, for ``cfg.meta_dropout``. The caller's
    global torch RNG is left as it was (the fit seeds a forked copy)."""
    cfg.check()
    meta_fields = meta_fields or [None] * len(parts)
    with torch.random.fork_rng(devices=[]):
        return _fit_heads(parts, n_classes, cfg, meta_fields)


def _fit_heads(parts, n_classes: int, cfg: HeadConfig, meta_fields) -> list[FitResult]:
    meta_dim = max(int(np.shape(train[1])[1]) for train, _ in parts)
    splits = [_Split(train, val, n_classes, cfg, fields, meta_dim)
              for (train, val), fields in zip(parts, meta_fields, strict=False)]
    k_all = len(splits)
    # A template for the stacked weights (a copy: splits[0]'s own head gets its best weights
    # at the end); eval mode, as dropout comes in as masks.
    model = copy.deepcopy(splits[0].model).eval()
    params = _stack(splits)
    _bind(model, params)
    opt = Adam(params.values(), lr=cfg.lr, eps=1e-7, weight_decay=cfg.weight_decay,
               stacked=k_all)
    bs = cfg.batch_size
    steps = [-(-s.n // bs) for s in splits]
    val_rows = max(len(s.vy) for s in splits)
    val_img = torch.stack([F.pad(s.vi, (0, 0, 0, val_rows - len(s.vy))) for s in splits])
    val_meta = torch.stack([F.pad(s.vm, (0, s.pad, 0, val_rows - len(s.vy))) for s in splits])
    widths = (splits[0].xi.shape[-1] if model.use_image else 0,
              model.fuse.fc.in_features)
    noise = _Noise(k_all, bs, widths, (cfg.image_dropout if model.use_image else None,
                                       cfg.dropout))
    buffers, group = None, list(range(k_all))    # group: the splits stacked, in order
    for epoch in range(1, cfg.n_epochs + 1):
        live = [k for k in group if not splits[k].stopped]
        if not live:
            break
        if live != group:   # drop the stopped splits from the stack: no more work for them
            pos = [group.index(k) for k in live]
            params = {n: _members(p, pos) for n, p in params.items()}
            _bind(model, params)
            opt.keep(pos, params.values())
            val_img, val_meta = val_img[pos], val_meta[pos]
            group, buffers = live, None
            noise = _Noise(len(group), bs, widths, noise.ps)
        kk = len(group)
        rows = max(steps[k] for k in group) * bs
        if buffers is None:   # one step's inputs: (splits, batch, features)
            buffers = (torch.zeros(kk, bs, splits[0].xi.shape[-1]),
                       torch.zeros(kk, bs, meta_dim), torch.zeros(kk, bs, dtype=torch.long),
                       torch.zeros(kk, bs))
        members = [splits[k] for k in group]
        for s in members:
            s.epoch(cfg)
        img, meta, y, w = buffers
        totals = [0.0] * kk
        for step in range(rows // bs):
            active = [i for i, s in enumerate(members) if step * bs < s.n]
            n_rows = [min(bs, s.n - step * bs) if i in active else 0
                      for i, s in enumerate(members)]
            for i, s in enumerate(members):
                if i in active:
                    s.batch(step * bs, n_rows[i], buffers, i)
                else:
                    w[i] = 0.0
            masks = noise.draw(members, active, n_rows)
            logits = _forward(model, img, meta, masks)
            ce = F.cross_entropy(logits.reshape(-1, n_classes), y.reshape(-1),
                                 reduction="none").view(kk, -1) * w
            per_split = ce.sum(1) / torch.tensor([max(n, 1) for n in n_rows],
                                                 dtype=torch.float32)
            opt.zero_grad()
            per_split.sum().backward()
            opt.step([i in active for i in range(kk)])
            done = per_split.detach().tolist()
            for i in active:
                totals[i] += done[i] * n_rows[i]
        with torch.no_grad():
            val_logits = _forward(model, val_img, val_meta)
        for i, s in enumerate(members):
            vl = val_logits[i, :len(s.vy)]
            val_loss = float(F.cross_entropy(vl, s.vy))
            score = val_loss if cfg.stop_on == "loss" else \
                _val_score(vl, s.vy, n_classes, cfg.stop_on)
            s.history.append({"epoch": epoch, "loss": totals[i] / s.n, "val_loss": val_loss,
                              "val_score": score})
            if not cfg.early_stopping:
                s.best, s.best_epoch = score, epoch
            elif score < s.best:
                s.best, s.best_epoch, s.waited = score, epoch, 0
                s.best_state = _state(params, i, s.pad)
            else:
                s.waited += 1
                s.stopped = s.waited >= cfg.patience
        if (hook := _EPOCH_HOOK.get()) is not None:
            hook(epoch, [float(s.best) for s in splits])
    for i, k in enumerate(group):   # still stacked: their last weights (fixed epochs)
        if splits[k].best_state is None:
            splits[k].best_state = _state(params, i, splits[k].pad)
    results = []
    for k, s in enumerate(splits):
        assert s.best_state is not None   # kept at its best epoch, or its last just above
        s.model.load_state_dict(s.best_state)
        s.model.eval()
        log.info("head %d of %d: %d epochs, best epoch %d (val %s %.4f)", k + 1, k_all,
                 len(s.history), s.best_epoch, cfg.stop_on, s.best)
        results.append(FitResult(s.model, s.history, s.best_epoch, s.class_weights.tolist()))
    return results


def fit_head(train: tuple[np.ndarray, np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray, np.ndarray], n_classes: int,
             cfg: HeadConfig = HeadConfig(),
             meta_fields: list[MetaField] | None = None) -> FitResult:
    """Train on ``(image, meta, y)`` arrays; early stopping on ``val`` (``cfg.stop_on``), best
    weights kept. The one training loop with one member (``fit_heads``).

    ``image`` is (N, D), or (N, V, D) with view 0 the original image: then training samples one
    view per row per epoch when ``cfg.view_augment``, and validation uses view 0. ``meta_fields``
    gives each metadata field's columns and missing encoding, for ``cfg.meta_dropout``.
    The caller's global torch RNG is left as it was (the fit seeds a forked copy).
    """
    return fit_heads([(train, val)], n_classes, cfg, [meta_fields])[0]
