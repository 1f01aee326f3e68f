"""Tables, image files and values: the building blocks every reader shares.

``read_table`` reads any CSV or tab-separated table; ``index_images`` and ``resolve_images`` map
ids or paths to image files under a spec's folders; ``clean_metadata`` turns a table's metadata
columns into floats (NaN when missing) and lower-case strings (None when missing), by the spec's
missing tokens and plausible ranges; ``find_files`` looks for a table a few levels deep only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SkinfeatError
from .presets import PRESETS
from .spec import DatasetSpec

log = logging.getLogger(__name__)

HAM10000 = PRESETS["ham10000"]
DETECT_DEPTH = 2   # label tables are looked for in the folder and at most two levels below


class DataError(SkinfeatError, ValueError):
    """A dataset problem, with a one-line message that names the file and the problem."""


# ---------------------------------------------------------------- tables and images
def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or tab-separated table; tolerates a BOM, CRLF line ends and quoted fields.
    Column names are stripped and lower-cased; every value is a string."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(f"{path}: file is empty")
    sep = "\t" if first.count("\t") > first.count(",") else ","
    try:
        df = pd.read_csv(path, sep=sep, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse table ({str(exc).splitlines()[0]})") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def header_of(path: Path) -> set[str]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return set()
    sep = "\t" if first.count("\t") > first.count(",") else ","
    return {c.strip().strip('"').lower() for c in first.split(sep)}


def image_key(name: str, spec: DatasetSpec) -> str:
    """The id an image file or a table value stands for: no folder, no image extension, no
    spec suffix (ISIC 2019's ``_downsampled``)."""
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    root, ext = os.path.splitext(stem)
    stem = root if ext.lower() in spec.image_suffixes else stem
    for suffix in spec.id_suffixes:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def image_folders(root: Path, spec: DatasetSpec) -> list[Path]:
    """The spec's image folders under ``root`` (one or two levels down, matched
    case-insensitively: the Kaggle HAM10000 archive has lower-case copies), else ``root``."""
    if not spec.image_dirs:
        return [root]
    wanted = {d.lower() for d in spec.image_dirs}
    found = [p for depth in (1, 2) for p in sorted(root.glob("/".join(["*"] * depth)))
             if p.is_dir() and p.relative_to(root).as_posix().lower() in wanted]
    return found or [root]


def index_images(root: Path, spec: DatasetSpec | None = None) -> dict[str, Path]:
    """Map image id -> path for every image under ``root`` (or the spec's image folders).

    The Kaggle HAM10000 archive holds each image twice (``HAM10000_images_part_1`` and the
    lower-case ``ham10000_images_part_1``, sometimes nested one level deeper); the first path in
    sorted order wins, so the choice is stable.
    """
    spec = spec or HAM10000
    index: dict[str, Path] = {}
    for folder in image_folders(Path(root), spec):
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() in spec.image_suffixes and \
                        not name.startswith("."):
                    index.setdefault(image_key(name, spec), Path(dirpath) / name)
    return index


def resolve_images(raw: pd.DataFrame, column: str, base: Path, spec: DatasetSpec,
                   source: Path, index: dict[str, Path] | None = None
                   ) -> tuple[list[str], list[str]]:
    """(image ids, paths) of every row. A value that is a file (absolute, or relative to the
    table's folder) is used as is; any other value is looked up as an id among the images."""
    ids, paths, missing = [], [], []
    for value in raw[column].astype(str).str.strip():
        path = Path(value).expanduser() if value else None
        if path is not None and not path.is_absolute():
            path = base / path
        if path is None or not path.is_file():
            index = index_images(base, spec) if index is None else index
            path = index.get(image_key(value, spec)) if value else None
        if path is None:
            missing.append(value or "(blank)")
            continue
        ids.append(image_key(value, spec))
        paths.append(str(path))
    if missing:
        where = ", ".join(str(f) for f in image_folders(base, spec))
        raise DataError(f"{source}: {len(missing)} listed image(s) not found under {where}, e.g. "
                        f"{', '.join(missing[:5])}")
    if index is not None and len(ids) == len(raw):
        unlisted = set(index) - set(ids)
        if unlisted:
            log.warning("%s: %d image file(s) present but not listed, ignored (e.g. %s)", source,
                        len(unlisted), ", ".join(sorted(unlisted)[:3]))
    return ids, paths


# ---------------------------------------------------------------- values
def _as_text(column: pd.Series) -> pd.Series:
    """Stripped strings, with "" for None / NaN (pandas 3 keeps those missing through
    astype(str))."""
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def clean_numeric(df: pd.DataFrame, column: str, spec: DatasetSpec, source: Path) -> pd.Series:
    """Floats; missing tokens, text and implausible values (the spec's range) become NaN."""
    raw = _as_text(df[column]) if column in df else pd.Series("", index=df.index)
    values = pd.to_numeric(raw, errors="coerce")
    bad_text = values.isna() & ~raw.str.lower().isin(spec.missing)
    # inf / -inf parse as numbers; never a value a model can use ("nan" is a missing token).
    infinite = values.notna() & ~np.isfinite(values.astype(float))
    lo, hi = spec.ranges.get(column, (-np.inf, np.inf))
    out_of_range = values.notna() & ~infinite & ((values < lo) | (values > hi))
    for mask, what in ((bad_text, "not a number"), (infinite, "not a finite number"),
                       (out_of_range, f"outside {(lo, hi)}")):
        if mask.any():
            rows = np.flatnonzero(mask.to_numpy())[:5]
            log.warning("%s: %d %s value(s) %s treated as missing (line %s): %s", source,
                        int(mask.sum()), column, what, ", ".join(str(i + 2) for i in rows),
                        ", ".join(repr(raw.iloc[i][:20]) for i in rows))
    return values.mask(out_of_range | infinite).astype(float)


def clean_category(df: pd.DataFrame, column: str, spec: DatasetSpec) -> pd.Series:
    """Lower-case strings; blanks and the spec's missing tokens become None (missing)."""
    if column not in df:
        return pd.Series(None, index=df.index, dtype=object)
    values = _as_text(df[column]).str.lower()
    return values.where(~values.isin(spec.missing), None).astype(object)


def clean_metadata(df: pd.DataFrame, spec: DatasetSpec | None = None,
                   source: Path | str = "input") -> pd.DataFrame:
    """The spec's metadata fields of ``df`` (absent columns: all missing)."""
    spec = spec or HAM10000
    source = Path(source)
    cols = {c: clean_numeric(df, c, spec, source) for c in spec.numeric}
    cols.update({c: clean_category(df, c, spec) for c in spec.categorical})
    return pd.DataFrame(cols, index=df.index, columns=list(spec.metadata))


# ---------------------------------------------------------------- finding the label table
def find_files(root: Path, names: tuple[str, ...], depth: int = DETECT_DEPTH) -> list[Path]:
    """Files called one of ``names`` (case-insensitive) in ``root`` and ``depth`` levels below,
    shallowest first. Never walks a whole tree."""
    wanted = {n.lower() for n in names}
    hits: list[Path] = []
    for level in range(depth + 1):
        pattern = "/".join(["*"] * (level + 1))
        hits += sorted(p for p in root.glob(pattern) if p.name.lower() in wanted and p.is_file())
    return hits
