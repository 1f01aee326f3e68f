"""Stage two: FusionHead (image embedding + encoded metadata -> 7 classes); its fit loop is
``head_batch`` (``fit_head``, ``fit_heads``).

``head="reference"`` is the published Keras recipe, layer for layer: dropout 0.3 on the image
embedding; metadata MLP 32 -> 16 (ReLU); concatenate; dropout 0.4; dense 64 (ReLU); dense K.
Keras defaults are kept where they change results: Glorot-uniform weights and zero biases,
Adam eps 1e-7, class weights that scale each sample's loss (mean over the batch, not over the
weights), validation loss without class weights, early stopping with best weights restored.
Four training defaults differ from that recipe (``HeadConfig.reference()`` restores it); two were
chosen by lesion-grouped 5-fold CV on real ImageNet embeddings of all of HAM10000
(``benchmarks/missing_metadata.py --study defaults``): each metadata field is blanked to its
"missing" encoding with probability 0.2 in training (Gessert et al.'s ISIC 2019 recipe used 0.1;
0.2 was best both with full metadata and with none), and early stopping watches the
class-balanced validation loss, which is what the class-weighted training and the balanced
accuracy headline aim at (plain validation loss is dominated by nv).
A third: every field of a row is blanked at once with probability 0.2 (``meta_dropout_all``),
so the head sees rows with no metadata at all, which independent field dropout makes rare
(0.2 ** 3 = 0.8 % of rows); only in heads with an image input, the image being what such
rows teach the head to rely on. Chosen by leave-one-source-out with the held-out source's metadata
removed (``benchmarks/held_out_source.py``): the proxy for an external test set without
metadata, where internal blanking did not predict the external loss (issue 20).
And the step size: Adam 3e-4 (the recipe's 1e-3), up to 80 epochs with patience 10 (40 and 5),
chosen by issue 29's paired compare on the real MobileNetV2 embeddings of all of HAM10000
(lesion-grouped 5 folds x 3 seeds, ``benchmarks/features.py --steps head``): +0.89 [+0.08, +1.80]
points of balanced accuracy with metadata, +0.72 [-0.18, +1.64] on image features alone
(docs/features.md); early stopping then picks later, less noisy epochs, at about twice the
epochs' cost.

``head="film"`` gates the image embedding with the metadata branch, FiLM-style
(Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018), as
MetaBlock does for skin lesions (Pacheco & Krohling, "An attention-based mechanism to combine
images and metadata in deep learning models applied to skin cancer classification", IEEE JBHI 2021).
"""
from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..schema import Ge, Gt, Lt, validate

log = logging.getLogger(__name__)

HEADS = ("reference", "film")
INPUTS = ("fused", "image", "meta")
# Early stopping on the validation part: ``loss`` is the reference's plain cross-entropy (natural
# prevalence, so dominated by nv); ``balanced_loss`` averages the cross-entropy per class, the
# loss that the class-weighted training and the balanced-accuracy headline both aim at;
# ``balanced_accuracy`` stops on the headline metric itself.
STOP_ON = ("loss", "balanced_loss", "balanced_accuracy")


@dataclass(frozen=True)
class HeadConfig:
    """The head's recipe. The defaults of the architecture fields (widths, dropouts) are the
    published Keras recipe's layers; ``epochs`` set trains exactly that many epochs (no early
    stopping, the last weights kept) instead of up to ``max_epochs`` with early stopping."""
    head: Literal[HEADS] = "reference"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    inputs: Literal[INPUTS] = "fused"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    lr: Annotated[float, Gt(0)] = 3e-4        # the recipe's 1e-3, 40, 5: see the module's doc
    batch_size: Annotated[int, Ge(1)] = 64
    max_epochs: Annotated[int, Ge(1)] = 80
    patience: Annotated[int, Ge(1)] = 10
    epochs: Annotated[int, Ge(1)] | None = None   # fixed number of epochs: no early stopping
    class_weight: Literal["balanced", "none"] = "balanced"
    seed: int = 42
    meta_dropout: Annotated[float, Ge(0), Lt(1)] = 0.2   # P(blanking a whole metadata field)
    meta_dropout_all: Annotated[float, Ge(0), Lt(1)] = 0.2   # P(blanking all fields of a row)
    view_augment: bool = True             # sample one cached view per row per epoch, if present
    # early stopping criterion on val: see STOP_ON
    stop_on: Literal[STOP_ON] = "balanced_loss"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    meta_width: Annotated[int, Ge(1)] = 32   # metadata MLP: meta_width -> meta_out (ReLU each)
    meta_out: Annotated[int, Ge(1)] = 16
    dense_width: Annotated[int, Ge(1)] = 64   # the dense layer before the class logits
    image_dropout: Annotated[float, Ge(0), Lt(1)] = 0.3   # on the image embedding
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.4         # on the concatenated features
    weight_decay: Annotated[float, Ge(0)] = 0.0   # Adam's L2 penalty (added to the gradient)
    # Binary tasks: each epoch all positives + a fresh draw of R x as many negatives (None: all
    # rows), so an epoch of a 400k-row set costs what its positives need (head_batch._Split).
    negative_ratio: Annotated[float, Gt(0)] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Every field's type, choices and range (the annotations above; ``skinfeat.schema``)."""
        validate(self)

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.max_epochs

    @property
    def early_stopping(self) -> bool:
        return self.epochs is None

    @classmethod
    def reference(cls, **changes) -> HeadConfig:
        """The published recipe: Adam 1e-3, up to 40 epochs with patience 5, no field or row
        dropout, early stopping on plain validation loss."""
        return cls(**{"lr": 1e-3, "max_epochs": 40, "patience": 5, "meta_dropout": 0.0,
                      "meta_dropout_all": 0.0, "stop_on": "loss", **changes})


def film_gate(gamma: torch.Tensor) -> torch.Tensor:
    """FiLM's scale ``1 + tanh(gamma)``, computed as ``2 * sigmoid(2 * gamma)``: the same
    function (equal up to float rounding), and torch's CPU tanh is several times slower than its
    sigmoid (0.60 vs 0.09 ms on one batched step's (5, 64, 768) gammas here)."""
    return 2.0 * torch.sigmoid(2.0 * gamma)


class StackableLinear(nn.Linear):
    """``nn.Linear`` that also runs k stacked weight sets: given (k, out, in) weights (the
    parameters ``head_batch`` registers on its template head) and (k, B, in) inputs, one batched
    product for all k. This is how the one training loop trains k heads with the head's own
    ``forward``. A stack of one given (B, in) inputs is a plain layer on its one slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 3:
            if x.dim() == 2 and len(self.weight) == 1:
                return F.linear(x, self.weight[0], self.bias[0])
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return F.linear(x, self.weight, self.bias)


class MetaMLP(nn.Sequential):
    """The metadata branch: an ``nn.Sequential`` of named layers (their names are the keys of
    its weights); the annotations give mypy the layers' types (``nn.Module.__getattr__`` says
    only ``Tensor | Module``)."""
    fc1: StackableLinear
    act1: nn.ReLU
    fc2: StackableLinear
    act2: nn.ReLU


class Fuse(nn.Sequential):
    """The joined features' block: dropout, the dense layer, its activation (named, as
    ``MetaMLP``)."""
    dropout: nn.Dropout
    fc: StackableLinear
    act: nn.ReLU


class FusionHead(nn.Module):
    """Image embedding and/or encoded metadata -> class logits."""

    def __init__(self, embed_dim: int, meta_dim: int, n_classes: int = 7,
                 head: str = "reference", inputs: str = "fused", *, meta_width: int = 32,
                 meta_out: int = 16, dense_width: int = 64, image_dropout: float = 0.3,
                 dropout: float = 0.4):
        super().__init__()
        if head not in HEADS or inputs not in INPUTS:
            raise InputError(f"head must be one of {HEADS} and inputs one of {INPUTS}")
        self.head, self.inputs = head, inputs
        self.use_image = inputs in ("fused", "image")
        self.use_meta = inputs in ("fused", "meta") and meta_dim > 0
        if not (self.use_image or self.use_meta):
            raise InputError("a metadata-only head (inputs meta) needs metadata features, and "
                             "the encoder made none (no field, or no value in the training rows)")
        width = 0
        if self.use_image:
            self.image_dropout = nn.Dropout(image_dropout)
            width += embed_dim
        if self.use_meta:
            self.meta_mlp = MetaMLP(OrderedDict(
                fc1=StackableLinear(meta_dim, meta_width), act1=nn.ReLU(),
                fc2=StackableLinear(meta_width, meta_out), act2=nn.ReLU()))
            width += meta_out
        if head == "film" and self.use_image and self.use_meta:
            self.film = StackableLinear(meta_out, 2 * embed_dim)
        # The joined features: dropout, then the dense layer (``fuse``); then the class logits.
        self.fuse = Fuse(OrderedDict(
            dropout=nn.Dropout(dropout), fc=StackableLinear(width, dense_width), act=nn.ReLU()))
        self.classifier = StackableLinear(dense_width, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # Keras Dense defaults
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if hasattr(self, "film"):
            nn.init.zeros_(self.film.weight)  # start as the identity gate: scale 1, shift 0

    ARCHITECTURE = ("meta_width", "meta_out", "dense_width", "image_dropout", "dropout")

    @classmethod
    def from_config(cls, embed_dim: int, meta_dim: int, n_classes: int,
                    cfg: HeadConfig) -> FusionHead:
        """The head a config describes (an older bundle's missing layer fields are filled in
        on load, by ``deploy.bundle_config.migrate``)."""
        return cls(embed_dim, meta_dim, n_classes, cfg.head, cfg.inputs,
                   **{k: getattr(cfg, k) for k in cls.ARCHITECTURE})

    def forward(self, image: torch.Tensor, meta: torch.Tensor,
                masks: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
                ) -> torch.Tensor:
        """Class logits. ``masks`` (image mask, joined-features mask), each already scaled by
        ``1 / keep``, replace the two dropout layers: the trainer draws them from the fit's own
        seeded stream (``DropoutNoise``). Without them the layers are ``nn.Dropout``."""
        image_mask, joint_mask = masks if masks is not None else (None, None)
        parts = []
        m = self.meta_mlp(meta) if self.use_meta else None
        if self.use_image:
            x = self.image_dropout(image) if image_mask is None else image * image_mask
            if hasattr(self, "film"):
                gamma, beta = self.film(m).chunk(2, dim=-1)
                x = x * film_gate(gamma) + beta
            parts.append(x)
        if m is not None:
            parts.append(m)
        h = torch.cat(parts, dim=-1)
        if joint_mask is None:
            return self.classifier(self.fuse(h))
        return self.classifier(self.fuse.act(self.fuse.fc(h * joint_mask)))


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's 'balanced': n_samples / (n_present_classes * count); absent classes get 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w


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


# Heads saved before their layers had names (bundles up to 7c926aa) key them by position.
POSITIONAL_KEYS = {"meta_mlp.0.": "meta_mlp.fc1.", "meta_mlp.2.": "meta_mlp.fc2.",
                   "classifier.1.": "fuse.fc.", "classifier.3.": "classifier."}


def named_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A head's saved state with older bundles' positional keys renamed to the named layers
    (the one place that knows the old keys); today's keys pass unchanged."""
    out = {}
    for key, value in state.items():
        old = next((o for o in POSITIONAL_KEYS if key.startswith(o)), None)
        out[POSITIONAL_KEYS[old] + key[len(old):] if old else key] = value
    return out


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
