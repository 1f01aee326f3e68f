"""An ensemble of stage-two models of the registry (``--model ensemble``).

``EnsembleModel(EnsembleConfig(members=("head", "linear"))).fit(train, val, groups)`` (the
default model of fit-head and cv) trains every member on the same training rows, each with its
own defaults on the ensemble's inputs and seed (and the ``settings`` a member has fields for:
``--lr`` sets the head member's), and calibrates each on ``val`` (logit adjustment by its
training class weights, then a temperature: ``Calibrator``), so that their probabilities are
comparable. They are
combined by

- ``logmean``: the mean of the members' calibrated log-probabilities (a geometric mean of
  their probabilities, renormalised by the softmax); or
- ``stack``: a multinomial logistic regression (balanced class weights, C = 1, on
  standardized columns) on the members' calibrated log-probabilities, fitted on inner
  out-of-fold predictions of the training rows (``inner_folds`` grouped folds: each member
  refitted on the other folds' rows, calibrated on ``val``, then predicting the fold).

The ensemble's logits live where its members' do, on the balanced training prior: ``logmean``
adds back the log of the training class weights (``class_weights_``), and the stacker is
trained class-balanced, so the run's calibration (``logit_adjust``) and balanced decision rule
treat it as they treat a head.

In a bundle each member is a folder of its own (``head/``, ``linear/``, ``lgbm/``): its
weights, as the member's class writes them, and ``member.json`` with its config, state and
calibration (``weights_format = "folder"``). Explain uses the differentiable members only (the
mean of their calibrated log-probabilities), and says so; ONNX export refuses unless every
member exports.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated, Any, Literal

import numpy as np
import torch

from ..errors import InputError
from ..schema import Ge, SchemaError, validate
from .calibration import Calibrator
from .head import balanced_class_weights
from .models import model_class, register
from .protocol import Part, StageTwoModel, default_classes, fitted, with_fields
from .rows import Rows, as_rows, chunked

log = logging.getLogger(__name__)

# The default members: head + linear probe, chosen by issue 29's 3-seed paired compare (on
# one fold, LightGBM, 8 to 11 points below the others, pulled the 3-member mean below its best
# member: docs/features.md); lgbm is a member by flag.
MEMBERS = ("head", "linear")
STACK_C = 1.0        # the stacker's inverse penalty: M * K columns of log-probabilities
ABSENT = -50.0       # the logit of a class the training rows lack (probability ~1e-22)
MEMBER_FILE = "member.json"


@dataclass(frozen=True)
class EnsembleConfig:
    """The ensemble's recipe: its members (kinds of the registry, each with its defaults on
    the ensemble's inputs and seed), how their calibrated probabilities are combined, and the
    stacker's inner folds."""
    inputs: Literal["fused", "image", "meta"] = "fused"
    members: tuple[str, ...] = MEMBERS
    combine: Literal["logmean", "stack"] = "logmean"
    inner_folds: Annotated[int, Ge(2)] = 3    # combine="stack": out-of-fold predictions
    seed: int = 42
    num_threads: Annotated[int, Ge(0)] = 0    # handed to a member that has threads (LightGBM)
    # Set on every member whose config has the field (``--lr 3e-4``: the head member's)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "members": list(self.members)}

    def check(self) -> None:
        validate(self)
        if not self.members:
            raise InputError("ensemble members: give at least one model")
        repeated = sorted({m for m in self.members if self.members.count(m) > 1})
        if repeated:
            raise InputError(f"ensemble members: {', '.join(repeated)} given more than once")
        for kind in self.members:
            if kind == EnsembleModel.kind:
                raise InputError("ensemble members: an ensemble cannot be a member")
            model_class(kind)   # one line naming the choices
        unknown = sorted(set(self.settings) - _member_fields(self.members))
        if unknown:
            raise InputError(f"ensemble settings: no member ({', '.join(self.members)}) has "
                             f"the field(s) {', '.join(unknown)}")
        for kind in self.members:   # a setting's error names it: settings.KEY
            try:
                member_config(self, kind).check()
            except SchemaError as exc:
                if exc.key not in self.settings:
                    raise
                raise SchemaError(exc.detail, f"settings.{exc.key}", exc.source) from None


def member_config(config: EnsembleConfig, kind: str):
    """A member's config: its class's defaults with the ensemble's ``settings`` it has fields
    for, on the ensemble's inputs, seed and threads."""
    return with_fields(model_class(kind).config_class(), **config.settings,
                       inputs=config.inputs, seed=config.seed,
                       num_threads=config.num_threads or None)


def _field_names(config_class) -> set[str]:
    return {f.name for f in fields(config_class)}


def _member_fields(members) -> set[str]:
    """Every field name the members' config classes have."""
    return set().union(*(_field_names(model_class(m).config_class) for m in members))


def _take(part: Part, rows: np.ndarray) -> Part:
    """Rows ``rows`` (positions) of a part, its image still without a copy."""
    image, meta, y = part
    image = as_rows(image)
    return Rows(image.base, image.index[rows]), np.asarray(meta)[rows], np.asarray(y)[rows]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _log_w(class_weights) -> np.ndarray:
    w = np.asarray(class_weights, np.float64)
    return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0)


class EnsembleModel(StageTwoModel):
    """Fitted state: ``members_`` (fitted models, in ``config.members`` order),
    ``calibrators_`` (each member's, fitted on val), ``class_weights_`` (balanced, of the
    training rows), ``stacker_`` (``combine="stack"``: standardization mean and scale,
    coefficients (K, M * K) and intercepts (K,)), ``n_classes_``."""
    kind = "ensemble"
    title = "ensemble"
    config_class = EnsembleConfig
    weights_format = "folder"

    members_: list[StageTwoModel] | None = None
    calibrators_: list[Calibrator] | None = None
    stacker_: dict | None = None
    n_classes_: int | None = None

    # -- capabilities: the members' ------------------------------------------------------------
    @property
    def differentiable(self) -> bool:   # type: ignore[override]
        """True when a member is: explain uses those members (see ``torch_module``)."""
        return any(m.differentiable for m in self._members())

    @property
    def exportable(self) -> str | None:   # type: ignore[override]
        """None when every member exports (the ONNX graph is then the whole ensemble)."""
        refused = [m for m in self._members() if m.exportable]
        if not refused:
            return None
        return (f"an ensemble whose member(s) {', '.join(m.kind for m in refused)} do not "
                f"export ({refused[0].exportable})")

    @classmethod
    def config_with(cls, config: EnsembleConfig, values: dict) -> EnsembleConfig:
        """The ensemble's own fields from ``values``, and into ``settings`` the others that a
        member has a field for (``lr``: the head's), so no flag is silently dropped."""
        config = with_fields(config, **values)
        own, theirs = _field_names(type(config)), _member_fields(config.members)
        extra = {k: v for k, v in values.items()
                 if v is not None and k not in own and k in theirs}
        return replace(config, settings={**config.settings, **extra}) if extra else config

    def _members(self) -> list[StageTwoModel]:
        if self.members_ is not None:
            return self.members_
        return [model_class(k)(member_config(self.config, k)) for k in self.config.members]

    # -- fit -------------------------------------------------------------------------------
    def fit(self, train: Part, val: Part, groups: np.ndarray | None = None, *,
            n_classes: int | None = None, meta_fields=None) -> EnsembleModel:
        n_classes = default_classes(np.asarray(train[2]), n_classes)
        _fit_together([self], [train], [val], [groups], n_classes, [meta_fields], True)
        return self

    @classmethod
    def fit_batched(cls, config, trains, vals, groups, *, n_classes: int, meta_fields,
                    batched: bool = True) -> list[EnsembleModel]:
        """One ensemble per (train, val) pair. Member by member, every fit of every pair (the
        stacker's inner folds, then the pair's own) goes through the member's
        ``fit_batched``: the heads of a fit-head's fused model and its missing-metadata
        fallback, or of a cv's folds, train as one batched network."""
        models = [cls(config) for _ in trains]
        _fit_together(models, trains, vals, groups, n_classes, meta_fields, batched)
        return models

    @classmethod
    def can_fold_fallback(cls, config) -> bool:
        """Every member folds an image-only fallback (the head, the linear probe)."""
        return all(model_class(k).can_fold_fallback(member_config(config, k))
                   for k in config.members)

    def image_only(self, embed_dim: int, n_classes: int) -> EnsembleModel:
        """This fused ensemble, its members fitted on all-zero metadata (learn/fallback.py), as
        the ``inputs="image"`` ensemble it is: each member's ``image_only``, with the same
        calibrations, class weights and stacker (the members' logits are unchanged)."""
        members = fitted(self, self.members_)
        out = type(self)(replace(self.config, inputs="image"))
        out.members_ = [m.image_only(embed_dim, n_classes) for m in members]
        out.calibrators_ = list(fitted(self, self.calibrators_))
        out.class_weights_, out.stacker_ = self.class_weights_, self.stacker_
        out.n_classes_, out.best_epoch_ = self.n_classes_, self.best_epoch_
        return out

    def _inner_folds(self, y: np.ndarray, groups: np.ndarray | None) -> list:
        """The stacker's grouped folds of the training rows (StratifiedGroupKFold); fewer
        groups than folds: refused in one line."""
        from sklearn.model_selection import StratifiedGroupKFold

        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        k = self.config.inner_folds
        if len(np.unique(groups)) < k:
            raise InputError(f"ensemble combine=stack: {k} inner folds need at least {k} "
                             f"groups in the training rows, got {len(np.unique(groups))}")
        folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=self.config.seed)
                     .split(np.zeros(len(y)), y, groups))
        return folds

    # -- predict ----------------------------------------------------------------------------
    def member_log_probas(self, image, meta, tta: bool = False) -> list[np.ndarray]:
        """Each member's calibrated log-probabilities, (N, K) each."""
        members, calibrators = fitted(self, self.members_), fitted(self, self.calibrators_)
        return [_member_log_proba(m, c, (image, meta), tta)
                for m, c in zip(members, calibrators, strict=True)]

    def logits(self, image: np.ndarray, meta: np.ndarray, tta: bool = False) -> np.ndarray:
        logs = self.member_log_probas(image, meta, tta)
        if self.stacker_ is None:
            return np.mean(logs, axis=0) + _log_w(self.class_weights_)
        s = self.stacker_
        x = (np.concatenate(logs, axis=1) - s["mean"]) / s["scale"]
        return x @ s["coef"].T + s["intercept"]

    @classmethod
    def describe(cls, config: EnsembleConfig) -> str:
        return f"ensemble ({'+'.join(config.members)}, {config.combine})"

    @classmethod
    def report_line(cls, c: EnsembleConfig) -> str:
        how = ("the mean of their calibrated log-probabilities" if c.combine == "logmean" else
               f"a logistic regression on their calibrated log-probabilities, fitted on "
               f"{c.inner_folds}-fold inner grouped out-of-fold predictions")
        return (f"members {', '.join(c.members)} (each with its defaults), each calibrated on "
                f"val, combined by {how}")

    @property
    def chosen(self) -> dict:
        return {f"{m.kind}.{k}": v for m in self.members_ or [] for k, v in m.chosen.items()}

    # -- bundle -------------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict, dict]:
        """(state, files): each member's weights and ``member.json`` in a folder named after
        its kind."""
        files: dict = {}
        members, calibrators = fitted(self, self.members_), fitted(self, self.calibrators_)
        for m, cal in zip(members, calibrators, strict=True):
            state, weights = m.to_bundle()
            files[f"{m.kind}/{MEMBER_FILE}"] = json.dumps(
                {"model_type": m.kind, "head": m.config_dict(), "state": state,
                 "calibration": cal.to_dict(), "best_epoch": m.best_epoch_,
                 "class_weights": m.class_weights_}, indent=2, default=_plain)
            files[f"{m.kind}/{m.file_name()}"] = weights
        stacker = None if self.stacker_ is None else \
            {k: np.asarray(v).tolist() for k, v in self.stacker_.items()}
        return {"members": [m.kind for m in fitted(self, self.members_)],
                "class_weights": list(fitted(self, self.class_weights_)),
                "stacker": stacker}, files

    @classmethod
    def from_bundle(cls, config: dict, weights: Callable, dims: tuple[int, int, int],
                    load_state: Callable | None = None) -> EnsembleModel:
        """``weights(path)``: a file of the bundle's folder, by its path there (text, or a
        safetensors state dict)."""
        cfg = cls.config_from(config["head"])
        state, n_classes = config["state"], dims[2]
        if list(state["members"]) != list(cfg.members):
            raise InputError(f"state.members {state['members']} differ from head.members "
                             f"{list(cfg.members)}")
        model = cls(cfg)
        model.members_, model.calibrators_ = [], []
        for kind in cfg.members:
            info = json.loads(weights(f"{kind}/{MEMBER_FILE}"))
            if info.get("model_type") != kind:
                raise InputError(f"{kind}/{MEMBER_FILE}: model_type {info.get('model_type')!r}, "
                                 f"expected {kind!r}")
            member_cls = model_class(kind)
            member = member_cls.from_bundle(info, weights(f"{kind}/{member_cls.file_name()}"),
                                            dims, load_state)
            member.best_epoch_ = info.get("best_epoch")
            member.class_weights_ = info.get("class_weights")
            model.members_.append(member)
            model.calibrators_.append(Calibrator.from_dict(
                info["calibration"], n_classes=n_classes, key=f"{kind}/{MEMBER_FILE}"))
        model.class_weights_ = [float(w) for w in state["class_weights"]]
        model.n_classes_ = n_classes
        if len(model.class_weights_) != n_classes:
            raise InputError(f"state.class_weights has {len(model.class_weights_)} entries, "
                             f"expected {n_classes}")
        if state.get("stacker") is not None:
            s = {k: np.asarray(v, np.float64) for k, v in state["stacker"].items()}
            width = len(cfg.members) * n_classes
            if s["coef"].shape != (n_classes, width) or s["intercept"].shape != (n_classes,) \
                    or s["mean"].shape != (width,) or s["scale"].shape != (width,):
                raise InputError(f"state.stacker: expected coef ({n_classes}, {width}), got "
                                 f"{s['coef'].shape}")
            model.stacker_ = s
        return model

    # -- torch: explain and export ----------------------------------------------------------------
    def torch_module(self) -> torch.nn.Module:
        """The ensemble as (image, meta) -> logits over its differentiable members: all of
        them (then it equals ``logits``, and exports), or, for explain, those that are (the
        mean of their calibrated log-probabilities), with a warning naming the others."""
        members, calibrators = fitted(self, self.members_), fitted(self, self.calibrators_)
        pick = [i for i, m in enumerate(members) if m.differentiable]
        if not pick:
            raise NotImplementedError("no member of this ensemble is differentiable")
        left = [m.kind for m in members if not m.differentiable]
        if left:
            log.warning("ensemble: the heatmap uses the differentiable member(s) %s only "
                        "(the mean of their calibrated log-probabilities); %s left out",
                        ", ".join(members[i].kind for i in pick), ", ".join(left))
        stacker = self.stacker_ if not left else None
        return EnsembleModule([members[i].torch_module() for i in pick],
                              [calibrators[i] for i in pick], self.class_weights_,
                              stacker).eval()


class EnsembleModule(torch.nn.Module):
    """Members' modules, their calibrations and the combination, as one torch module."""

    def __init__(self, nets: list, calibrators: list[Calibrator], class_weights,
                 stacker: dict | None):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        k = len(class_weights)
        for i, cal in enumerate(calibrators):
            adjust = np.zeros(k) if cal.adjust is None else np.asarray(cal.adjust)
            bias = np.zeros(k) if cal.bias is None else np.asarray(cal.bias)
            self.register_buffer(f"adjust{i}", torch.as_tensor(adjust, dtype=torch.float32))
            self.register_buffer(f"bias{i}", torch.as_tensor(bias, dtype=torch.float32))
            self.register_buffer(f"temperature{i}", torch.tensor(float(cal.temperature)))
        self.register_buffer("log_w", torch.as_tensor(_log_w(class_weights), dtype=torch.float32))
        self.use_meta = any(getattr(n, "use_meta", True) for n in nets)
        self.stacked = stacker is not None
        if stacker is not None:
            for name in ("mean", "scale", "coef", "intercept"):
                self.register_buffer(name, torch.as_tensor(stacker[name], dtype=torch.float32))

    def _buffer(self, name: str) -> torch.Tensor:
        return self.get_buffer(name)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        logs = []
        for i, net in enumerate(self.nets):
            z = (net(image, meta) - self._buffer(f"adjust{i}")) / self._buffer(f"temperature{i}")
            logs.append(torch.log_softmax(z + self._buffer(f"bias{i}"), dim=1))
        if self.stacked:
            x = (torch.cat(logs, dim=1) - self._buffer("mean")) / self._buffer("scale")
            return x @ self._buffer("coef").T + self._buffer("intercept")
        return torch.stack(logs).mean(0) + self._buffer("log_w")


def _fit_together(models: list[EnsembleModel], trains, vals, groups, n_classes: int,
                  meta_fields, batched: bool) -> None:
    """Fit ``models`` (one config), one per (train, val) pair: member by member, every fit
    of every pair (the stacker's inner folds, then the pair's own) in one ``fit_batched``."""
    config = models[0].config
    config.check()
    parts, part_vals, part_groups, part_fields, plans = [], [], [], [], []
    for model, train, val, g, f in zip(models, trains, vals, groups, meta_fields,
                                       strict=True):
        y = np.asarray(train[2])
        folds = model._inner_folds(y, g) if config.combine == "stack" else []
        for tr, _ in folds:
            parts.append(_take(train, tr))
            part_groups.append(None if g is None else np.asarray(g)[tr])
        parts.append(train)
        part_groups.append(g)
        part_vals += [val] * (len(folds) + 1)
        part_fields += [f] * (len(folds) + 1)
        plans.append((len(parts) - len(folds) - 1, folds))
    per_member = []
    for kind in config.members:
        fits = model_class(kind).fit_batched(member_config(config, kind), parts, part_vals,
                                             part_groups, n_classes=n_classes,
                                             meta_fields=part_fields, batched=batched)
        per_member.append((fits, [_calibrate(m, v) for m, v in zip(fits, part_vals,
                                                                    strict=True)]))
        log.info("ensemble: member %s fitted (%d fit(s))", kind, len(fits))
    for model, train, (start, folds) in zip(models, trains, plans, strict=True):
        y = np.asarray(train[2])
        last = start + len(folds)
        model.members_ = [fits[last] for fits, _ in per_member]
        model.calibrators_ = [cals[last] for _, cals in per_member]
        model.n_classes_ = n_classes
        model.class_weights_ = balanced_class_weights(y, n_classes).tolist()
        # the report's epochs: the first member that has them (the head)
        epochs = [(m.best_epoch_, m.epochs_run_) for m in model.members_
                  if m.best_epoch_ is not None]
        model.best_epoch_, model.epochs_run_ = epochs[0] if epochs else (None, None)
        if config.combine == "stack":
            oof = []
            for fits, cals in per_member:
                column = np.zeros((len(y), n_classes))
                for j, (_, te) in enumerate(folds):
                    column[te] = _member_log_proba(fits[start + j], cals[start + j],
                                                   _take(train, te)[:2])
                oof.append(column)
            model.stacker_ = _fit_stacker(np.concatenate(oof, axis=1), y, n_classes)


def _plain(value):
    """A numpy scalar or array as JSON holds it."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _calibrate(model: StageTwoModel, val: Part) -> Calibrator:
    """A member's calibration on val: logit adjustment by its class weights, then T."""
    z = chunked(lambda i, m: model.logits(i, m), val[0], val[1])
    return Calibrator("logit_adjust").fit(z, np.asarray(val[2]),
                                          class_weights=model.class_weights_)


def _member_log_proba(model: StageTwoModel, cal: Calibrator, part,
                      tta: bool = False) -> np.ndarray:
    z = chunked(lambda i, m: model.logits(i, m, tta=tta), part[0], part[1])
    return _log_softmax(cal.logits(z))


def _fit_stacker(x: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """The multinomial logistic regression on the members' out-of-fold log-probabilities
    (standardized; balanced class weights; a class the rows lack gets the ABSENT logit)."""
    from .linear_search import fit_logistic, standardize

    mean, scale = standardize(x)
    coef, intercept, _ = fit_logistic((x - mean) / scale, y, [STACK_C], n_classes,
                                      tol=1e-6, dtype="float64")
    return {"mean": mean, "scale": scale, "coef": coef[0],
            "intercept": np.where(np.isfinite(intercept[0]), intercept[0], ABSENT)}


register(EnsembleModel)
