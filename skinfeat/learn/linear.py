"""The linear probe: multinomial logistic regression on standardized embeddings.

The protocol of the foundation-encoder papers' tables: the embedding (with the encoded metadata
for inputs ``fused``; the metadata alone for ``meta``) standardized on the training rows, then
scikit-learn's ``LogisticRegression`` objective (multinomial, balanced class weights; binomial
for two classes), solved by preconditioned L-BFGS on torch (``linear_search``: the same
minimizer). Its inverse regularization ``C`` is chosen by an inner grouped CV on the training
rows (sklearn's ``StratifiedGroupKFold`` folds over lesions / patients, balanced accuracy; every
C of a fold in one batch, each its own L-BFGS); ``val`` is left to calibration. Inference is
plain numpy on the stored mean, scale, coefficients and intercepts.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np

from ..errors import InputError
from ..schema import Ge, Gt, validate
from .protocol import Part, StageTwoModel, default_classes, log_proba, view_mean

log = logging.getLogger(__name__)

# 1e-4 too: on all 7,991 training rows of HAM10000's real MobileNetV2 embeddings (one
# lesion-grouped 80 % split), 1e-3 was chosen from a grid that started there.
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
ABSENT = -50.0   # the logit of a class the training rows lack (probability ~1e-22)
FINAL_TOL = 1e-6   # the final fit's gradient tolerance: closer to the optimum than sklearn's 1e-4
# (float32 products reach it: their gradients err by ~1e-8 on 10,015 x 1,280 embeddings)


@dataclass(frozen=True)
class LinearConfig:
    """The linear probe's recipe: its inputs, the grid for C and the inner grouped CV that
    chooses it, the solver's iteration cap and the inner folds' seed."""
    inputs: Literal["fused", "image", "meta"] = "fused"
    cs: tuple[Annotated[float, Gt(0)], ...] = C_GRID   # the grid for C; one value: no inner CV
    inner_folds: Annotated[int, Ge(2)] = 3
    max_iter: Annotated[int, Ge(1)] = 1000
    seed: int = 42

    def to_dict(self) -> dict:
        return {**asdict(self), "cs": list(self.cs)}

    def check(self) -> None:
        validate(self)


def design(image: np.ndarray | None, meta: np.ndarray, inputs: str) -> np.ndarray:
    """The probe's columns, before standardization: embedding, then metadata (float64)."""
    image = image[:, 0] if image is not None and image.ndim == 3 else image
    parts = []
    if inputs in ("fused", "image"):
        if image is None:
            raise InputError(f"inputs {inputs} need the image embeddings; none were given")
        parts.append(image)
    if inputs in ("fused", "meta"):
        parts.append(meta)
    return np.concatenate(parts, axis=1).astype(np.float64)


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
             cfg: LinearConfig, basis=None, solutions: list | None = None,
             ) -> tuple[float, dict[float, float]]:
    """The grid's C with the best mean balanced accuracy over an inner grouped CV (ties: the
    smaller C, the stronger penalty); the grid's first-best alone when folds cannot be made.
    Every C of an inner fold is fitted in one torch batch (``linear_search``); ``solutions``
    receives the inner folds' fits at the chosen C (``choose_c_grouped``)."""
    from .linear_search import choose_c_grouped

    cs = sorted(cfg.cs)
    best, scores, k = choose_c_grouped(x, y, groups, cs, cfg.inner_folds, cfg.seed,
                                       max_iter=cfg.max_iter, basis=basis, solutions=solutions)
    if not scores:
        return best, scores
    log.info("linear: C=%g chosen by %d-fold grouped CV (balanced accuracy %.3f)", best, k,
             scores[best])
    if len(cs) > 2 and best in (cs[0], cs[-1]):
        log.warning("linear: the chosen C=%g is at the edge of the grid (%g..%g); a wider grid "
                    "may score better", best, cs[0], cs[-1])
    return best, scores


class LinearProbe(StageTwoModel):
    """Fitted state: ``c_`` (the chosen C), ``mean_`` / ``scale_`` (the standardization),
    ``coef_`` (K', F; K' = 1 for two classes), ``intercept_`` (K',), ``classes_`` (the
    classes the training rows had), ``n_classes_``."""
    kind = "linear"
    title = "linear probe"
    config_class = LinearConfig
    weights_format = "safetensors"
    exportable = None
    differentiable = True
    folds_fallback = True

    STATE = ("mean_", "scale_", "coef_", "intercept_", "classes_")   # the safetensors weights

    def fit(self, train: Part, val: Part, groups: np.ndarray | None = None, *,
            n_classes: int | None = None, meta_fields=None) -> LinearProbe:
        """On one torch thread, as the head trains and as cv's workers run it: L-BFGS steps
        are many small products that intra-op threads only slow down on a busy machine, and a
        fit-head probe then equals the cv one bit for bit (benchmarks/default_model.py)."""
        from .head import one_thread
        return one_thread(self._fit)(train, val, groups, n_classes=n_classes)

    def _fit(self, train: Part, val: Part, groups: np.ndarray | None = None, *,
             n_classes: int | None = None) -> LinearProbe:
        from .head import balanced_class_weights
        from .linear_search import fit_logistic, preconditioner, standardize, warm_start

        cfg = self.config
        cfg.check()
        x, y = design(train[0], train[1], cfg.inputs), np.asarray(train[2])
        if x.shape[1] == 0:
            raise InputError(f"a linear probe on inputs {cfg.inputs} has no features: the "
                             "metadata encoder made none (no field has a value in the training "
                             "rows)")
        n_classes = default_classes(y, n_classes)
        mean, scale = standardize(x)
        xs = (x - mean) / scale
        basis = preconditioner(xs)   # one eigendecomposition for the search and the fit
        solutions: list = []
        c, _ = choose_c(x, y, groups, cfg, basis=basis, solutions=solutions)
        stats: dict = {}
        # from the inner folds' fits at C (the minimizer is the same; the iterations fewer)
        coef, intercept, _ = fit_logistic(
            xs, y, [c], n_classes, max_iter=cfg.max_iter, tol=FINAL_TOL, basis=basis,
            stats=stats, warm=warm_start(solutions, mean, scale) if solutions else None)
        if not stats["converged"][0]:
            log.warning("linear: the fit at C=%g stopped after %d iterations short of its "
                        "tolerance %g (max_iter %d)", c, stats["iterations"][0], FINAL_TOL,
                        cfg.max_iter)
        classes = np.unique(y)
        coef, intercept = coef[0][classes], intercept[0][classes]
        if len(classes) == 2:   # sklearn's binary form: one decision value, z1 - z0
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self._set(c, mean, scale, coef, intercept, classes, n_classes)
        self.class_weights_ = balanced_class_weights(y, n_classes).tolist()
        return self

    def _set(self, c: float, mean, scale, coef, intercept, classes, n_classes: int) -> None:
        self.c_, self.n_classes_ = float(c), int(n_classes)
        self.mean_, self.scale_ = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef_ = np.asarray(coef, np.float64)
        self.intercept_ = np.asarray(intercept, np.float64)
        self.classes_ = np.asarray(classes, np.int64)

    @classmethod
    def describe(cls, config: LinearConfig) -> str:
        return "logistic regression"

    @classmethod
    def report_line(cls, c: LinearConfig) -> str:
        return (f"C from {', '.join(f'{x:g}' for x in c.cs)} by {c.inner_folds}-fold inner "
                "grouped CV")

    @property
    def chosen(self) -> dict:
        return {"C": self.c_}

    def standardize(self, image: np.ndarray | None, meta: np.ndarray) -> np.ndarray:
        return (design(image, meta, self.config.inputs) - self.mean_) / self.scale_

    def _logits_one(self, image: np.ndarray, meta: np.ndarray) -> np.ndarray:
        z = self.standardize(image, meta) @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:   # two classes: sklearn's one decision value is z1 - z0
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        out = np.full((len(z), self.n_classes_), ABSENT)
        out[:, self.classes_] = z
        return out

    def predict_proba(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        def one(img, m):
            z = self._logits_one(img, m)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return z / z.sum(axis=1, keepdims=True)
        return view_mean(one, image, meta, tta)

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        if image is not None and image.ndim == 3 and tta:
            return log_proba(self.predict_proba(image, meta, tta=True))
        return self._logits_one(image, meta)

    def torch_module(self):
        """The probe as a torch module (``linear_module.LinearModule``)."""
        from .linear_module import LinearModule
        return LinearModule(self.config.inputs, self.mean_, self.scale_, self.coef_,
                            self.intercept_, self.classes_, int(self.n_classes_), ABSENT)

    def image_only(self, embed_dim: int, n_classes: int) -> LinearProbe:
        """This fused probe, fitted on all-zero metadata (learn/fallback.py), as the
        ``inputs="image"`` probe it is: the metadata columns' constant contribution (zero
        rows, standardized) folded into the intercepts (exact up to float rounding)."""
        from dataclasses import replace

        if self.config.inputs != "fused":
            raise InputError(f"image_only folds a fused probe; this one is {self.config.inputs}")
        mean, scale = self.mean_[embed_dim:], self.scale_[embed_dim:]
        constant = self.coef_[:, embed_dim:] @ ((0.0 - mean) / scale)
        out = type(self)(replace(self.config, inputs="image"))
        out._set(self.c_, self.mean_[:embed_dim], self.scale_[:embed_dim],
                 self.coef_[:, :embed_dim], self.intercept_ + constant, self.classes_, n_classes)
        out.class_weights_ = self.class_weights_
        out.best_epoch_ = self.best_epoch_
        return out

    def to_bundle(self) -> tuple[dict, dict]:
        import torch

        state = {k.rstrip("_"): torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                 for k in self.STATE}
        return {"C": self.c_}, state

    @classmethod
    def from_bundle(cls, config: dict, weights: dict, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> LinearProbe:
        head, (embed_dim, meta_dim, n_classes) = config["head"], dims
        cfg = cls.config_from(head)
        w = {k: weights[k].numpy() for k in ("mean", "scale", "coef", "intercept", "classes")}
        width = (embed_dim if cfg.inputs != "meta" else 0) + \
            (meta_dim if cfg.inputs != "image" else 0)
        if w["mean"].shape != (width,) or w["coef"].shape[1:] != (width,) or \
                len(w["intercept"]) != len(w["coef"]) or \
                not (w["classes"].size and w["classes"].min() >= 0
                     and w["classes"].max() < n_classes):
            raise InputError(f"weights do not match config.json (a {width}-column probe on "
                             f"{n_classes} classes; mean {w['mean'].shape}, coef "
                             f"{w['coef'].shape})")
        if not all(np.isfinite(v).all() for v in w.values()):
            raise InputError("weights contain NaN or inf")
        model = cls(cfg)
        model._set(float(config["state"]["C"]), **w, n_classes=n_classes)
        return model

