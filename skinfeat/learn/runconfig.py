"""The recipe of a stage-two run as one typed value: ``--config FILE``, flags and ``config.json``.

``RunConfig`` holds what ``fit-head`` needs besides the data and the cache: the model kind, the
split (sizes, seed, or ``none``: every row trains), the metadata encoding, the calibration, and
the model's own config (``params``: a ``HeadConfig``, ``LGBMConfig``, ``LinearConfig`` or a
registered model's). A run's bundle stores it under ``"run"``, so ``--config
runs/NAME/config.json`` reproduces that run; a hand-written file (JSON, or TOML with the same
keys, optionally under a ``[run]`` table, with the model's table: ``model = "linear"`` and
``[linear]``) sets any subset. Every key is typed and checked by ``skinfeat.schema``: an unknown
key, a wrong
type or an out-of-range value is one error naming the file and the key (``head.lr``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from ..data.metadata import ENCODINGS
from ..data.splits import ALIASES, parse_split
from ..schema import Gt, Lt, SchemaError, dump, parse, read_settings, validate
from .calibration import METHODS
from .models import DEFAULT_MODEL, REFERENCE_MODEL, model_class, registry
from .protocol import with_fields

SPLITS = ("group", "lesion", "image", "none")   # + by:COLUMN=VALUE; lesion: the older group


class ConfigError(SchemaError):
    """A config file or value that cannot be used."""


@dataclass(frozen=True)
class RunConfig:
    model: str = DEFAULT_MODEL   # a kind of the model registry (learn.models)
    split: str = "group"   # group (by group_id) | image (reference) | none | by:COLUMN=VALUE
    seed: int = 42
    select_on: Literal["val", "test"] = "val"   # test: the reference's flaw
    test_size: Annotated[float, Gt(0), Lt(1)] = 0.2
    val_size: Annotated[float, Gt(0), Lt(1)] = 0.1   # of all rows; with split none, of the rows
    encoding: Literal[ENCODINGS] = "robust"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    calibration: Literal[METHODS] = "logit_adjust"  # type: ignore[valid-type]  # Literal[TUPLE]: see schema.py
    tta: bool = False
    group_context: bool = False   # append patient context features (learn/context.py)
    # A fused head carries an image-only model for rows with every metadata field missing
    # (learn/fallback.py); the reference recipe never does.
    fallback: bool = True
    # The model's own config (its class's ``config_class``; None: its defaults). In a file or
    # config.json it is the table named after the model: ``model = "linear"`` + ``[linear]``.
    params: Any = None

    def __post_init__(self) -> None:
        split = ALIASES.get(self.split, self.split)   # a config written before the rename
        with contextlib.suppress(ValueError):   # check() names the key
            split = str(parse_split(split))
        object.__setattr__(self, "split", split)
        models = registry()
        if self.params is None and isinstance(self.model, str) and self.model in models:
            object.__setattr__(self, "params", model_class(self.model).config_class())
        elif self.model == DEFAULT_MODEL and type(self.params) is not \
                models[DEFAULT_MODEL].config_class:
            # RunConfig(params=HeadConfig(...)) without a model: the model that config is of
            # (the head, as before the ensemble became the default)
            kinds = [k for k, c in models.items() if type(self.params) is c.config_class]
            if len(kinds) == 1:
                object.__setattr__(self, "model", kinds[0])

    def to_dict(self) -> dict:
        d = dump(self)
        params = d.pop("params")
        return {**d, self.model: params}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config", at: str = "") -> RunConfig:
        """A recipe from a table (under the key ``at`` in its file); every key typed and
        checked, errors naming ``source`` and the key. The model's config is the table named
        after it; a recipe written before one model config per recipe also held the tables
        of the other models (``head`` and ``lgbm``), which are left out."""
        if not isinstance(d, Mapping) or "params" in d:
            return parse(cls, d, source, ConfigError, at)   # the error names the key
        prefix, models = (at + "." if at else ""), registry()
        kind = d.get("model", _legacy_model(d))
        if not isinstance(kind, str) or kind not in models:
            raise ConfigError(f"expected one of {', '.join(models)}, got {kind!r}",
                              prefix + "model", source)
        config_class = models[kind].config_class
        own = d.get(kind, {})
        if d.get("encoding") == "reference" and isinstance(own, Mapping) \
                and hasattr(config_class, "reference"):   # the reference recipe's defaults
            own = {**config_class.reference().to_dict(), **own}
        params: Any = parse(config_class, own, source, ConfigError, prefix + kind)
        for other in models:   # the other models' tables are checked too (cv reads them)
            if other != kind and other in d:
                parse(models[other].config_class, d[other], source, ConfigError, prefix + other)
        rest = {k: v for k, v in d.items() if k not in models}
        return parse(cls, {**rest, "model": kind, "params": params}, source, ConfigError, at)

    def seeded(self) -> RunConfig:
        """This recipe with its model on the recipe's seed: ``seed`` is the one seed of a run
        (split, weights, dropout masks, boosting)."""
        return replace(self, params=with_fields(self.params, seed=self.seed))

    def check(self) -> RunConfig:
        """Types, choices and ranges of every field (the model config's too), then the values
        that must agree; returns the recipe (the split in its current spelling)."""
        validate(self, error=ConfigError)
        models = registry()
        if self.model not in models:
            raise ConfigError(f"expected one of {', '.join(models)}, got {self.model!r}",
                              "model")
        config_class = models[self.model].config_class
        if not isinstance(self.params, config_class):
            raise ConfigError(f"expected a {config_class.__name__} for model {self.model}, got "
                              f"{type(self.params).__name__}", "params")
        _check_params(self.params, self.model)
        try:
            split = parse_split(self.split)   # "lesion": the older spelling of "group"
        except ValueError as exc:
            raise ConfigError(str(exc), "split") from None
        if split.by and split.value is None:
            raise ConfigError(f"--split {split}: fit-head holds one value out: "
                              f"by:{split.column}=VALUE (by:COLUMN is cv's)", "split")
        if str(split) == "none" and self.select_on == "test":
            raise ConfigError("split none has no test part to select on", "select_on")
        if self.test_size + self.val_size >= 1:
            raise ConfigError(f"test_size + val_size must be below 1, got {self.test_size:g} + "
                              f"{self.val_size:g}", "val_size")
        return replace(self, split=str(split)) if str(split) != self.split else self


def read_config_file(path: str | Path) -> RunConfig:
    """A ``RunConfig`` from JSON or TOML: a run's ``config.json`` (its ``"run"`` entry), a file
    written by ``skinfeat tune``, or a hand-written one (keys as ``RunConfig``'s)."""
    d, at = _recipe_table(path)
    return RunConfig.from_dict(d, str(path), at)


def read_model_tables(path: str | Path) -> dict:
    """Every model config a recipe file holds, by kind: its model's and, for a run of several
    models (cv, compare), the tables of the others (``[lgbm]`` beside ``model = "head"``)."""
    d, at = _recipe_table(path)
    prefix, models = (at + "." if at else ""), registry()
    out: dict[str, Any] = {
        kind: parse(models[kind].config_class, d[kind], str(path), ConfigError, prefix + kind)
        for kind in models if isinstance(d, Mapping) and kind in d}
    recipe = RunConfig.from_dict(d, str(path), at)
    return {**out, recipe.model: recipe.params}


def _recipe_table(path: str | Path) -> tuple:
    """The recipe's table in a file and the key it sits under."""
    path, at = Path(path), ""
    try:
        d = read_settings(path, ConfigError)
    except OSError as exc:
        raise ConfigError(f"unreadable config ({exc.strerror or exc})", source=str(path)) from exc
    if isinstance(d, Mapping) and "format" in d:   # a bundle's config.json: its recipe
        if not isinstance(d.get("run"), Mapping):
            raise ConfigError("this bundle's config.json holds no recipe (no 'run' entry); "
                              "pass the recipe as flags", source=str(path))
        d, at = d["run"], "run"
    elif isinstance(d, Mapping) and "run" in d:
        rest = [k for k in d if k != "run"]
        if rest:   # [head] beside [run] would be ignored: in TOML it is [run.head]
            raise ConfigError(f"key(s) {', '.join(rest)} outside the [run] table: move them "
                              "into it ([run.head], [run.linear], ...), or drop the table",
                              source=str(path))
        d, at = d["run"], "run"
    return d, at


def _legacy_model(d: Mapping) -> str:
    """The model of a recipe without a ``model`` key: the head where the recipe is the
    reference one or sets the head's table (every recipe before the ensemble became the
    default, in issue 29, meant the head), else the default model."""
    if d.get("encoding") == "reference" or REFERENCE_MODEL in d:
        return REFERENCE_MODEL
    return DEFAULT_MODEL


def merge(base: RunConfig, run: dict, *flags: dict) -> RunConfig:
    """``base`` with the given (not None) values replaced: command-line flags over a file.
    ``flags``: model settings; each sets the field of that name of the recipe's model config,
    where it has one (``--lr`` sets a head's, ``--lgbm-pca-dim`` LightGBM's)."""
    given = {k: v for k, v in run.items() if v is not None}
    cfg = replace(base, **given)
    config_class = model_class(cfg.model).config_class
    if not isinstance(cfg.params, config_class):   # --model changed the file's model
        cfg = replace(cfg, params=config_class())
    values = {k: v for f in flags for k, v in f.items()}
    for kind, cls in registry().items():   # a flag is checked by every model that has it
        _check_params(with_fields(cls.config_class(), **values), kind)
    cfg = replace(cfg, params=model_class(cfg.model).config_with(cfg.params, values))
    return cfg.seeded().check()


def _check_params(params, kind: str) -> None:
    """A model config's ``check()``, its errors naming the key under ``kind``."""
    try:
        params.check()
    except SchemaError as exc:
        raise ConfigError(exc.detail, f"{kind}.{exc.key}" if exc.key else kind) from None


def model_params(kinds, recipe: RunConfig, *flags: dict, tables: Mapping | None = None) -> dict:
    """Each of ``kinds``' config for a run of several models (cv, compare): the recipe's own
    for its model, else the file's table of it (``tables``: ``read_model_tables``), else the
    defaults; with the flags each has a field for and the recipe's seed."""
    values = {k: v for f in flags for k, v in f.items() if v is not None}
    tables = tables or {}
    out = {}
    for kind in kinds:
        base = recipe.params if kind == recipe.model else \
            tables.get(kind) or model_class(kind).config_class()
        out[kind] = model_class(kind).config_with(base, {**values, "seed": recipe.seed})
    return out


def recipe_of(config: str | Path | None, run: Mapping, *flags: dict) -> RunConfig:
    """``skinfeat.make_recipe``: defaults < the ``config`` file < ``run`` and the model
    ``flags``; with ``run["encoding"] == "reference"`` and no file, the model's reference
    defaults (its config class's ``reference()``) are the base."""
    base = read_config_file(config) if config else RunConfig()
    if not config and run.get("encoding") == "reference":
        kind = run.get("model") or REFERENCE_MODEL
        config_class = model_class(kind).config_class
        if hasattr(config_class, "reference"):
            base = replace(base, model=kind, params=config_class.reference())
    return merge(base, dict(run), *flags)


def model_configs_of(models, recipe: RunConfig, config: str | Path | None,
                     *flags: dict) -> dict:
    """``skinfeat.model_configs``: ``model_params`` with the ``config`` file's model tables."""
    return model_params(models, recipe, *flags,
                        tables=read_model_tables(config) if config else None)
