"""MetadataEncoder: age + one-hot sex and localization, fitted on training rows only.

Two encodings:

``robust`` (the default) gives every field one representation of "missing", used identically for
a blank value, the data set's own missing token (HAM10000 writes ``unknown``), a value never seen
in training (with a warning), a column absent at predict time, and the field dropout of training
(``blank``): a numeric field is its standardized value (missing -> the training mean, i.e. 0)
plus a missing-indicator column; a categorical field is one-hot over the categories seen in
training, with no dropped category, and all-zero means missing. Values are normalised first
(stripped, lower-case, runs of spaces and underscores -> one space, a small alias table: ``m``
-> ``male``), so ``Male`` or ``M`` are not "unseen". In HAM10000 ``unknown`` predicts the label
(``localization=unknown`` is 196 nv and no akiec, df or vasc), so treating it as a category
teaches the head "unknown means nv", and external data without metadata is then scored as nv.

``reference`` reproduces the published recipe exactly (17 features on HAM10000): age with missing
values filled by the mean and then standardized, and one-hot sex and localization with the first
category (in sorted order, as ``pandas.get_dummies(drop_first=True)``) dropped and ``unknown`` a
category like any other (a blank or absent value is ``unknown``). The reference fitted all of this
on the whole data set; here ``fit`` sees training rows only and the fitted state travels inside
the saved model.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

log = logging.getLogger(__name__)

ENCODINGS = ("robust", "reference")
# Spellings of "no value" in metadata files; a field may have its own list (``missing_tokens``).
MISSING_TOKENS: tuple[str, ...] = ("unknown", "unk", "nan", "none", "null", "n/a", "na", "?")
# Obvious aliases only; a data set's own vocabulary (another site list) belongs to its DatasetSpec.
ALIASES: dict[str, dict[str, str]] = {"sex": {"m": "male", "f": "female", "man": "male",
                                              "woman": "female"}}
REFERENCE_MISSING = "unknown"  # the reference encodes a missing category as HAM10000's spelling


def normalize(value: object) -> str:
    """``"  Lower_Extremity "`` -> ``"lower extremity"``; None / NaN -> ``""``."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return re.sub(r"[\s_]+", " ", str(value)).strip().lower()


# The keys of a fitted encoder's state (``to_dict``), all that ``from_dict`` accepts.
STATE_KEYS = ("encoding", "numeric", "categorical", "drop_first", "means", "stds", "categories",
              "missing_tokens", "aliases")


class MetadataEncoder:
    """Encode numeric (``age``) and categorical (``sex``, ``localization``) columns to float32."""

    def __init__(self, numeric: Sequence[str] = ("age",),
                 categorical: Sequence[str] = ("sex", "localization"),
                 encoding: str = "robust", *,
                 missing_tokens: Mapping[str, Sequence[str]] | None = None,
                 aliases: Mapping[str, Mapping[str, str]] | None = None,
                 drop_first: bool | None = None):
        if encoding not in ENCODINGS:
            raise InputError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.encoding = encoding
        # drop_first is the reference's get_dummies(drop_first=True); robust keeps every category.
        self.drop_first = (encoding == "reference") if drop_first is None else bool(drop_first)
        tokens = dict(missing_tokens or {})
        self.missing_tokens = {c: sorted({normalize(t) for t in tokens.get(c, MISSING_TOKENS)})
                               for c in self.numeric + self.categorical}
        given = ALIASES if aliases is None else aliases
        self.aliases = {c: {normalize(k): normalize(v) for k, v in given.get(c, {}).items()}
                        for c in self.categorical if given.get(c)}
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}

    @property
    def robust(self) -> bool:
        return self.encoding == "robust"

    @property
    def fitted(self) -> bool:
        """Every field has its training values; an encoder of no fields (an image-only data
        set) is fitted by definition and encodes every row to zero features."""
        return all(c in self.means for c in self.numeric) and \
            all(c in self.categories for c in self.categorical)

    # ------------------------------------------------------------------ reading values
    def _numeric(self, df: pd.DataFrame, col: str) -> pd.Series:
        """Floats, NaN where missing (absent column, blank, a token, not a number, inf)."""
        if col not in df:
            return pd.Series(np.nan, index=df.index, dtype=float)
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        return values.where(np.isfinite(values))

    def _categories(self, df: pd.DataFrame, col: str) -> pd.Series:
        """Normalised strings, None where missing (robust) or ``unknown`` (reference)."""
        if self.robust:
            if col not in df:
                return pd.Series([None] * len(df), index=df.index, dtype=object)
            alias = self.aliases.get(col, {})
            missing = set(self.missing_tokens[col]) | {""}
            # Each distinct value is normalised once (a table has few; a CV encodes it often).
            codes, uniques = pd.factorize(df[col], use_na_sentinel=True)
            names = [normalize(v) for v in uniques.tolist()]
            lookup = np.array([None if v in missing else alias.get(v, v) for v in names]
                              + [None], dtype=object)   # code -1 (NaN, None) -> None
            return pd.Series(lookup[codes], index=df.index, dtype=object)
        # Reference: values as given (the dataset reader has already lower-cased them), a blank
        # or absent value is the reference's "unknown" category.
        if col not in df:
            return pd.Series(REFERENCE_MISSING, index=df.index, dtype=object)
        values = df[col].astype(object)
        return values.where(values.notna(), REFERENCE_MISSING).map(str)

    # ------------------------------------------------------------------ fitting
    def fit(self, df: pd.DataFrame) -> MetadataEncoder:
        """Learn means, scales and category lists from ``df`` (training rows only)."""
        if len(df) == 0:
            raise InputError("cannot fit the metadata encoder on zero rows")
        for col in self.numeric:
            values = self._numeric(df, col)
            mean = float(values.mean()) if values.notna().any() else 0.0
            # Reference: StandardScaler after fillna(mean), the population std of the filled
            # column. Robust: the std of the observed values (filling would shrink it).
            filled = values.fillna(mean).to_numpy() if not self.robust else \
                values.dropna().to_numpy()
            std = float(filled.std()) if len(filled) else 0.0
            # A constant column keeps scale 1 instead of dividing by zero, and so does a nearly
            # constant one, whose rounding-error std would blow values up to inf.
            constant = std <= 1e-6 * max(1.0, abs(mean))
            self.means[col], self.stds[col] = mean, 1.0 if constant else std
        for col in self.categorical:
            self.categories[col] = sorted(self._categories(df, col).dropna().unique().tolist())
        return self

    def kept_categories(self, col: str) -> list[str]:
        cats = self.categories[col]
        return cats[1:] if self.drop_first else cats

    @property
    def feature_names(self) -> list[str]:
        names = []
        for col in self.numeric:
            names += [col, f"{col}_missing"] if self.robust else [col]
        for col in self.categorical:
            names += [f"{col}_{c}" for c in self.kept_categories(col)]
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def fields(self) -> list[tuple[str, int, int]]:
        """``(name, lo, hi)``: the columns ``lo:hi`` of the encoded matrix that hold each field."""
        out, start = [], 0
        for col in self.numeric:
            width = 2 if self.robust else 1
            out.append((col, start, start + width))
            start += width
        for col in self.categorical:
            width = len(self.kept_categories(col))
            out.append((col, start, start + width))
            start += width
        return out

    # ------------------------------------------------------------------ encoding
    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode rows; a column absent from ``df`` is missing on every row."""
        if not self.fitted:
            raise RuntimeError("MetadataEncoder.transform called before fit")
        blocks = []
        for col in self.numeric:
            values = self._numeric(df, col)
            z = ((values.fillna(self.means[col]) - self.means[col]) / self.stds[col]).to_numpy()
            blocks.append(z[:, None])
            if self.robust:
                blocks.append(values.isna().to_numpy(np.float64)[:, None])
        for col in self.categorical:
            values = self._categories(df, col)
            unseen = sorted({v for v in values if v is not None} - set(self.categories[col]))
            if unseen:
                log.warning("metadata: %s value(s) %s never seen in training; encoded as %s",
                            col, ", ".join(map(repr, unseen[:5])),
                            "missing" if self.robust else "all-zero")
            kept = self.kept_categories(col)
            onehot = np.zeros((len(df), len(kept)), dtype=np.float32)
            lookup = {c: j for j, c in enumerate(kept)}
            for i, v in enumerate(values):
                j = lookup.get(v) if v is not None else None
                if j is not None:
                    onehot[i, j] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else \
            np.zeros((len(df), 0), dtype=np.float32)

    def missing_mask(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per field, the rows ``transform`` encodes as missing: absent column, blank, a missing
        token, not a finite number, and (robust) a category never seen in training. In the
        reference encoding ``unknown`` is the missing category and an unseen one is all-zero."""
        out = {col: self._numeric(df, col).isna().to_numpy() for col in self.numeric}
        for col in self.categorical:
            values = self._categories(df, col)
            out[col] = (values.isna() | ~values.isin(self.categories.get(col, []))).to_numpy() \
                if self.robust else (values == REFERENCE_MISSING).to_numpy()
        return out

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    def missing_row(self) -> np.ndarray:
        """The encoded vector (1-D float32) of a row whose every field is missing."""
        return self.transform(pd.DataFrame(index=range(1)))[0]

    def field_index(self, field: int | str) -> int:
        names = [name for name, _, _ in self.fields]
        if isinstance(field, str):
            if field not in names:
                raise InputError(f"no metadata field {field!r}; fields are {names}")
            return names.index(field)
        return int(field)

    def blank(self, meta: np.ndarray, field: int | str | None = None) -> np.ndarray:
        """A copy of encoded ``meta`` with one field (by index or name), or all, set to missing."""
        out = np.array(meta, dtype=np.float32, copy=True)
        missing = self.missing_row()
        chosen = self.fields if field is None else [self.fields[self.field_index(field)]]
        for _, lo, hi in chosen:
            out[..., lo:hi] = missing[lo:hi]
        return out

    def dropout_fields(self) -> list[tuple[int, int, list[float]]]:
        """``(lo, hi, missing values)`` per field: what ``head_batch.fit_head`` blanks in
        training."""
        missing = self.missing_row()
        return [(lo, hi, missing[lo:hi].tolist()) for _, lo, hi in self.fields]

    def describe(self) -> str:
        """One line for reports: which encoding, how many features, what "missing" becomes."""
        if not (self.numeric or self.categorical):
            return ("none: the data set has no metadata fields, so the model sees the image "
                    "alone (a fused model is an image-only model)")
        if self.robust:
            return (f"robust: {self.n_features} features; numeric standardized with a missing "
                    "indicator (missing -> training mean), categorical one-hot over training "
                    "categories with no dropped category, all-zero = missing (blank, dataset "
                    "missing token, unseen value or absent column)")
        return (f"reference: {self.n_features} features, the published recipe; age filled "
                "with the training mean and standardized, one-hot with the first category "
                "dropped, 'unknown' a category like any other")

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:   # keys: STATE_KEYS
        return {"encoding": self.encoding, "numeric": self.numeric,
                "categorical": self.categorical, "drop_first": self.drop_first,
                "means": self.means, "stds": self.stds, "categories": self.categories,
                "missing_tokens": self.missing_tokens, "aliases": self.aliases}

    @classmethod
    def from_dict(cls, state: dict, key: str = "encoder") -> MetadataEncoder:
        """Rebuild a fitted encoder, checking every value (a bundle's config.json may have been
        edited: a zero std would encode every age as NaN); a bundle saved before encodings
        existed is ``reference``. Errors name the key under ``key``."""
        def bad(where: str, why: str, value: object) -> InputError:
            text = repr(value)
            return InputError(f"key '{key}{where}': invalid metadata encoder state: {why}, got "
                              f"{text if len(text) <= 40 else text[:37] + '...'}")

        def names(where: str) -> list[str]:
            value = state.get(where)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) \
                    or len(set(value)) != len(value):
                raise bad(f".{where}", "expected a list of distinct field names", value)
            return value

        def number(where: str, value: object, positive: bool = False) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or (positive and value <= 0):
                raise bad(where, "expected a finite number" + (" > 0" if positive else ""),
                          value)
            return float(value)

        def table(where: str, value: object, fields: list[str]) -> dict:
            """A table with exactly one entry per field (``no fitted values`` otherwise)."""
            if not isinstance(value, dict):
                raise bad(where, "expected a table of fields", value)
            missing = [c for c in fields if c not in value]
            if missing:
                raise bad(where, f"no fitted values for {missing}", sorted(value))
            extra = sorted(str(c) for c in value if c not in fields)
            if extra:
                raise bad(f"{where}.{extra[0]}", f"not a field of the encoder ({fields})", extra)
            return value

        if not isinstance(state, dict):
            raise bad("", "expected a table", state)
        unknown = sorted(str(k) for k in state if k not in STATE_KEYS)
        if unknown:   # strict, as every typed schema: a misspelt key is an error, not a default
            raise bad(f".{unknown[0]}", f"unknown key (expected {', '.join(STATE_KEYS)})",
                      unknown)
        encoding = state.get("encoding", "reference")
        if encoding not in ENCODINGS:
            raise bad(".encoding", f"expected one of {ENCODINGS}", encoding)
        numeric, categorical = names("numeric"), names("categorical")
        both = sorted(set(numeric) & set(categorical))
        if both:
            raise bad(".categorical", "a field cannot be both numeric and categorical", both)
        if not isinstance(state.get("drop_first"), bool):
            raise bad(".drop_first", "expected true or false", state.get("drop_first"))
        tokens, aliases = state.get("missing_tokens"), state.get("aliases")
        if tokens is not None and not (isinstance(tokens, dict) and all(
                isinstance(v, list) and all(isinstance(t, str) for t in v)
                for v in tokens.values())):
            raise bad(".missing_tokens", "expected a table of fields to lists of strings", tokens)
        if aliases is not None and not (isinstance(aliases, dict) and all(
                isinstance(v, dict) and all(isinstance(t, str) for t in v.values())
                for v in aliases.values())):
            raise bad(".aliases", "expected a table of fields to tables of strings", aliases)
        enc = cls(numeric, categorical, encoding, missing_tokens=tokens, aliases=aliases,
                  drop_first=state["drop_first"])
        means = table(".means", state.get("means"), numeric)
        stds = table(".stds", state.get("stds"), numeric)
        enc.means = {c: number(f".means.{c}", means[c]) for c in numeric}
        enc.stds = {c: number(f".stds.{c}", stds[c], positive=True) for c in numeric}
        categories = table(".categories", state.get("categories"), categorical)
        for c in categorical:
            cats = categories[c]
            if not isinstance(cats, list) or not all(isinstance(v, str) for v in cats) \
                    or len(set(cats)) != len(cats):
                raise bad(f".categories.{c}", "expected a list of distinct strings", cats)
            # The robust encoder compares normalised values: a category that is not normalised
            # (or is a missing token) could never match, and the field would always be missing.
            odd = [v for v in cats if enc.robust and (normalize(v) != v or not v
                                                      or v in enc.missing_tokens[c])]
            if odd:
                raise bad(f".categories.{c}", "a category the robust encoding can never match "
                          "(not normalised, blank or a missing token)", odd[0])
            enc.categories[c] = list(cats)
        return enc
