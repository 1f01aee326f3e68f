"""What the workflows return: typed, frozen results that the CLI and the Python API both read
(``skinfeat.api`` re-exports them). Each keeps its run folder (``out``); a result made with
``out=None`` by the API also holds the temporary folder alive (``_owner``), and removes it with
itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..learn.cv import CVRun
from .summary import RunSummary

if TYPE_CHECKING:
    from ..deploy.model import Model


def _model(where: str | Path, owner: object) -> Model:
    from ..deploy.model import Model

    model = Model(where)
    model._owner = owner   # the model's files live as long as the model
    return model


@dataclass(frozen=True)
class FitResult:
    """One split's fit (``skinfeat fit-head``): the scored part's metrics beside the
    majority-class baseline, the run's summary and its folder (bundle, report)."""
    metrics: dict                 # the scored part's metrics (see metrics.json)
    baseline: dict                # the majority-class baseline on the same rows
    info: RunSummary              # protocol, sizes, sources, calibration, ... (typed)
    out: Path                     # the run folder (temporary when ``out=None``)
    _owner: object = field(default=None, repr=False, compare=False)

    @cached_property
    def model(self) -> Model:
        """The trained model (the run folder's bundle), loaded on first use."""
        return _model(self.out, self._owner)

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


@dataclass(frozen=True, eq=False)   # tables inside: compare their fields, not the results
class CVResult:
    """A cross-validation run (``skinfeat cv``): ``run`` is ``learn.cv``'s result; the
    workflow adds the cache's provenance, the saved fold ensembles, a ``by:COLUMN`` split's
    sources and the out-of-fold subgroup tables."""
    run: CVRun
    info: dict                    # the cache's provenance and sources (backbone, weights)
    out: Path
    folds: pd.DataFrame = field(repr=False)   # image_id, group_id, dx and each seed's fold
    model_dirs: dict[str, str] = field(default_factory=dict)   # "MODEL_INPUTS" -> folder
    sources_split: dict | None = None   # by:COLUMN: which values each fold scored
    subgroups: dict = field(default_factory=dict, repr=False)   # model -> inputs -> tables
    _owner: object = field(default=None, repr=False, compare=False)

    @property
    def table(self) -> pd.DataFrame:
        """One row per model x inputs: mean and std of each headline metric."""
        keys = self.run.headline
        return pd.DataFrame([{"model": m, "inputs": i,
                              **{f"{k}_{s}": e[k][s] for k in keys for s in ("mean", "std")}}
                             for m, by_inputs in self.run.summary.items()
                             for i, e in by_inputs.items()])

    @property
    def fits(self) -> pd.DataFrame:
        """One row per fit: seed, fold, model, inputs, best epoch and the headline metrics."""
        return pd.DataFrame([{**{k: r[k] for k in ("seed", "fold", "model", "inputs",
                                                    "best_epoch")},
                              **{k: r["metrics"][k] for k in self.run.headline}}
                             for r in self.run.records])

    @property
    def oof(self) -> pd.DataFrame:
        """The out-of-fold predictions (oof_predictions.csv): one row per image x seed x model
        x inputs, p_CLASS columns, decision."""
        return self.run.oof

    @property
    def raw(self) -> dict:
        """Everything cv_metrics.json holds, with the folds, the out-of-fold predictions and
        the subgroup results as objects (what ``write_cv_report`` writes)."""
        return {**self.run.to_dict(), "info": self.info,
                **({"models": self.model_dirs} if self.model_dirs else {}),
                "sources_split": self.sources_split, "folds_table": self.folds,
                "oof": self.run.oof, "subgroups": self.subgroups}

    @property
    def report_path(self) -> Path:
        return self.out / "cv_report.md"

    @property
    def models(self) -> dict[str, Model]:
        """The fold ensembles (``save_models=True``), by "MODEL_INPUTS"."""
        return {name: _model(where, self._owner) for name, where in self.model_dirs.items()}


@dataclass(frozen=True, eq=False)
class CompareResult:
    """Caches and / or models on identical folds (``skinfeat compare``)."""
    table: pd.DataFrame           # one row per entry (cache x model [x inputs]): mean and std
                                  # over folds of each headline metric, the pooled out-of-fold
                                  # metric, and diff / diff_low / diff_high / p_value /
                                  # within_noise against the first entry
    metric: str                   # the metric the differences are in
    reference: str                # the first entry, which the others are paired against
    raw: dict                     # everything compare.json holds
    out: Path
    _owner: object = field(default=None, repr=False, compare=False)

    @property
    def report_path(self) -> Path:
        return self.out / "compare_report.md"

    def difference(self, entry: str) -> dict:
        """One entry's paired difference against the reference (diff, low, high, p, noise)."""
        row = self.table.set_index("entry").loc[entry]
        return {"diff": float(row["diff"]), "low": float(row["diff_low"]),
                "high": float(row["diff_high"]), "p_value": float(row["p_value"]),
                "within_noise": bool(row["within_noise"])}


@dataclass(frozen=True)
class TuneResult:
    """An Optuna search (``skinfeat tune``): the best trial, the chosen recipe's one score on
    the held-out part, and every trial; ``to_dict`` is tune_metrics.json."""
    metric: str
    best: dict                    # number, value (CV), params, head (the chosen HeadConfig)
    start: dict | None            # trial 0: the starting configuration
    held_out: dict                # n, groups, metrics of the chosen recipe on the held-out part
    history: list[dict] = field(repr=False)
    config: dict = field(repr=False)   # TuneConfig.to_dict()
    sizes: dict = field(default_factory=dict)
    dataset: str = ""
    task: str = ""
    group: str = ""
    merged_groups: int | None = None   # groups joined by --merge-duplicate-groups (None: off)
    info: dict = field(default_factory=dict, repr=False)
    out: Path | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("metric", "best", "start", "held_out", "history",
                                               "config", "sizes", "dataset", "task", "group",
                                               "merged_groups", "info")}

    @property
    def best_config(self) -> Path | None:
        """``best_config.json``: the chosen recipe (``fit-head --config``)."""
        return None if self.out is None else self.out / "best_config.json"

    @property
    def report_path(self) -> Path | None:
        return None if self.out is None else self.out / "tune_report.md"


def run_folder(out: str | Path | None, prefix: str) -> tuple[Path, object]:
    """``out`` as a Path, or a temporary folder and its owner (a result holding the owner keeps
    the folder alive; it is removed with the result)."""
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix=f"skinfeat-{prefix}-") if out is None else None
    return Path(tmp.name if tmp else out), tmp   # type: ignore[arg-type]  # out is set
