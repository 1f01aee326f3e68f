"""Stage two: FusionHead (image embedding + encoded metadata -> 7 classes) and its fit loop.

``head="reference"`` is the published Keras recipe, layer for layer: dropout 0.3 on the image
embedding; metadata MLP 32 -> 16 (ReLU); concatenate; dropout 0.4; dense 64 (ReLU); dense K.
Keras defaults are kept where they change results: Glorot-uniform weights and zero biases,
Adam eps 1e-7, class weights that scale each sample's loss (mean over the batch, not over the
weights), validation loss without class weights, early stopping with best weights restored.
Two training defaults differ from that recipe (``HeadConfig.reference()`` restores it), both
chosen by lesion-grouped 5-fold CV on real ImageNet embeddings of all of HAM10000
(``benchmarks/missing_metadata.py --study defaults``): each metadata field is blanked to its
"missing" encoding with probability 0.2 in training (Gessert et al.'s ISIC 2019 recipe used 0.1;
0.2 was best both with full metadata and with none), and early stopping watches the
class-balanced validation loss, which is what the class-weighted training and the balanced
accuracy headline aim at (plain validation loss is dominated by nv).

``head="film"`` gates the image embedding with the metadata branch, FiLM-style
(Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018), as
MetaBlock does for skin lesions (Pacheco & Krohling, "An attention-based mechanism to combine
images and metadata in deep learning models applied to skin cancer classification", IEEE JBHI 2021).
"""
from __future__ import annotations

import copy
import functools
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .optim import Adam

log = logging.getLogger(__name__)

HEADS = ("reference", "film")
INPUTS = ("fused", "image", "meta")
# Early stopping on the validation part: ``loss`` is the reference's plain cross-entropy (natural
# prevalence, so dominated by nv); ``balanced_loss`` averages the cross-entropy per class, the
# loss that the class-weighted training and the balanced-accuracy headline both aim at;
# ``balanced_accuracy`` stops on the headline metric itself.
STOP_ON = ("loss", "balanced_loss", "balanced_accuracy")


@dataclass
class HeadConfig:
    """The head's recipe. The defaults of the architecture fields (widths, dropouts) are the
    published Keras recipe's layers; ``epochs`` set trains exactly that many epochs (no early
    stopping, the last weights kept) instead of up to ``max_epochs`` with early stopping."""
    head: str = "reference"
    inputs: str = "fused"
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    epochs: int | None = None             # fixed number of epochs: no early stopping
    class_weight: str = "balanced"        # balanced | none
    seed: int = 42
    meta_dropout: float = 0.2             # probability of blanking a whole metadata field
    meta_dropout_all: float = 0.0         # probability of blanking every field of a row at once
    view_augment: bool = True             # sample one cached view per row per epoch, if present
    stop_on: str = "balanced_loss"        # early stopping criterion on val: see STOP_ON
    meta_width: int = 32                  # metadata MLP: meta_width -> meta_out (ReLU each)
    meta_out: int = 16
    dense_width: int = 64                 # the dense layer before the class logits
    image_dropout: float = 0.3            # on the image embedding
    dropout: float = 0.4                  # on the concatenated features
    weight_decay: float = 0.0             # Adam's L2 penalty (added to the gradient)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.head not in HEADS or self.inputs not in INPUTS:
            raise ValueError(f"head must be one of {HEADS} and inputs one of {INPUTS}")
        if self.stop_on not in STOP_ON:
            raise ValueError(f"stop_on must be one of {STOP_ON}, got {self.stop_on!r}")
        if self.class_weight not in ("balanced", "none"):
            raise ValueError(f"class_weight must be balanced or none, got {self.class_weight!r}")
        for name in ("meta_dropout", "meta_dropout_all", "image_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("batch_size", "max_epochs", "patience", "meta_width", "meta_out",
                     "dense_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay not negative")

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.max_epochs

    @property
    def early_stopping(self) -> bool:
        return self.epochs is None

    @classmethod
    def reference(cls, **changes) -> "HeadConfig":
        """The published recipe: no field dropout, early stopping on plain validation loss."""
        return cls(**{"meta_dropout": 0.0, "meta_dropout_all": 0.0, "stop_on": "loss",
                      **changes})


class DropoutNoise:
    """The dropout masks of one fit, from their own seeded numpy stream (PCG64).

    Each element takes 16 random bits, kept when they fall below ``round(keep * 2**16)``: the
    keep probability is exact to 1/65536, and a mask costs a sixth of drawing it from torch's CPU
    generator (one double per element; ``bernoulli_`` twice that), which was a third of a head
    step.
    Sequential and batched fits draw the same masks from the same seed, in the same order
    (image layer, then classifier), so they train the same weights.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 0xD2])   # a stream of its own, not the weights'

    def keep(self, n: int, keep: float) -> np.ndarray:
        """``n`` booleans, each True with probability ``keep``."""
        bits = self.rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n]
        return bits < np.uint16(min(round(keep * 65536), 65535))


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` whose masks come from a :class:`DropoutNoise` while a fit sets ``noise``
    (plain ``nn.Dropout`` otherwise). A kept element is scaled by ``1 / keep`` in float32."""

    noise: DropoutNoise | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or self.noise is None or self.inplace:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = torch.from_numpy(self.noise.keep(x.numel(), keep)).view(x.shape).to(x.device,
                                                                                    x.dtype)
        return x * mask.mul_(dropout_scale(keep))


def dropout_scale(keep: float) -> torch.Tensor:
    """A kept element's factor, ``1 / keep`` computed in float32 (sequential and batched fits
    scale identically)."""
    return torch.ones(1).div_(keep)


class FusionHead(nn.Module):
    """Image embedding and/or encoded metadata -> class logits."""

    def __init__(self, embed_dim: int, meta_dim: int, n_classes: int = 7,
                 head: str = "reference", inputs: str = "fused", *, meta_width: int = 32,
                 meta_out: int = 16, dense_width: int = 64, image_dropout: float = 0.3,
                 dropout: float = 0.4):
        super().__init__()
        if head not in HEADS or inputs not in INPUTS:
            raise ValueError(f"head must be one of {HEADS} and inputs one of {INPUTS}")
        self.head, self.inputs = head, inputs
        self.use_image = inputs in ("fused", "image")
        self.use_meta = inputs in ("fused", "meta") and meta_dim > 0
        if not (self.use_image or self.use_meta):
            raise ValueError("a metadata-only head (inputs meta) needs metadata features, and "
                             "the encoder made none (no field, or no value in the training rows)")
        width = 0
        if self.use_image:
            self.image_dropout = MaskDropout(image_dropout)
            width += embed_dim
        if self.use_meta:
            self.meta_mlp = nn.Sequential(nn.Linear(meta_dim, meta_width), nn.ReLU(),
                                          nn.Linear(meta_width, meta_out), nn.ReLU())
            width += meta_out
        if head == "film" and self.use_image and self.use_meta:
            self.film = nn.Linear(meta_out, 2 * embed_dim)
        self.classifier = nn.Sequential(MaskDropout(dropout), nn.Linear(width, dense_width),
                                        nn.ReLU(), nn.Linear(dense_width, n_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):  # Keras Dense defaults
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if hasattr(self, "film"):
            nn.init.zeros_(self.film.weight)  # start as the identity gate: scale 1, shift 0

    ARCHITECTURE = ("meta_width", "meta_out", "dense_width", "image_dropout", "dropout")

    @classmethod
    def from_config(cls, embed_dim: int, meta_dim: int, n_classes: int,
                    cfg: "HeadConfig | dict") -> "FusionHead":
        """The head a config describes (a bundle's ``head`` dict: fields it lacks, from bundles
        made before they existed, take the recipe's defaults)."""
        d = cfg.to_dict() if isinstance(cfg, HeadConfig) else cfg
        arch = {k: d[k] for k in cls.ARCHITECTURE if d.get(k) is not None}
        return cls(embed_dim, meta_dim, n_classes, d.get("head", "reference"),
                   d.get("inputs", "fused"), **arch)

    def set_noise(self, noise: DropoutNoise | None) -> None:
        """Draw training dropout masks from ``noise`` (None: nn.Dropout's own)."""
        for m in self.modules():
            if isinstance(m, MaskDropout):
                m.noise = noise

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        parts = []
        m = self.meta_mlp(meta) if self.use_meta else None
        if self.use_image:
            x = self.image_dropout(image)
            if hasattr(self, "film"):
                gamma, beta = self.film(m).chunk(2, dim=1)
                x = x * (1.0 + torch.tanh(gamma)) + beta
            parts.append(x)
        if m is not None:
            parts.append(m)
        return self.classifier(torch.cat(parts, dim=1))


@dataclass
class FitResult:
    model: FusionHead
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    class_weights: list[float] = field(default_factory=list)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's 'balanced': n_samples / (n_present_classes * count); absent classes get 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w


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


def _eval_view(image: torch.Tensor) -> torch.Tensor:
    return image[:, 0] if image.ndim == 3 else image


def one_thread(fn):
    """Run ``fn`` on one torch thread. A batch-64 step is far too small for intra-op threads:
    they only add barriers (3-5x slower on a busy 2-core machine), and the weights would
    change in the last bits with the machine's core count."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


@one_thread
def fit_head(train: tuple[np.ndarray, np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray, np.ndarray], n_classes: int,
             cfg: HeadConfig = HeadConfig(),
             meta_fields: list[MetaField] | None = None) -> FitResult:
    """Train on ``(image, meta, y)`` arrays; early stopping on ``val`` (``cfg.stop_on``), best
    weights kept.

    ``image`` is (N, D), or (N, V, D) with view 0 the original image: then training samples one
    view per row per epoch when ``cfg.view_augment``, and validation uses view 0. ``meta_fields``
    gives each metadata field's columns and missing encoding, for ``cfg.meta_dropout``.
    The caller's global torch RNG is left as it was (the fit seeds a forked copy).
    """
    cfg.check()
    with torch.random.fork_rng(devices=[]):
        return _fit_head(train, val, n_classes, cfg, meta_fields)


def _fit_head(train, val, n_classes: int, cfg: HeadConfig,
              meta_fields: list[MetaField] | None) -> FitResult:
    # The seed draws the initial weights (global generator), the dropout masks (DropoutNoise)
    # and the epochs' shuffles, views and field blanking (gen), as Keras' seed would.
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xi, xm, y = (torch.as_tensor(a) for a in train)
    vi, vm, vy = (torch.as_tensor(a) for a in val)
    xi, xm, vi, vm = xi.float(), xm.float(), _eval_view(vi.float()), vm.float()
    y, vy = y.long(), vy.long()
    model = FusionHead.from_config(xi.shape[-1], xm.shape[1], n_classes, cfg)
    model.set_noise(DropoutNoise(cfg.seed))
    opt = Adam(model.parameters(), lr=cfg.lr, eps=1e-7, weight_decay=cfg.weight_decay)
    weights = balanced_class_weights(y.numpy(), n_classes) if cfg.class_weight == "balanced" \
        else np.ones(n_classes)
    sample_w = torch.as_tensor(weights, dtype=torch.float32)
    best_loss, best_state, best_epoch, waited, history = np.inf, None, 0, 0, []
    n = len(y)
    for epoch in range(1, cfg.n_epochs + 1):
        model.train()
        epoch_img = _pick_view(xi, gen) if xi.ndim == 3 and cfg.view_augment else _eval_view(xi)
        blanking = (cfg.meta_dropout > 0 or cfg.meta_dropout_all > 0) and meta_fields
        epoch_meta = _blank_fields(xm, meta_fields, cfg.meta_dropout, gen,
                                   cfg.meta_dropout_all) if blanking else xm
        order = torch.randperm(n, generator=gen)
        # One gather per epoch: each minibatch is then a contiguous slice, not five gathers.
        shuf_img, shuf_meta, shuf_y = epoch_img[order], epoch_meta[order], y[order]
        shuf_w = sample_w[shuf_y]
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            batch = slice(start, start + cfg.batch_size)
            logits = model(shuf_img[batch], shuf_meta[batch])
            loss = (F.cross_entropy(logits, shuf_y[batch], reduction="none")
                    * shuf_w[batch]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(shuf_y[batch])
        model.eval()
        with torch.no_grad():
            val_logits = model(vi, vm)
            val_loss = float(F.cross_entropy(val_logits, vy))
            score = val_loss if cfg.stop_on == "loss" else \
                _val_score(val_logits, vy, n_classes, cfg.stop_on)
        history.append({"epoch": epoch, "loss": total / n, "val_loss": val_loss,
                        "val_score": score})
        log.debug("epoch %d loss %.4f val_loss %.4f %s %.4f", epoch, total / n, val_loss,
                  cfg.stop_on, score)
        if not cfg.early_stopping:   # a fixed number of epochs: the last weights
            best_loss, best_epoch, best_state = score, epoch, None
        elif score < best_loss:
            best_loss, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.set_noise(None)
    model.eval()
    log.info("head: %d epochs, best epoch %d (val %s %.4f)", len(history), best_epoch,
             cfg.stop_on, best_loss)
    return FitResult(model, history, best_epoch, weights.tolist())


@torch.no_grad()
def head_logits(model: FusionHead, image: np.ndarray, meta: np.ndarray,
                tta: bool = False) -> np.ndarray:
    """Logits for (N, D) or (N, V, D) image arrays; ``tta`` averages probabilities over views."""
    model.eval()
    img = torch.as_tensor(image).float()
    m = torch.as_tensor(meta).float()
    if img.ndim == 3 and tta:
        probs = torch.stack([F.softmax(model(img[:, v], m), 1) for v in range(img.shape[1])])
        return torch.log(probs.mean(0)).numpy()
    return model(_eval_view(img), m).numpy()
