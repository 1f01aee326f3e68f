"""Which subgroup fields a report shows, and numeric fields cut into bands.

By default every model metadata field plus the spec's descriptive columns
(``DatasetSpec.subgroups``: HAM10000's acquisition ``dataset`` and ``dx_type``, ...);
``--subgroups FIELD,...`` picks, ``--subgroups none`` turns the tables off. Age is cut in
15-year bands; any other number in quartiles fitted on the TRAINING rows, so the scored rows
never move their own band edges.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.spec import DatasetSpec
from ..errors import InputError
from .subgroup_plot import save_forest_plots
from .subgroups import MIN_GROUPS, SubgroupResult, subgroup_table

log = logging.getLogger(__name__)

AGE_BAND = 15.0


def is_age(name: str) -> bool:
    return name == "age" or name.startswith("age_")


def subgroup_columns(text: str | Sequence[str] | None, spec: DatasetSpec) -> tuple[str, ...]:
    """The fields of ``--subgroups``: None (or "") for the default, "none" for no tables, or a
    comma-separated list of the spec's metadata / subgroup columns."""
    known = tuple(dict.fromkeys((*spec.metadata, *spec.subgroups)))
    if text is None or (isinstance(text, str) and text.strip() == ""):
        return known
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [t for t in names if t]
    if names == ["none"]:
        return ()
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise InputError(f"--subgroups: unknown field(s) {', '.join(unknown) or '(none given)'} "
                         f"for {spec.name}; expected none or from: "
                         f"{', '.join(known) or '(no fields)'}")
    return tuple(dict.fromkeys(names))


def fit_bands(train: pd.DataFrame, numeric: Sequence[str]) -> dict[str, list[float]]:
    """Band edges per numeric field: 15-year steps for age, training-row quartiles otherwise
    (edges between bands; a field without training values has none: all "missing")."""
    bands = {}
    for name in numeric:
        values = pd.to_numeric(train[name], errors="coerce").to_numpy(np.float64) \
            if name in train else np.array([])
        values = values[np.isfinite(values)]
        if is_age(name):
            top = max(120.0, float(values.max()) if len(values) else 0.0)
            bands[name] = list(np.arange(AGE_BAND, top + AGE_BAND, AGE_BAND))
        else:
            bands[name] = sorted(set(np.quantile(values, [0.25, 0.5, 0.75]).tolist())) \
                if len(values) else []
    return bands


def _labels(name: str, edges: list[float]) -> list[str]:
    if is_age(name):
        lows = [0.0, *edges]
        return ([f"{lo:g}-{hi - 1:g}" for lo, hi in zip(lows, edges, strict=False)]
                + [f">= {edges[-1]:g}"])
    if not edges:
        return []
    return ([f"< {edges[0]:.3g}"]
            + [f"{lo:.3g} to {hi:.3g}" for lo, hi in zip(edges, edges[1:], strict=False)]
            + [f">= {edges[-1]:.3g}"])


def band(frame: pd.DataFrame, bands: dict[str, list[float]]) -> pd.DataFrame:
    """``frame`` with each banded field replaced by its band (an ordered categorical; NaN stays
    missing). Bands are closed below: age 15 is in 15-29."""
    out = frame.copy()
    for name, edges in bands.items():
        if name not in out:
            continue
        values = pd.to_numeric(out[name], errors="coerce").to_numpy(np.float64)
        labels = _labels(name, edges)
        codes = np.searchsorted(np.asarray(edges), values, side="right")
        cat = pd.Categorical.from_codes(np.where(np.isfinite(values), codes, -1) if labels
                                        else np.full(len(values), -1), labels, ordered=True)
        out[name] = pd.Series(cat, index=out.index)
    return out


def subgroup_frame(scored: pd.DataFrame, train: pd.DataFrame, fields: Sequence[str],
                   numeric: Sequence[str]) -> pd.DataFrame:
    """The subgroup columns of the scored rows, numeric ones banded on ``train``; a field the
    scored set lacks is all "missing" (an external set without metadata)."""
    absent = [f for f in fields if f not in scored]
    if absent:
        log.info("subgroups: the scored rows have no %s; shown as missing", ", ".join(absent))
    frame = pd.DataFrame({f: scored[f] if f in scored else pd.Series(None, index=scored.index,
                                                                       dtype=object)
                          for f in fields}, index=scored.index)
    return band(frame, fit_bands(train, [f for f in fields if f in numeric]))


def analyse_subgroups(scored: pd.DataFrame, train: pd.DataFrame, y_true: np.ndarray,
                      proba: np.ndarray, y_pred: np.ndarray, spec: DatasetSpec,
                      classes: Sequence[str], fields: str | Sequence[str] | None = None,
                      out: str | Path | None = None, *, min_groups: int = MIN_GROUPS,
                      n_boot: int = 1000, seed: int = 0) -> SubgroupResult | None:
    """The one call a report makes: the fields of ``--subgroups`` (``fields``), banded on the
    training rows, scored on ``scored`` (validated-table rows aligned with ``y_true``, grouped
    by ``group_id``); forest plots written to ``out`` when given. None for ``none``."""
    names = subgroup_columns(fields, spec)
    if fields is None or (isinstance(fields, str) and not fields.strip()):
        # The default: a descriptive column (HAM10000's dataset, dx_type) only where the data
        # has it (the Kaggle layout has neither); a model field is always shown.
        lacking = [n for n in names if n not in spec.metadata and n not in scored]
        if lacking:
            log.info("subgroups: the data has no %s column; no table for it",
                     ", ".join(lacking))
        names = tuple(n for n in names if n not in lacking)
    if not names:
        return None
    frame = subgroup_frame(scored, train, names, spec.numeric)
    result = subgroup_table(y_true, proba, y_pred, scored["group_id"].to_numpy(), frame, classes,
                            min_groups=min_groups, n_boot=n_boot, seed=seed,
                            group_name=spec.group_name)
    if out is not None:
        save_forest_plots(result, out)
    return result
