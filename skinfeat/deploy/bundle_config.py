"""The typed schema of a bundle's ``config.json``: ``BundleConfig`` (one model) and
``EnsembleConfig`` (a fold ensemble: member folders whose calibrated probabilities average).

Both are versioned by ``format`` and parsed by ``skinfeat.schema.parse``: an unknown key, a
wrong type or an out-of-range value is one line naming the file and the key
(``run/config.json: key 'head.n_classes': expected 7 (the number of classes), got 6``). The
sections that have readers of their own (the metadata encoder, the calibrator, the dataset
description, the backbone identity, the model's recipe) are tables here, checked where they
are read (``MetadataEncoder.from_dict``, ``Calibrator.from_dict``, ``DatasetSpec.from_dict``,
the model class's ``from_bundle``). Every bundle written since ``skinfeat-bundle/1`` parses:
``migrate`` upgrades an older ``config.json`` table to this format, in one place, on load.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from ..errors import SkinfeatError
from ..learn.models import registry
from ..schema import Ge, Gt, Le, SchemaError, dump, parse

FORMAT = "skinfeat-bundle/2"
OLDER = ("skinfeat-bundle/1",)   # the formats ``migrate`` upgrades
Table = dict[str, Any]
# A fusion head's network, as every head before 59a615a had it (the published Keras recipe's
# layers): bundles of then lack these keys of ``head`` (``migrate`` fills them in).
HEAD_LAYERS = {"head": "reference", "inputs": "fused", "meta_width": 32, "meta_out": 16,
               "dense_width": 64, "image_dropout": 0.3, "dropout": 0.4}


class BundleError(SkinfeatError, ValueError):
    """A bundle that is missing, incomplete or does not match its own config."""


class BundleConfigError(BundleError, SchemaError):
    """A ``config.json`` value that does not fit the schema (names the file and the key)."""


def _names(value: tuple[str, ...], key: str, least: int) -> None:
    if len(value) < least or not all(v.strip() for v in value):
        raise SchemaError(f"expected a list of at least {least} non-empty strings, got "
                          f"{len(value)} name(s)", key)
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise SchemaError(f"expected distinct names, got {dupes[0]!r} twice", key)


def _folder(name: str, key: str) -> None:
    """A folder beside config.json, never a path that leaves the bundle."""
    if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise SchemaError(f"expected a folder name inside the bundle, got {name!r}", key)


def _count(head: Mapping, key: str, low: int) -> int:
    value = head.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        shown = "null" if value is None else f"{type(value).__name__} ({value!r})"
        raise SchemaError(f"expected an integer >= {low}, got {shown}", f"head.{key}")
    return value


@dataclass(frozen=True)
class HeadDims:
    """The stage-two model's input and output sizes (``head`` of a single-model bundle)."""
    embed_dim: int
    meta_dim: int     # 0: a model trained without metadata fields
    n_classes: int

    @classmethod
    def of(cls, head: Mapping) -> HeadDims:
        return cls(_count(head, "embed_dim", 1), _count(head, "meta_dim", 0),
                   _count(head, "n_classes", 2))

    def __iter__(self):
        return iter((self.embed_dim, self.meta_dim, self.n_classes))


class _Config:
    """``to_dict`` / ``from_dict`` shared by both shapes."""

    OPTIONAL: tuple[str, ...] = ()   # keys left out of config.json when None
    # Set by @dataclass on each subclass; declared here so mypy knows they are dataclasses.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to_dict(self) -> dict:
        d = {f.name: dump(getattr(self, f.name)) for f in fields(self)}
        return {k: v for k, v in d.items() if not (v is None and k in self.OPTIONAL)}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config.json") -> Self:
        return parse(cls, d, source, BundleConfigError)


@dataclass(frozen=True, kw_only=True)
class BundleConfig(_Config):
    """One stage-two model: everything predict needs, and the recipe it was made with."""
    format: Literal[FORMAT] = FORMAT  # type: ignore[valid-type]  # a constant: see schema.py
    model_type: str                       # a kind of the model registry (learn.models)
    classes: tuple[str, ...]
    encoder: Table                        # the fitted MetadataEncoder
    backbone: Table | None                # the embedding's identity (null: made outside)
    head: Table                           # the model's recipe + embed_dim, meta_dim, n_classes
    dataset: Table | None = None          # DatasetSpec (absent: HAM10000, older bundles)
    task: Table | None = None
    weights: str = "unknown"              # where the backbone's weights came from, in words
    temperature: Annotated[float, Gt(0)] | None = None   # bundles before "calibration"
    calibration: Table | None = None      # Calibrator.to_dict()
    threshold: Annotated[float, Ge(0), Le(1)] | None = None   # a binary task's, chosen on val
    tta: bool = False
    split: str | None = None
    seed: int | None = None
    best_epoch: int | None = None
    run: Table | None = None              # the RunConfig that made it
    skinfeat: str | None = None           # the version that wrote it
    state: Table | None = None            # the model's own state besides its weights (to_bundle)
    # True: patient context features (learn/context.py) follow the encoder's in the metadata;
    # absent in bundles made without --group-context (and in every bundle made before it).
    group_context: bool | None = None
    # A folder inside the bundle holding the image-only model that scores rows with every
    # metadata field missing (learn/fallback.py); absent: no fallback (every bundle before it).
    fallback: str | None = None

    OPTIONAL = ("dataset", "task", "state", "group_context", "fallback")

    def check(self) -> None:
        models = registry()
        if self.model_type not in models:
            raise SchemaError(f"expected one of {', '.join(models)} or ensemble, got "
                              f"{self.model_type!r}", "model_type")
        _names(self.classes, "classes", 2)
        if self.fallback is not None:
            _folder(self.fallback, "fallback")
        dims = self.dims
        if dims.n_classes != len(self.classes):
            raise SchemaError(f"expected {len(self.classes)} (the number of classes), got "
                              f"{dims.n_classes}", "head.n_classes")

    @property
    def dims(self) -> HeadDims:
        return HeadDims.of(self.head)


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(_Config):
    """A fold ensemble (``cv --save-models``): ``members`` are bundle folders beside this
    config; predict averages their calibrated probabilities (``combine`` says how)."""
    format: Literal[FORMAT] = FORMAT  # type: ignore[valid-type]  # a constant: see schema.py
    model_type: Literal["ensemble"] = "ensemble"
    members: tuple[str, ...]
    classes: tuple[str, ...]
    backbone: Table | None
    head: Table                           # members (the model kind), inputs, embed_dim
    encoder: Table | None = None          # null: each member has its own
    dataset: Table | None = None
    task: Table | None = None
    weights: str = "unknown"
    tta: bool = False
    split: str | None = None
    seeds: tuple[int, ...] = ()
    combine: str = ""
    skinfeat: str | None = None

    OPTIONAL = ("dataset", "task", "skinfeat")

    def check(self) -> None:
        _names(self.classes, "classes", 2)
        _names(self.members, "members", 1)
        _count(self.head, "embed_dim", 1)

    @classmethod
    def of_members(cls, first: BundleConfig, members: list[str], *, inputs: str, split: str,
                   seeds: list[int], combine: str) -> EnsembleConfig:
        """The ensemble of ``members``, described by its first member's config."""
        return cls(members=tuple(members), classes=first.classes, backbone=first.backbone,
                   head={"members": first.model_type, "inputs": inputs,
                         "embed_dim": first.dims.embed_dim},
                   dataset=first.dataset, task=first.task, weights=first.weights,
                   tta=first.tta, split=split, seeds=tuple(seeds), combine=combine)


def migrate(d: Any) -> Any:
    """An older ``config.json`` table upgraded to ``FORMAT``, in the one place that knows the
    older shapes (a copy; a current table is returned as it is, the same object):

    - skinfeat-bundle/1 -> 2: a model's own state moved from a key named after the model
      (``lgbm``: LightGBM's config and PCA, ``linear``: the probe's C) to ``state``, and the
      LightGBM model file keeps its name (``LGBMModel.weights_file``);
    - bundles made before the dataset description and task were stored: HAM10000, every class
      (``dataset``, ``task``);
    - bundles made before ``calibration``: their ``temperature`` alone (temperature scaling);
    - fusion-head bundles made before the head's architecture was a recipe field: the layers
      every head had then (``HEAD_LAYERS``), so the network is rebuilt as it was trained.
    """
    if not isinstance(d, Mapping):
        return d
    single = not fold_ensemble(d)
    old = d.get("format") in OLDER
    described = d.get("dataset") is not None and d.get("task") is not None
    calibrated = not single or d.get("calibration") is not None
    head = d.get("head")
    layered = not (single and d.get("model_type") == "head" and isinstance(head, Mapping)) \
        or all(head.get(k) is not None for k in HEAD_LAYERS)
    if not old and described and calibrated and layered:
        return d
    d = dict(d)
    if not layered and isinstance(head, Mapping):
        d["head"] = {**head, **{k: v for k, v in HEAD_LAYERS.items() if head.get(k) is None}}
    if old and single:
        for kind in ("lgbm", "linear"):
            if kind in d:
                state = d.pop(kind)
                if d.get("model_type") == kind:
                    d["state"] = state
    if old:
        d["format"] = FORMAT
    if d.get("dataset") is None:
        from ..data.presets import PRESETS

        d["dataset"] = PRESETS["ham10000"].to_dict()
    if d.get("task") is None:
        d["task"] = {"kind": "multiclass", "positive": None}
    if not calibrated:
        t = d.get("temperature")
        d["calibration"] = {"method": "temperature", "temperature": 1.0 if t is None else t}
    return d


def fold_ensemble(d: Any) -> bool:
    """Is this ``config.json`` table a fold ensemble's? Its ``model_type`` is ``ensemble`` and
    it lists ``members`` folders; a bundle of the ensemble *model* (``--model ensemble``,
    ``learn/ensemble.py``) has the same ``model_type`` and a ``state`` instead."""
    return isinstance(d, Mapping) and d.get("model_type") == "ensemble" and "members" in d


def parse_config(d: Any, source: str) -> BundleConfig | EnsembleConfig:
    """``config.json``'s table as the shape its ``model_type`` names."""
    cls = EnsembleConfig if fold_ensemble(d) else BundleConfig
    return cls.from_dict(d, source)
