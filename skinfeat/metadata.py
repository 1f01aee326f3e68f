"""MetadataEncoder: age + one-hot sex and localization, fitted on training rows only.

The default reproduces the reference recipe exactly (17 features on HAM10000): age with missing
values filled by the mean and then standardized, and one-hot sex and localization with the first
category (in sorted order, as ``pandas.get_dummies(drop_first=True)``) dropped. The reference
fitted all of this on the whole data set; here ``fit`` sees training rows only and the fitted
state travels inside the saved model.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _category(df: pd.DataFrame, col: str) -> pd.Series:
    """A categorical column with missing values (None, NaN, absent column) as ``unknown``,
    the reference recipe's own category for them."""
    if col not in df:
        return pd.Series("unknown", index=df.index, dtype=object)
    return df[col].astype(object).where(df[col].notna(), "unknown")


class MetadataEncoder:
    """Encode ``age``, ``sex``, ``localization`` columns into a float32 matrix."""

    def __init__(self, numeric: Sequence[str] = ("age",),
                 categorical: Sequence[str] = ("sex", "localization"), drop_first: bool = True):
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.drop_first = drop_first
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.means or self.categories)

    def fit(self, df: pd.DataFrame) -> "MetadataEncoder":
        """Learn means, scales and category lists from ``df`` (training rows only)."""
        if len(df) == 0:
            raise ValueError("cannot fit the metadata encoder on zero rows")
        for col in self.numeric:
            values = pd.to_numeric(df[col], errors="coerce").astype(float)
            mean = float(values.mean()) if values.notna().any() else 0.0
            filled = values.fillna(mean).to_numpy()
            # Like sklearn's StandardScaler after the reference's fillna(mean): population std of
            # the filled column; a constant column keeps scale 1 instead of dividing by zero, and
            # so does a nearly constant one, whose rounding-error std would blow values up to inf.
            std = float(filled.std())
            constant = std <= 1e-6 * max(1.0, abs(mean))
            self.means[col], self.stds[col] = mean, 1.0 if constant else std
        for col in self.categorical:
            self.categories[col] = sorted(_category(df, col).astype(str).unique().tolist())
        return self

    def kept_categories(self, col: str) -> list[str]:
        cats = self.categories[col]
        return cats[1:] if self.drop_first else cats

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col in self.categorical:
            names += [f"{col}_{c}" for c in self.kept_categories(col)]
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode rows; a category never seen in training encodes as all-zero, with a warning."""
        if not self.fitted:
            raise RuntimeError("MetadataEncoder.transform called before fit")
        blocks = []
        for col in self.numeric:
            values = pd.to_numeric(df[col], errors="coerce").astype(float)
            blocks.append(((values.fillna(self.means[col]) - self.means[col]) / self.stds[col])
                          .to_numpy()[:, None])
        for col in self.categorical:
            values = _category(df, col)
            unseen = sorted({str(v) for v in values if v is not None} - set(self.categories[col]))
            if unseen:
                log.warning("metadata: %s value(s) %s never seen in training; encoded as all-zero",
                            col, ", ".join(map(repr, unseen[:5])))
            kept = self.kept_categories(col)
            onehot = np.zeros((len(df), len(kept)), dtype=np.float32)
            lookup = {c: j for j, c in enumerate(kept)}
            for i, v in enumerate(values):
                j = lookup.get(str(v)) if v is not None else None
                if j is not None:
                    onehot[i, j] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else \
            np.zeros((len(df), 0), dtype=np.float32)

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    def to_dict(self) -> dict:
        return {"numeric": self.numeric, "categorical": self.categorical,
                "drop_first": self.drop_first, "means": self.means, "stds": self.stds,
                "categories": self.categories}

    @classmethod
    def from_dict(cls, state: dict) -> "MetadataEncoder":
        try:
            enc = cls(state["numeric"], state["categorical"], bool(state["drop_first"]))
            enc.means = {k: float(v) for k, v in state["means"].items()}
            enc.stds = {k: float(v) for k, v in state["stds"].items()}
            enc.categories = {k: [str(c) for c in v] for k, v in state["categories"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"invalid metadata encoder state: {exc!r}") from exc
        missing = [c for c in enc.numeric if c not in enc.means] + \
                  [c for c in enc.categorical if c not in enc.categories]
        if missing:
            raise ValueError(f"invalid metadata encoder state: no fitted values for {missing}")
        return enc
