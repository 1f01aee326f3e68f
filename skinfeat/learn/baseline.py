"""LightGBM baseline on [image embedding (optionally PCA-reduced), encoded metadata].

Cost is the thing to watch: a 7-class LightGBM on 8,000 x 768 dense columns takes ~9 s per fit
on 2 cores even with light settings, and minutes with heavy ones. By default the embedding is
reduced by a PCA fitted on the training rows only (``pca_dim=64``), which brings a fit under a
second; ``benchmarks/stage_two.py`` prints what that costs in balanced accuracy.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np

from ..errors import InputError
from ..schema import Ge, Gt, Le, validate
from .protocol import StageTwoModel, default_classes, fitted, log_proba, view_mean
from .rows import Rows, chunked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LGBMConfig:
    inputs: Literal["fused", "image", "meta"] = "fused"
    pca_dim: Annotated[int, Ge(0)] = 64          # 0 keeps all embedding columns
    num_leaves: Annotated[int, Ge(2)] = 15       # LightGBM needs at least 2
    max_bin: Annotated[int, Ge(2)] = 63
    colsample: Annotated[float, Gt(0), Le(1)] = 0.3
    learning_rate: Annotated[float, Gt(0)] = 0.1
    n_estimators: Annotated[int, Ge(1)] = 400
    early_stopping: Annotated[int, Ge(1)] = 20   # rounds without improvement on val
    seed: int = 42
    num_threads: Annotated[int, Ge(0)] = 0       # 0: every core (cv's worker processes use 1 each)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Every field's type, choices and range (the annotations above; ``skinfeat.schema``)."""
        validate(self)


class PCAProjection:
    """PCA of the embedding, fitted on training rows only; plain arrays so it saves as JSON."""

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean, self.components = mean, components

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, seed: int) -> PCAProjection:
        from sklearn.decomposition import PCA
        pca = PCA(n_components=min(dim, *x.shape), random_state=seed, svd_solver="randomized")
        pca.fit(x)
        return cls(pca.mean_.astype(np.float32), pca.components_.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T


# The PCA is fitted on at most this many training rows (a seeded draw above it): 64 components
# of a 768-d embedding are pinned down by far fewer, and fitting on all of a 320k-row fold
# would copy it twice (the rows, then sklearn's centred copy: 2 GB).
PCA_FIT_ROWS = 50_000


def pca_fit_rows(image: np.ndarray | Rows, seed: int) -> np.ndarray:
    """The training rows the PCA is fitted on: all of them, or ``PCA_FIT_ROWS`` drawn."""
    if len(image) <= PCA_FIT_ROWS:
        return np.asarray(image)
    pick = np.sort(np.random.default_rng(seed).choice(len(image), PCA_FIT_ROWS, replace=False))
    return image.gather(pick) if isinstance(image, Rows) else np.asarray(image[pick])


def design_matrix(image: np.ndarray | Rows | None, meta: np.ndarray, inputs: str,
                  pca: PCAProjection | None) -> np.ndarray:
    """[embedding (PCA-projected, in chunks of rows from ``Rows``), metadata] as float32."""
    parts = []
    if inputs in ("fused", "image"):
        if image is None:
            raise InputError(f"inputs {inputs} need the image embeddings; none were given")
        parts.append(chunked(pca, image) if pca is not None else np.asarray(image))
    if inputs in ("fused", "meta"):
        parts.append(meta)
    return np.concatenate(parts, axis=1).astype(np.float32)


class LGBMModel(StageTwoModel):
    """LightGBM on [embedding (PCA-reduced), metadata]: ``booster_`` early-stopped on val,
    ``pca_`` fitted on the training rows (None: all embedding columns)."""
    kind = "lgbm"
    title = "LightGBM"
    config_class = LGBMConfig
    weights_format = "text"
    weights_file = "model.lgbm.txt"
    exportable = "LightGBM (predict with skinfeat, or convert it with onnxmltools)"
    differentiable = False
    meta_attribution = "LightGBM feature contribution (raw score, summed over the field's columns)"

    booster_: Any = None   # a lightgbm.Booster (lightgbm is imported lazily)
    pca_: PCAProjection | None = None
    n_classes_: int | None = None

    def fit(self, train, val, groups=None, *, n_classes: int | None = None,
            meta_fields=None) -> LGBMModel:
        from .head import balanced_class_weights

        n_classes = default_classes(train[2], n_classes)
        self.booster_, self.pca_ = fit_booster(train, val, n_classes, self.config)
        self.n_classes_ = n_classes
        self.best_epoch_ = int(self.booster_.best_iteration)
        self.class_weights_ = balanced_class_weights(train[2], n_classes).tolist()
        return self

    @classmethod
    def fitted(cls, booster, pca: PCAProjection | None, config: LGBMConfig,
               n_classes: int) -> LGBMModel:
        model = cls(config)
        model.booster_, model.pca_, model.n_classes_ = booster, pca, int(n_classes)
        return model

    @classmethod
    def describe(cls, config: LGBMConfig) -> str:
        return "lightgbm"

    @classmethod
    def report_line(cls, c: LGBMConfig) -> str:
        cols = f"PCA to {c.pca_dim} dims fitted on the training rows" if c.pca_dim \
            else "all embedding columns"
        return f"{cols}; up to {c.n_estimators} rounds"

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        return log_proba(self.predict_proba(image, meta, tta=tta))

    def predict_proba(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        """Class probabilities; with ``tta`` and (N, V, D) embeddings, averaged over the views
        (as the head does), else from view 0, the original image."""
        def one(img, m):
            x = design_matrix(img, m, self.config.inputs, self.pca_)
            return self.booster_.predict(x, num_iteration=self.booster_.best_iteration or None)
        return view_mean(one, image, meta, tta)

    def to_state(self) -> tuple[str, dict]:
        pca = None if self.pca_ is None else {"mean": self.pca_.mean.tolist(),
                                              "components": self.pca_.components.tolist()}
        return self.booster_.model_to_string(), {"cfg": self.config.to_dict(), "pca": pca,
                                                  "n_classes": self.n_classes_}

    def to_bundle(self) -> tuple[dict, str]:
        model_str, state = self.to_state()
        return state, model_str

    @classmethod
    def from_state(cls, model_str: str, state: dict) -> LGBMModel:
        import lightgbm as lgb
        pca = state.get("pca")
        pca = None if pca is None else PCAProjection(np.asarray(pca["mean"], np.float32),
                                                     np.asarray(pca["components"], np.float32))
        return cls.fitted(lgb.Booster(model_str=model_str), pca, LGBMConfig(**state["cfg"]),
                          int(state["n_classes"]))

    @classmethod
    def from_bundle(cls, config: dict, weights: str, dims, load_state=None) -> LGBMModel:
        import lightgbm as lgb
        try:
            model = cls.from_state(weights, config["state"])
        except lgb.basic.LightGBMError as exc:
            raise InputError(str(exc)) from exc
        if model.pca_ is not None and model.pca_.mean.shape[0] != dims[0]:
            raise InputError(f"PCA expects {model.pca_.mean.shape[0]}-d embeddings, config says "
                             f"embed_dim {dims[0]}")
        return model

    def meta_contributions(self, image: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """(K, M): per class, each encoded metadata column's contribution to the raw score
        (LightGBM's ``pred_contrib``) for one row."""
        image = image[:, 0] if image is not None and image.ndim == 3 else image
        n_classes = fitted(self, self.n_classes_)
        if self.config.inputs == "image":
            return np.zeros((n_classes, meta.shape[1]))
        x = design_matrix(image, meta, self.config.inputs, self.pca_)
        contrib = self.booster_.predict(x, pred_contrib=True,
                                        num_iteration=self.booster_.best_iteration or None)
        # (1, K * (F + 1)): per class, one value per column, then the bias; metadata comes last.
        per_class = np.asarray(contrib).reshape(n_classes, x.shape[1] + 1)[:, :-1]
        return per_class[:, x.shape[1] - meta.shape[1]:]


def fit_lgbm(train: tuple[np.ndarray, np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray, np.ndarray], n_classes: int,
             cfg: LGBMConfig = LGBMConfig()) -> LGBMModel:
    """Class-balanced multiclass LightGBM with early stopping on ``val`` (never the scored rows)."""
    return LGBMModel(cfg).fit(train, val, n_classes=n_classes)


def fit_booster(train: tuple[np.ndarray, np.ndarray, np.ndarray],
                val: tuple[np.ndarray, np.ndarray, np.ndarray], n_classes: int,
                cfg: LGBMConfig) -> tuple[object, PCAProjection | None]:
    """The booster and the PCA of ``LGBMModel.fit``."""
    import lightgbm as lgb

    from .head import balanced_class_weights

    (xi, xm, y), (vi, vm, vy) = train, val
    xi = xi[:, 0] if xi.ndim == 3 else xi
    vi = vi[:, 0] if vi.ndim == 3 else vi
    pca = PCAProjection.fit(pca_fit_rows(xi, cfg.seed), cfg.pca_dim, cfg.seed) \
        if cfg.pca_dim and cfg.inputs != "meta" and cfg.pca_dim < xi.shape[1] else None
    x_tr = design_matrix(xi, xm, cfg.inputs, pca)
    x_va = design_matrix(vi, vm, cfg.inputs, pca)
    if x_tr.shape[1] == 0:   # LightGBM's own message on zero columns names a "forced split"
        raise InputError(f"LightGBM on inputs {cfg.inputs} has no features: the metadata "
                         "encoder made none (no field has a value in the training rows)")
    # Balanced class weights per row: for a binary task the positive / negative weight ratio is
    # n_neg / n_pos, what LightGBM's scale_pos_weight is usually set to, so it is not added too
    # (ISIC 2024: 1,020 to 1).
    w = balanced_class_weights(y, n_classes)
    params = {"objective": "multiclass", "num_class": n_classes, "num_leaves": cfg.num_leaves,
              "max_bin": cfg.max_bin, "feature_fraction": cfg.colsample,
              "learning_rate": cfg.learning_rate, "min_data_in_leaf": 10,
              "num_threads": cfg.num_threads or os.cpu_count() or 1, "seed": cfg.seed,
              "deterministic": True, "force_col_wise": True, "verbosity": -1}
    dtrain = lgb.Dataset(x_tr, label=y, weight=w[y], params={"max_bin": cfg.max_bin})
    dval = lgb.Dataset(x_va, label=vy, reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators, valid_sets=[dval],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    log.info("lgbm: best iteration %d of %d", booster.best_iteration, cfg.n_estimators)
    return booster, pca
