"""Dataset facts and readers: a dataset folder in, one validated table out.

Every fact about HAM10000 (class names, columns, folder layouts, the columns that leak the
label) lives here, so no other module restates it. The validated table has one row per image:
image_id, lesion_id, path, dx, label, age, sex, localization.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_NAMES: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
REQUIRED_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx")
METADATA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")
# dx_type (how the diagnosis was confirmed) and dataset (the source clinic) predict the label
# without looking at the lesion: they must never reach a model.
LEAKY_COLUMNS: tuple[str, ...] = ("dx_type", "dataset")
# HAM10000 writes a missing sex or site as "unknown"; we map blanks to the same value so that
# missing metadata is one category everywhere (training, predict, external sets).
MISSING_CATEGORY = "unknown"
AGE_RANGE = (0.0, 120.0)
METADATA_FILENAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata",
                      "HAM10000_metadata.txt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TABLE_COLUMNS = ("image_id", "lesion_id", "path", "dx", "label", "age", "sex", "localization")


class DataError(ValueError):
    """A dataset problem, with a one-line message that names the file and the problem."""


def find_metadata_file(root: Path) -> Path:
    """The HAM10000 metadata file in ``root`` (Kaggle ``.csv`` or Dataverse, with or without extension)."""
    for name in METADATA_FILENAMES:
        if (root / name).is_file():
            return root / name
    found = sorted(p for p in root.rglob("HAM10000_metadata*") if p.is_file())
    if found:
        return found[0]
    raise DataError(f"{root}: no HAM10000 metadata file (looked for {', '.join(METADATA_FILENAMES)})")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or tab-separated table; tolerates a BOM, CRLF line ends and quoted fields."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "r", encoding="utf-8-sig", errors="replace") as fh:
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


def index_images(root: Path) -> dict[str, Path]:
    """Map image id (file stem) -> path for every image under ``root``.

    The Kaggle archive holds each image twice (``HAM10000_images_part_1`` and the lower-case
    ``ham10000_images_part_1``, sometimes nested one level deeper); the first path in sorted
    order wins, so the choice is stable.
    """
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                index.setdefault(stem, Path(dirpath) / name)
    return index


def _clean_age(df: pd.DataFrame, source: Path) -> pd.Series:
    raw = df["age"].astype(str).str.strip() if "age" in df else pd.Series("", index=df.index)
    age = pd.to_numeric(raw, errors="coerce")
    bad_text = age.isna() & ~raw.str.lower().isin(["", "nan", "na", "none", "null"])
    out_of_range = age.notna() & ((age < AGE_RANGE[0]) | (age > AGE_RANGE[1]))
    for mask, what in ((bad_text, "not a number"), (out_of_range, f"outside {AGE_RANGE}")):
        if mask.any():
            rows = ", ".join(str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5])
            log.warning("%s: %d age value(s) %s treated as missing (line %s)", source,
                        int(mask.sum()), what, rows)
    return age.mask(out_of_range).astype(float)


def _clean_category(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df:
        return pd.Series(MISSING_CATEGORY, index=df.index, dtype=object)
    values = df[column].astype(str).str.strip().str.lower()
    return values.mask(values.isin(["", "nan", "none", "null"]), MISSING_CATEGORY).astype(object)


def validate_table(df: pd.DataFrame, source: Path, *, require_lesion: bool = True) -> pd.DataFrame:
    """Check columns, labels and ids; normalise values. ``df`` must already have a ``path`` column."""
    required = REQUIRED_COLUMNS if require_lesion else ("image_id", "dx")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing required column(s) {', '.join(missing)} "
                        f"(found: {', '.join(df.columns)})")
    if len(df) == 0:
        raise DataError(f"{source}: the table has no rows")
    out = pd.DataFrame({"image_id": df["image_id"].astype(str).str.strip()})
    dupes = out["image_id"][out["image_id"].duplicated()].unique()
    if len(dupes):
        raise DataError(f"{source}: {len(dupes)} duplicate image id(s), e.g. {', '.join(dupes[:3])}")
    lesion = df["lesion_id"].astype(str).str.strip() if "lesion_id" in df else out["image_id"]
    out["lesion_id"] = lesion.where(lesion != "", out["image_id"])
    out["path"] = df["path"].astype(str)
    dx = df["dx"].astype(str).str.strip().str.lower()
    unknown = sorted(set(dx) - set(CLASSES))
    if unknown:
        raise DataError(f"{source}: unknown dx label(s) {', '.join(map(repr, unknown[:5]))}; "
                        f"expected one of {', '.join(CLASSES)}")
    out["dx"] = dx
    out["label"] = dx.map({c: i for i, c in enumerate(CLASSES)}).astype(np.int64)
    out["age"] = _clean_age(df, source)
    out["sex"] = _clean_category(df, "sex")
    out["localization"] = _clean_category(df, "localization")
    return out.reset_index(drop=True)


def attach_paths(df: pd.DataFrame, images: dict[str, Path], source: Path) -> pd.DataFrame:
    """Add the ``path`` column; refuse listed images that are missing, warn on unlisted ones."""
    ids = df["image_id"].astype(str).str.strip()
    missing = [i for i in ids if i not in images]
    if missing:
        raise DataError(f"{source}: {len(missing)} listed image(s) not found under "
                        f"{source.parent}, e.g. {', '.join(missing[:5])}")
    unlisted = set(images) - set(ids)
    if unlisted:
        log.warning("%s: %d image file(s) present but not listed, ignored (e.g. %s)", source,
                    len(unlisted), ", ".join(sorted(unlisted)[:3]))
    return df.assign(path=[str(images[i]) for i in ids])


def load_ham10000(root: str | Path) -> pd.DataFrame:
    """Read a HAM10000 folder (Kaggle or Harvard Dataverse layout) into the validated table."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    meta_path = find_metadata_file(root)
    images = index_images(root)
    if not images:
        zips = sorted(p.name for p in root.glob("*.zip"))
        if zips:
            raise DataError(f"{root}: images are still packed in {', '.join(zips)}; "
                            f"run: skinfeat data unpack {root}")
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    raw = read_table(meta_path)
    if "image_id" not in raw.columns:
        raise DataError(f"{meta_path}: missing required column(s) image_id "
                        f"(found: {', '.join(raw.columns)})")
    raw = attach_paths(raw, images, meta_path)
    table = validate_table(raw, meta_path)
    log.info("%s: %d images, %d lesions", meta_path, len(table), table["lesion_id"].nunique())
    return table


def summarize(table: pd.DataFrame) -> dict:
    """Counts for ``skinfeat data check``: per class, images per lesion, missing metadata."""
    per_class = table.groupby("dx").agg(images=("image_id", "size"), lesions=("lesion_id", "nunique"))
    per_class = per_class.reindex(list(CLASSES), fill_value=0)
    per_lesion = table.groupby("lesion_id").size().value_counts().sort_index()
    return {
        "images": int(len(table)),
        "lesions": int(table["lesion_id"].nunique()),
        "per_class": {dx: {k: int(v) for k, v in row.items()} for dx, row in per_class.iterrows()},
        "images_per_lesion": {int(k): int(v) for k, v in per_lesion.items()},
        "missing_age": int(table["age"].isna().sum()),
        "unknown_sex": int((table["sex"] == MISSING_CATEGORY).sum()),
        "unknown_localization": int((table["localization"] == MISSING_CATEGORY).sum()),
    }
