"""The recipe of a stage-two run as one typed value: ``--config FILE``, flags and ``config.json``.

``RunConfig`` holds what ``fit-head`` needs besides the data and the cache: the model kind, the
split (sizes, seed, or ``none``: every row trains), the metadata encoding, the calibration, and
the full ``HeadConfig`` and ``LGBMConfig``. A run's bundle stores it under ``"run"``, so
``--config runs/NAME/config.json`` reproduces that run; a hand-written file (JSON, or TOML with
the same keys, optionally under a ``[run]`` table, with ``[head]`` and ``[lgbm]`` sub-tables)
sets any subset. Unknown keys are an error that names the known ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..data.spec import read_settings
from .baseline import LGBMConfig
from .head import HeadConfig

SPLITS = ("lesion", "image", "none")


class ConfigError(ValueError):
    """A config file or value that cannot be used."""


@dataclass
class RunConfig:
    model: str = "head"                   # head | lgbm
    split: str = "lesion"                 # lesion (grouped) | image (reference) | none
    seed: int = 42
    select_on: str = "val"                # val | test (the reference's flaw)
    test_size: float = 0.2
    val_size: float = 0.1                 # of all rows; with split none, of the rows
    encoding: str = "robust"              # robust | reference
    calibration: str = "logit_adjust"
    tta: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        d = dict(d)
        head = d.pop("head", {}) or {}
        if d.get("encoding") == "reference" and isinstance(head, dict):  # its head defaults
            head = {**HeadConfig.reference().to_dict(), **head}
        head = _typed(HeadConfig, head, f"{source}: [head]")
        lgbm = _typed(LGBMConfig, d.pop("lgbm", {}) or {}, f"{source}: [lgbm]")
        return _typed(cls, {**d, "head": head, "lgbm": lgbm}, source)

    def check(self) -> None:
        if self.model not in ("head", "lgbm"):
            raise ConfigError(f"model must be head or lgbm, got {self.model!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.split == "none" and self.select_on == "test":
            raise ConfigError("--split none has no test part to select on")
        if not (0 < self.test_size < 1 and 0 < self.val_size < 1
                and self.test_size + self.val_size < 1):
            raise ConfigError("test_size and val_size must be in (0, 1), together below 1")
        self.head.check()


def _typed(cls, d: dict, source: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table of keys, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(names)}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def read_config_file(path: str | Path) -> RunConfig:
    """A ``RunConfig`` from JSON or TOML: a run's ``config.json`` (its ``"run"`` entry), a file
    written by ``skinfeat tune``, or a hand-written one (keys as ``RunConfig``'s)."""
    path = Path(path)
    try:
        d = read_settings(path)
    except (OSError, ValueError) as exc:   # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"{path}: unreadable config ({exc})") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected an object of settings")
    if "run" in d:
        d = d["run"]
    return RunConfig.from_dict(d, str(path))


def merge(base: RunConfig, run: dict, head: dict, lgbm: dict) -> RunConfig:
    """``base`` with the given (not None) values replaced: command-line flags over a file."""
    from dataclasses import replace

    given = {k: v for k, v in run.items() if v is not None}
    cfg = replace(base, **given)
    cfg.head = replace(cfg.head, **{k: v for k, v in head.items() if v is not None},
                       seed=cfg.seed)
    cfg.lgbm = replace(cfg.lgbm, **{k: v for k, v in lgbm.items() if v is not None},
                       seed=cfg.seed)
    cfg.check()
    return cfg
