"""The recipe of a stage-two run as one typed value: ``--config FILE``, flags and ``config.json``.

``RunConfig`` holds what ``fit-head`` needs besides the data and the cache: the model kind, the
split (sizes, seed, or ``none``: every row trains), the metadata encoding, the calibration, and
the full ``HeadConfig`` and ``LGBMConfig``. A run's bundle stores it under ``"run"``, so
``--config runs/NAME/config.json`` reproduces that run; a hand-written file (JSON, or TOML with
the same keys, optionally under a ``[run]`` table, with ``[head]`` and ``[lgbm]`` sub-tables)
sets any subset. Every key is typed and checked by ``skinfeat.schema``: an unknown key, a wrong
type or an out-of-range value is one error naming the file and the key (``head.lr``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal, Mapping

from ..data.metadata import ENCODINGS
from ..data.splits import ALIASES
from ..schema import Gt, Lt, SchemaError, dump, parse, read_settings, validate
from .baseline import LGBMConfig
from .calibration import METHODS
from .head import HeadConfig

SPLITS = ("group", "lesion", "image", "none")   # + by:COLUMN=VALUE; lesion: the older group


class ConfigError(SchemaError):
    """A config file or value that cannot be used."""


@dataclass
class RunConfig:
    model: Literal["head", "lgbm", "linear"] = "head"
    split: str = "group"   # group (by group_id) | image (reference) | none | by:COLUMN=VALUE
    seed: int = 42
    select_on: Literal["val", "test"] = "val"   # test: the reference's flaw
    test_size: Annotated[float, Gt(0), Lt(1)] = 0.2
    val_size: Annotated[float, Gt(0), Lt(1)] = 0.1   # of all rows; with split none, of the rows
    encoding: Literal[ENCODINGS] = "robust"
    calibration: Literal[METHODS] = "logit_adjust"
    tta: bool = False
    group_context: bool = False   # append patient context features (learn/context.py)
    # A fused head carries an image-only model for rows with every metadata field missing
    # (learn/fallback.py); the reference recipe never does.
    fallback: bool = True
    head: HeadConfig = field(default_factory=HeadConfig)
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)

    def __post_init__(self) -> None:
        self.split = ALIASES.get(self.split, self.split)   # a config written before the rename

    def to_dict(self) -> dict:
        return dump(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config", at: str = "") -> "RunConfig":
        """A recipe from a table (under the key ``at`` in its file); every key typed and
        checked, errors naming ``source`` and the key."""
        if isinstance(d, Mapping) and d.get("encoding") == "reference" \
                and isinstance(d.get("head", {}), Mapping):   # the reference head's defaults
            d = {**d, "head": {**HeadConfig.reference().to_dict(), **d.get("head", {})}}
        return parse(cls, d, source, ConfigError, at)

    def seeded(self) -> "RunConfig":
        """This recipe with its head and LightGBM on the recipe's seed: ``seed`` is the one
        seed of a run (split, weights, dropout masks, boosting)."""
        return replace(self, head=replace(self.head, seed=self.seed),
                       lgbm=replace(self.lgbm, seed=self.seed))

    def check(self) -> None:
        """Types, choices and ranges of every field (the head's and LightGBM's too), then the
        values that must agree."""
        validate(self, error=ConfigError)
        from ..data.splits import parse_split
        try:
            split = parse_split(self.split)   # "lesion": the older spelling of "group"
        except ValueError as exc:
            raise ConfigError(str(exc), "split") from None
        self.split = str(split)
        if split.by and split.value is None:
            raise ConfigError(f"--split {split}: fit-head holds one value out: "
                              f"by:{split.column}=VALUE (by:COLUMN is cv's)", "split")
        if self.split == "none" and self.select_on == "test":
            raise ConfigError("split none has no test part to select on", "select_on")
        if self.test_size + self.val_size >= 1:
            raise ConfigError(f"test_size + val_size must be below 1, got {self.test_size:g} + "
                              f"{self.val_size:g}", "val_size")


def read_config_file(path: str | Path) -> RunConfig:
    """A ``RunConfig`` from JSON or TOML: a run's ``config.json`` (its ``"run"`` entry), a file
    written by ``skinfeat tune``, or a hand-written one (keys as ``RunConfig``'s)."""
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
                              "into it ([run.head], [run.lgbm]), or drop the table",
                              source=str(path))
        d, at = d["run"], "run"
    return RunConfig.from_dict(d, str(path), at)


def merge(base: RunConfig, run: dict, head: dict, lgbm: dict) -> RunConfig:
    """``base`` with the given (not None) values replaced: command-line flags over a file."""
    given = {k: v for k, v in run.items() if v is not None}
    cfg = replace(base, **given)
    cfg.head = replace(cfg.head, **{k: v for k, v in head.items() if v is not None})
    cfg.lgbm = replace(cfg.lgbm, **{k: v for k, v in lgbm.items() if v is not None})
    cfg = cfg.seeded()
    cfg.check()
    return cfg
