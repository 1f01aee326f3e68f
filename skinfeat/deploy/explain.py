"""Why did the model say that: a class activation map over the image, and metadata attribution.

The heatmap comes from ``pytorch-grad-cam`` (Gildenblat et al., the ``grad-cam`` package on PyPI:
maintained, many CAM variants behind one interface, plain PyTorch hooks), computed on the frozen
backbone's last stage through the pooling and the trained head, so it shows what moved *this*
model's logit, not the backbone's ImageNet classes. A LightGBM model is not differentiable, so
it gets a gradient-free method (Score-CAM by default). A model on view-averaged embeddings
(``--average-views``, the default) gets the mean of one map per turned copy, each turned back
onto the image.

Metadata attribution: for a fusion head, each field in turn is set to missing (the encoder's own
missing representation) and the change in every calibrated class probability is reported. For
LightGBM, its own per-feature contributions (``pred_contrib``, TreeSHAP in raw-score units) are
summed over each field's encoded columns.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.datasets import DataError
from ..embed.transform import load_image, to_tensor
from ..embed.turns import turn, turn_back
from ..errors import SkinfeatError
from .decision import Decision, predictor_rule

log = logging.getLogger(__name__)

# name -> (pytorch_grad_cam class name, needs gradients through the head)
METHODS = {"gradcam": ("GradCAM", True), "gradcam++": ("GradCAMPlusPlus", True),
           "xgradcam": ("XGradCAM", True), "hirescam": ("HiResCAM", True),
           "layercam": ("LayerCAM", True), "scorecam": ("ScoreCAM", False),
           "eigencam": ("EigenCAM", False)}
# The CAM methods hook into the model: one explanation at a time per process.
_CAM_LOCK = threading.Lock()


class ExplainError(SkinfeatError, ValueError):
    """A request explain cannot honour (unknown class or method, field, model kind)."""


def cam_target(model: nn.Module) -> tuple[nn.Module, Callable | None]:
    """(layer to hook, grad-cam's ``reshape_transform``) of a backbone: an open_clip or
    transformers ViT (``FamilyEncoder``) names its last block's token output and how to fold
    the tokens into a patch grid; a timm model's last stage is already a feature map."""
    from ..embed.encoders.base import FamilyEncoder

    if isinstance(model, FamilyEncoder):
        try:
            return model.cam_layer(), model.cam_reshape
        except (NotImplementedError, ValueError) as exc:
            raise ExplainError(f"{type(model).__name__}: {exc}") from exc
    return last_stage(model), None


def last_stage(model: nn.Module) -> nn.Module:
    """The backbone's last feature stage: timm's ``feature_info``, else the last convolution."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, (list, tuple)) else info.info[-1]
        return model.get_submodule(last["module"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(model).__name__} has no convolutional stage to explain")
    return convs[-1]


class ImageToLogits(nn.Module):
    """Image tensor -> class logits, with the metadata held fixed: what the CAM differentiates.

    ``features`` is stage one's pooled backbone; ``head`` maps (embedding, meta) to logits.
    """

    def __init__(self, features: nn.Module, head, meta: torch.Tensor):
        super().__init__()
        self.features, self.head, self.meta = features, head, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        meta = self.meta.expand(x.shape[0], -1)
        if not isinstance(self.head, nn.Module):  # LightGBM: numpy in, numpy out (no gradient)
            emb = self.features(x).detach().cpu().numpy()
            return torch.as_tensor(self.head(emb, meta.cpu().numpy()), dtype=torch.float32,
                                   device=x.device)
        if not x.requires_grad:
            # The backbone is frozen: without an input that needs grad, no gradient reaches the
            # hooked activations at all.
            x = x.detach().requires_grad_(True)
        return self.head(self.features(x), meta)


class OneOfViews(nn.Module):
    """A view-averaged embedding as a function of one view's image: (net(x) + rest) / n, with
    ``rest`` the sum of the other views' embeddings (fixed), so a CAM hooked into ``net`` sees
    one forward pass of the copy it explains."""

    rest: torch.Tensor      # a buffer (register_buffer below), declared for the type checker

    def __init__(self, net: nn.Module, rest: torch.Tensor, n: int):
        super().__init__()
        self.net, self.n = net, n
        self.register_buffer("rest", rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.rest) / self.n


def class_activation(net: nn.Module, layer: nn.Module, x: torch.Tensor, target: int,
                     method: str = "gradcam",
                     reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """(H, W) heatmap in [0, 1] for class index ``target`` on one image tensor (1, 3, H, W);
    ``reshape`` turns ``layer``'s output into (N, C, h, w) (a ViT's tokens)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    cls = getattr(pytorch_grad_cam, METHODS[method][0])
    with _CAM_LOCK, torch.enable_grad():
        cam = cls(model=net, target_layers=[layer], reshape_transform=reshape)
        try:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])
        finally:
            cam.activations_and_grads.release()
    heat = np.nan_to_num(np.asarray(heat[0], dtype=np.float32))
    top = float(heat.max())
    return heat / top if top > 0 else heat


def field_columns(feature_names: Sequence[str], fields: Sequence[str]) -> dict[str, list[int]]:
    """Encoded column indices of each metadata field (``age``, ``sex_male`` -> ``sex``, ...)."""
    out: dict[str, list[int]] = {f: [] for f in fields}
    for j, name in enumerate(feature_names):
        owners = [f for f in fields if name == f or name.startswith(f + "_")]
        if owners:  # the longest field name wins ("site" vs "site_group")
            out[max(owners, key=len)].append(j)
    return out


@dataclass
class Explanation:
    """One image explained: probabilities, heatmaps per explained class, metadata attribution."""
    image: str
    classes: list[str]
    proba: np.ndarray                   # (K,) calibrated
    predicted: str
    view: np.ndarray                    # (H, W, 3) uint8: the image as the backbone saw it
    cams: dict[str, np.ndarray]         # class -> (H, W) heatmap in [0, 1]
    method: str
    attribution: dict[str, np.ndarray]  # field -> (K,) effect of the field's value, per class
    attribution_kind: str               # what the attribution numbers are
    metadata: dict = field(default_factory=dict)
    rule: str = ""                      # the decision rule in one line

    @property
    def decision(self) -> Decision:
        """The decision fields shown everywhere (``decision.py``)."""
        top = int(np.argmax(self.proba))
        return Decision(self.classes[top], float(self.proba[top]), self.predicted, self.rule)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.proba)[:k]
        return [(self.classes[i], float(self.proba[i])) for i in order]

    def to_dict(self) -> dict:
        """JSON-ready summary (no pixel arrays)."""
        return {"image": self.image, **self.decision.to_dict(),
                "prediction": self.predicted,   # older name of "decision"
                "probabilities": dict(zip(self.classes, map(float, self.proba), strict=False)),
                "cam_method": self.method, "cam_classes": list(self.cams),
                "metadata": self.metadata, "attribution_kind": self.attribution_kind,
                "attribution": {f: dict(zip(self.classes, map(float, v), strict=False))
                                for f, v in self.attribution.items()}}


class Explainer:
    """Explanations for a ``Model``: heatmaps and metadata attribution."""

    def __init__(self, predictor):
        self.p = predictor
        enc = predictor.encoder
        self.fields = list(enc.numeric) + list(enc.categorical)

    def metadata_table(self, meta: Mapping[str, object] | None) -> pd.DataFrame:
        """One metadata row from ``{field: value}``; absent or blank fields are missing."""
        meta = dict(meta or {})
        unknown = sorted(set(meta) - set(self.fields))
        if unknown:
            raise ExplainError(f"unknown metadata field(s) {', '.join(unknown)}; this model "
                               f"takes {', '.join(self.fields) or 'no metadata'}")
        row = {f: None if _missing(meta.get(f)) else meta[f] for f in self.fields}
        return pd.DataFrame([row], dtype=object)

    def default_method(self) -> str:
        return "gradcam" if self.p.model.differentiable else "scorecam"

    def _head(self, method: str, scorer=None):
        model = (scorer or self.p).model
        if model.differentiable:
            return model.torch_module()
        if METHODS[method][1]:
            raise ExplainError(f"a {model.title} model is not differentiable: use a "
                               "gradient-free CAM method (--method scorecam or eigencam)")
        return lambda emb, meta: model.logits(emb, meta)

    def heatmap(self, x: torch.Tensor, meta: np.ndarray, target: int, method: str,
                scorer=None) -> np.ndarray:
        """``scorer``: the model that scored the row (the image-only fallback, for a row with
        every metadata field missing), else the model itself."""
        embedder, _ = self.p._backbone()
        head = self._head(method, scorer)
        meta_t = torch.as_tensor(meta, dtype=torch.float32, device=embedder.device)
        layer, reshape = cam_target(embedder.net.model)
        x = x.to(embedder.device)
        views = self.p.average_views
        if not views:
            net = ImageToLogits(embedder.net, head, meta_t).eval()
            return class_activation(net, layer, x, target, method, reshape)
        # The model scores the mean of the embeddings of the image and its turned copies: one
        # map per copy, each of that model's logit with the other copies' embeddings held
        # fixed, turned back onto the image and averaged.
        with torch.no_grad():
            embs = [embedder.net(x)] + [embedder.net(turn(x, v)) for v in views]
        total, heats = torch.stack(embs).sum(dim=0), []
        for i, view in enumerate(("",) + views):
            one = OneOfViews(embedder.net, total - embs[i], len(embs))
            net = ImageToLogits(one, head, meta_t).eval()
            heat = class_activation(net, layer, turn(x, view) if view else x, target, method,
                                    reshape)
            heats.append(turn_back(torch.from_numpy(heat), view).numpy() if view else heat)
        mean = np.mean(heats, axis=0)
        top = float(mean.max())
        return mean / top if top > 0 else mean

    def attribution(self, embedding: np.ndarray, table: pd.DataFrame) -> tuple[dict, str]:
        """Per field, how much its value moved each class (see the module docstring)."""
        model = self.p.model
        if model.meta_attribution:   # the model's own (LightGBM's feature contributions)
            per_column = model.meta_contributions(embedding, self.p.encode_metadata(table))
            cols = field_columns(self.p.encoder.feature_names, self.fields)
            return {f: per_column[:, cols[f]].sum(axis=1) for f in self.fields}, \
                model.meta_attribution
        base = self.p.score(embedding, table)[1][0]
        out = {}
        for f in self.fields:
            missing = table.copy()
            missing[f] = None
            out[f] = base - self.p.score(embedding, missing)[1][0]
        return out, "probability minus probability with the field missing"

    def explain(self, path: str | Path, meta: Mapping[str, object] | None = None,
                target: str | None = None, method: str | None = None) -> Explanation:
        """Probabilities, a heatmap for the predicted class (and ``target``), and attribution."""
        if self.p.group_context:   # the CAM and the attribution would need the whole group
            raise ExplainError(f"{path}: the model uses patient context features "
                               "(--group-context), computed from the patient's other lesions; "
                               "explain takes one image without them: explain a model trained "
                               "without --group-context (predict --csv scores this one)")
        method = method or self.default_method()
        if method not in METHODS:
            raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
        if target is not None and target not in self.p.classes:
            raise ExplainError(f"unknown class {target!r}; the model's classes are "
                               f"{', '.join(self.p.classes)}")
        table = self.metadata_table(meta)
        embedding, errors = self.p.embed([str(path)])
        if errors[0]:
            raise DataError(f"{path}: cannot read the image ({errors[0]})")
        _, probas, decided, fell_back = self.p.score(embedding, table)
        proba, predicted = probas[0], self.p.classes[int(decided[0])]
        scorer = self.p.fallback if fell_back[0] else self.p
        _, spec = self.p._backbone()
        x = to_tensor(load_image(path, spec), spec)[None]
        encoded = self.p.encode_metadata(table)
        cams = {}
        for c in dict.fromkeys([predicted] + ([target] if target else [])):
            cams[c] = self.heatmap(x, encoded, self.p.classes.index(c), method, scorer)
        attribution, kind = self.attribution(embedding, table)
        return Explanation(str(path), list(self.p.classes), proba, predicted,
                           model_view(x[0], spec), cams, method, attribution, kind,
                           {f: _plain(table.iloc[0][f]) for f in self.fields},
                           predictor_rule(scorer))


def _plain(value):
    """A metadata value as JSON can hold it (missing: None)."""
    return None if _missing(value) else value.item() if hasattr(value, "item") else value


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and np.isnan(value))


def model_view(x: torch.Tensor, spec) -> np.ndarray:
    """Undo the normalisation of a (3, H, W) input tensor: the pixels the backbone saw."""
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    rgb = (x.detach().numpy() * std + mean).transpose(1, 2, 0)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def overlay(view: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heatmap (jet colours) blended over the image, uint8 RGB."""
    from matplotlib import colormaps
    colour = colormaps["jet"](heat)[..., :3]
    return np.clip(np.round((1 - alpha) * view + alpha * 255 * colour), 0, 255).astype(np.uint8)


def save_figure(ex: Explanation, path: str | Path, weights: str,
                random_weights: bool | str) -> Path:
    """One PNG: the image, one overlay per explained class, and the metadata attribution chart."""
    from ..atomic import atomic_write

    path = Path(path)
    fig = explanation_figure(ex, weights, random_weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return path


def save_json(ex: Explanation, path: str | Path) -> Path:
    """The explanation's JSON (``Explanation.to_dict``: the decision fields first) at
    ``path``."""
    import json

    from ..atomic import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(ex.to_dict(), indent=2))
    return path


def explanation_figure(ex: Explanation, weights: str, random_weights: bool | str):
    """The figure ``save_figure`` writes (a matplotlib ``Figure``, no pyplot). ``random_weights``:
    True (the whole model), or the predictor's ``random_note`` line (naming the fused sources
    that were random)."""
    import textwrap

    from ..evaluate.report import new_figure

    n = 2 + len(ex.cams)
    top = ex.decision.line() + "   |   top: " + ", ".join(f"{c} {100 * p:.1f} %"
                                                      for c, p in ex.top(3))
    banner = f"{random_weights} " if isinstance(random_weights, str) and random_weights else \
        "RANDOM backbone weights: meaningless clinically. " if random_weights else ""
    width = 3.2 * n + 1.5
    # A long weights name (a local folder's path) ran off both edges: wrap the banner to the
    # figure's width (about 0.55 em per character at 9 pt) and make room above the panels.
    lines = textwrap.wrap(f"{banner}{top}   |   weights: {weights}   |   research use only",
                          max(20, int(width * 72 / (9 * 0.62))), break_long_words=True)
    height = 3.8 + 0.17 * (len(lines) - 1)
    fig, axes = new_figure((width, height), 1, n,
                           gridspec_kw={"width_ratios": [1] * (n - 1) + [1.8]})
    axes[0].imshow(ex.view)
    axes[0].set_title(Path(ex.image).name, fontsize=9)
    for ax, (c, heat) in zip(axes[1:], ex.cams.items(), strict=False):
        ax.imshow(overlay(ex.view, heat))
        role = "decision" if c == ex.predicted else "asked for"
        ax.set_title(f"{ex.method}: {c}, {role} ({100 * ex.proba[ex.classes.index(c)]:.1f} %)",
                     fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    ax = axes[-1]
    fields = list(ex.attribution)
    if fields:
        width = 0.8 / len(ex.classes)
        for k, c in enumerate(ex.classes):
            ax.bar(np.arange(len(fields)) + (k - (len(ex.classes) - 1) / 2) * width,
                   [ex.attribution[f][k] for f in fields], width, label=c)
        ax.set_xticks(np.arange(len(fields)),
                      [f"{f}={_show(ex.metadata.get(f))}" for f in fields], fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "the model takes no metadata", ha="center", va="center")
    ax.set_title("metadata: " + ex.attribution_kind, fontsize=8)
    fig.suptitle("\n".join(lines), fontsize=9, color="red" if random_weights else "black")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.16 * len(lines) / height))
    return fig


def _show(value) -> str:
    return "missing" if _missing(value) else str(value)
