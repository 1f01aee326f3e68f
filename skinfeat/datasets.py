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


def _as_text(column: pd.Series) -> pd.Series:
    """Stripped strings, with "" for None / NaN (pandas 3 keeps those missing through astype(str))."""
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def _clean_age(df: pd.DataFrame, source: Path) -> pd.Series:
    raw = _as_text(df["age"]) if "age" in df else pd.Series("", index=df.index)
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
    values = _as_text(df[column]).str.lower()
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
    out[list(METADATA_COLUMNS)] = clean_metadata(df, source)
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


# ---------------------------------------------------------------- other sets (evaluate, predict)
# ISIC 2018 Task 3 test set: a folder of images plus a one-hot ground-truth table (columns image,
# MEL, NV, BCC, AKIEC, BKL, DF, VASC) and no patient metadata at all.
ISIC2018_GROUND_TRUTH = "ISIC2018_Task3_Test_GroundTruth"
LAYOUTS: tuple[str, ...] = ("ham10000", "isic2018-test", "csv")
PATH_COLUMNS: tuple[str, ...] = ("image", "path")   # a generic table names its files in one of these


def clean_metadata(df: pd.DataFrame, source: Path | str) -> pd.DataFrame:
    """age (NaN when missing or implausible), sex and localization (``unknown`` when blank)."""
    return pd.DataFrame({"age": _clean_age(df, Path(source)),
                         "sex": _clean_category(df, "sex"),
                         "localization": _clean_category(df, "localization")}, index=df.index)


def find_isic2018_ground_truth(root: Path) -> Path | None:
    tables = ("", ".csv", ".tab", ".txt")
    hits = [root / f"{ISIC2018_GROUND_TRUTH}{s}" for s in tables]
    hits = [p for p in hits if p.is_file()] or sorted(
        p for p in root.rglob(f"{ISIC2018_GROUND_TRUTH}*") if p.is_file() and p.suffix in tables)
    return hits[0] if hits else None


def load_isic2018_test(root: str | Path) -> pd.DataFrame:
    """The ISIC 2018 Task 3 test set (folder, or its ground-truth file) as the validated table.

    The set has no metadata: age is missing and sex and site are ``unknown`` on every row, which
    is exactly how a trained model's encoder is told that a field is missing.
    """
    root = Path(root)
    gt = root if root.is_file() else find_isic2018_ground_truth(root)
    if gt is None:
        raise DataError(f"{root}: no {ISIC2018_GROUND_TRUTH}.csv found")
    root = gt.parent if root.is_file() else root
    raw = read_table(gt)
    missing = [c for c in ("image", *CLASSES) if c not in raw.columns]
    if missing:
        raise DataError(f"{gt}: missing required column(s) {', '.join(missing)} "
                        f"(found: {', '.join(raw.columns)})")
    onehot = raw[list(CLASSES)].apply(pd.to_numeric, errors="coerce")
    bad = ~(onehot.isin([0, 1]).all(axis=1) & (onehot.sum(axis=1) == 1)).to_numpy()
    if bad.any():
        lines = ", ".join(str(i + 2) for i in np.flatnonzero(bad)[:5])
        raise DataError(f"{gt}: {int(bad.sum())} row(s) are not one-hot over "
                        f"{', '.join(c.upper() for c in CLASSES)} (line {lines})")
    df = pd.DataFrame({"image_id": raw["image"].astype(str).str.strip(),
                       "dx": np.asarray(CLASSES)[onehot.to_numpy().argmax(axis=1)]})
    table = validate_table(attach_paths(df, index_images(root), gt), gt, require_lesion=False)
    log.info("%s: %d images, no metadata (every field treated as missing)", gt, len(table))
    return table


def resolve_images(raw: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Add ``image_id`` and ``path`` to a generic table.

    A path column (``image`` or ``path``; relative paths are read from the table's folder) wins;
    a value that is not a file is looked up as an image id under that folder. Without one, the
    ``image_id`` column is looked up under the table's folder.
    """
    base = source.parent
    col = next((c for c in PATH_COLUMNS if c in raw.columns), None)
    if col is None:
        if "image_id" not in raw.columns:
            raise DataError(f"{source}: needs a column image (file path) or image_id "
                            f"(found: {', '.join(raw.columns)})")
        return attach_paths(raw, index_images(base), source)
    values = raw[col].astype(str).str.strip()
    index: dict[str, Path] | None = None
    paths, missing = [], []
    for value in values:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if value and not path.is_file():
            index = index_images(base) if index is None else index
            path = index.get(Path(value).stem, path)
        if value and path.is_file():
            paths.append(str(path))
        else:
            missing.append(value or "(blank)")
    if missing:
        raise DataError(f"{source}: {len(missing)} image(s) not found (relative paths are read "
                        f"from {base}), e.g. {', '.join(missing[:3])}")
    ids = raw["image_id"].astype(str).str.strip() if "image_id" in raw.columns else \
        [Path(p).stem for p in paths]
    return raw.assign(image_id=ids, path=paths)


def load_generic_csv(path: str | Path, labelled: bool = True) -> pd.DataFrame:
    """A table of images (column image/path or image_id), dx when ``labelled``, optional metadata.

    Labelled: the validated table. Unlabelled (predict): image_id, path, age, sex, localization.
    """
    path = Path(path)
    raw = read_table(path)
    if len(raw) == 0:
        raise DataError(f"{path}: the table has no rows")
    raw = resolve_images(raw, path)
    if labelled:
        return validate_table(raw, path, require_lesion=False)
    table = pd.DataFrame({"image_id": raw["image_id"].astype(str), "path": raw["path"]})
    return pd.concat([table, clean_metadata(raw, path)], axis=1)


def detect_layout(path: str | Path) -> str:
    """``ham10000``, ``isic2018-test`` or ``csv``: what ``load_any`` will read at ``path``."""
    path = Path(path)
    if path.is_file():
        return "isic2018-test" if path.name.startswith(ISIC2018_GROUND_TRUTH) else "csv"
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if find_isic2018_ground_truth(path) is not None:
        return "isic2018-test"
    try:
        find_metadata_file(path)
    except DataError:
        raise DataError(f"{path}: neither a HAM10000 folder (no HAM10000_metadata file) nor the "
                        f"ISIC 2018 Task 3 test set (no {ISIC2018_GROUND_TRUTH}.csv); "
                        "for other data pass a CSV with columns image or image_id, dx") from None
    return "ham10000"


def load_any(path: str | Path, layout: str = "auto") -> pd.DataFrame:
    """Read any supported labelled set (see ``LAYOUTS``) into the validated table."""
    layout = detect_layout(path) if layout == "auto" else layout
    readers = {"ham10000": load_ham10000, "isic2018-test": load_isic2018_test,
               "csv": load_generic_csv}
    if layout not in readers:
        raise DataError(f"unknown layout {layout!r}; expected auto or one of {', '.join(LAYOUTS)}")
    return readers[layout](path)
