"""Readers: a dataset folder (or table) and its ``DatasetSpec`` in, one validated table out.

The validated table has one row per image: ``image_id``, ``group_id`` (the grouping id: a lesion,
a patient, or the image itself where the set has no groups), ``path``, ``dx`` (class code),
``label`` (its index in the class list), then the spec's metadata fields, numeric as floats (NaN
when missing) and categorical as lower-case strings (None when missing). Every dataset fact lives
in ``spec``; the building blocks (tables, image files, values) are in ``tables``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .images import image_index, resolve_hdf5
from .presets import PRESETS, REQUIRED_COLUMNS
from .spec import DatasetSpec, SpecError, Task, load_spec
from .tables import (
    DETECT_DEPTH,
    DataError,
    _as_text,
    clean_category,
    clean_metadata,
    find_files,
    header_of,
    image_key,
    index_images,
    read_table,
    resolve_images,
)

log = logging.getLogger(__name__)

# HAM10000's facts, kept as names because the reference recipe and older callers use them.
HAM10000 = PRESETS["ham10000"]
CLASSES: tuple[str, ...] = HAM10000.classes
CLASS_NAMES: dict[str, str] = HAM10000.class_names
MISSING_CATEGORY = "unknown"
AGE_RANGE = HAM10000.ranges["age"]
PATH_COLUMNS: tuple[str, ...] = ("image", "path", "image_id")  # a generic table's image column


@dataclass
class Dataset:
    """A loaded set: the validated table, its description and the task learned from it."""
    table: pd.DataFrame
    spec: DatasetSpec
    classes: tuple[str, ...]
    task: Task = field(default_factory=Task)
    source: Path = Path(".")
    dropped_classes: tuple[str, ...] = ()
    # The spec's subgroup-only columns that the table file has (same index as ``table``): for
    # subgroup tables and ``by:COLUMN`` splits, never a model input.
    described: pd.DataFrame | None = None

    def with_described(self) -> pd.DataFrame:
        """The table plus its subgroup-only columns: what subgroup tables and ``--split
        by:COLUMN`` read (pass it to ``fold_ids`` / ``assign_split``, never to a model)."""
        if self.described is None or self.described.empty:
            return self.table
        return pd.concat([self.table, self.described], axis=1)

    @property
    def class_names(self) -> dict[str, str]:
        return {c: self.spec.class_names.get(c, c) for c in self.classes}


def _matches(preset: str, path: Path) -> bool:
    need = REQUIRED_COLUMNS.get(preset)
    return need is None or set(need) <= header_of(path)


def candidates(path: Path) -> list[tuple[str, Path]]:
    """Every (preset, label table) that ``path`` could be, shallowest first."""
    out = []
    for name, spec in PRESETS.items():
        if name == "csv":
            continue
        if path.is_file():
            hits = [path] if path.name.lower() in {n.lower() for n in spec.labels_file} else []
        else:
            hits = find_files(path, spec.labels_file)
        out += [(name, h) for h in hits if _matches(name, h)]
    return out


def detect(path: str | Path) -> tuple[str, Path]:
    """The preset and label table at ``path``; several candidates are an error listing them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    found = candidates(path)
    if len(found) > 1:
        listed = "; ".join(f"{name}: {p}" for name, p in found)
        raise DataError(f"{path}: several dataset tables found ({listed}); pass --preset NAME "
                        "(or the table file itself) to choose")
    if found:
        name, table = found[0]
        log.info("%s: detected preset %s (table %s)", path, name, table)
        return found[0]
    if path.is_file():
        return "csv", path
    tables = sorted(p for p in path.glob("*.csv") if p.is_file())
    if len(tables) == 1:
        return "csv", tables[0]
    looked = ", ".join(sorted({n for s in PRESETS.values() for n in s.labels_file}))
    raise DataError(f"{path}: no known dataset layout found (looked {DETECT_DEPTH} levels deep "
                    f"for {looked}); for any other set pass its CSV file (columns image or "
                    "image_id, dx) or --preset csv with --spec FILE")


def table_file(path: Path, spec: DatasetSpec) -> Path:
    """The label table of ``spec`` at ``path`` (the file itself, or found in the folder)."""
    if path.is_file():
        return path
    hits = find_files(path, spec.labels_file) if spec.labels_file else []
    if not hits and not spec.labels_file:
        hits = sorted(p for p in path.glob("*.csv") if p.is_file())
    if len(hits) == 1 or (hits and spec.labels_file):
        if len(hits) > 1:
            log.warning("%s: several %s tables; using %s", path, spec.name, hits[0])
        return hits[0]
    if not hits:
        want = ", ".join(spec.labels_file) or "a .csv table"
        if not any(path.iterdir()):
            raise DataError(f"{path}: the folder is empty (no {want})")
        raise DataError(f"{path}: no {spec.name} table found (looked for {want})")
    raise DataError(f"{path}: several tables ({', '.join(p.name for p in hits)}); pass the one "
                    "to read")


# ---------------------------------------------------------------- loading
def resolve_spec(path: str | Path, preset: str = "auto", spec: DatasetSpec | str | Path | None =
                 None, **columns) -> tuple[DatasetSpec, Path]:
    """The description and label table for ``path``: a spec (object or file) wins, then a named
    preset, then detection. ``columns`` override spec fields (the csv flags)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if spec is not None and not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if spec is None:
        if preset in ("auto", None):
            preset, found = detect(path)
            spec = PRESETS[preset]
        elif preset not in PRESETS:
            raise DataError(f"unknown preset {preset!r}; expected auto or one of "
                            f"{', '.join(PRESETS)}")
        else:
            spec = PRESETS[preset]
    try:
        spec = spec.with_columns(**columns)
    except SpecError as exc:
        raise DataError(str(exc)) from exc
    return spec, table_file(path, spec)


def _labels(raw: pd.DataFrame, spec: DatasetSpec, source: Path) -> pd.Series:
    """Class codes per row, from one-hot columns or a label column, merges applied."""
    if spec.onehot:
        missing = [c for c in spec.classes if c not in raw.columns]
        if missing:
            raise DataError(f"{source}: missing required column(s) "
                            f"{', '.join(c.upper() for c in missing)} (found: "
                            f"{', '.join(raw.columns)})")
        onehot = raw[list(spec.classes)].apply(pd.to_numeric, errors="coerce")
        bad = ~(onehot.isin([0, 1]).all(axis=1) & (onehot.sum(axis=1) == 1)).to_numpy()
        if bad.any():
            lines = ", ".join(str(i + 2) for i in np.flatnonzero(bad)[:5])
            raise DataError(f"{source}: {int(bad.sum())} row(s) are not one-hot over "
                            f"{', '.join(c.upper() for c in spec.classes)} (line {lines})")
        dx = pd.Series(np.asarray(spec.classes)[onehot.to_numpy().argmax(axis=1)], index=raw.index)
    else:
        assert spec.label_column is not None   # DatasetSpec.check: onehot or a label column
        col = spec.label_column.lower()
        if col not in raw.columns:
            raise DataError(f"{source}: missing required column(s) {col} "
                            f"(found: {', '.join(raw.columns)})")
        dx = raw[col].astype(str).str.strip().str.lower()
    dx = dx.replace(spec.merges)
    if spec.classes:
        unknown = sorted(set(dx) - set(spec.classes))
        if unknown:
            raise DataError(f"{source}: unknown {spec.label_column or 'label'} label(s) "
                            f"{', '.join(map(repr, unknown[:5]))}; expected one of "
                            f"{', '.join(spec.classes)}")
    elif (dx == "").any():
        raise DataError(f"{source}: {int((dx == '').sum())} row(s) with a blank label")
    return dx


def _image_column(raw: pd.DataFrame, spec: DatasetSpec, source: Path) -> str:
    col = spec.image_column.lower()
    if col in raw.columns:
        return col
    if spec.name == "csv" or col in PATH_COLUMNS:
        hit = next((c for c in PATH_COLUMNS if c in raw.columns), None)
        if hit:
            return hit
    raise DataError(f"{source}: missing required column(s) {col} (found: "
                    f"{', '.join(raw.columns)})")


def _default_fields(spec: DatasetSpec, raw: pd.DataFrame) -> DatasetSpec:
    """A generic table without declared fields: the HAM10000 fields it has, a lesion or patient
    column as groups (today's generic CSV)."""
    if spec.name != "csv":
        return spec
    changes: dict = {}
    if not spec.numeric and not spec.categorical:
        changes["numeric"] = tuple(c for c in HAM10000.numeric if c in raw.columns)
        changes["categorical"] = tuple(c for c in HAM10000.categorical if c in raw.columns)
        changes["ranges"] = {**HAM10000.ranges, **spec.ranges}
    if spec.group_column is None:
        group = next((c for c in ("lesion_id", "patient_id", "group_id") if c in raw.columns),
                     None)
        if group:
            changes.update(group_column=group, group_name=group.split("_")[0])
    return spec.with_columns(**changes) if changes else spec


def _groups(raw: pd.DataFrame, spec: DatasetSpec, source: Path) -> tuple[pd.Series, DatasetSpec]:
    """The group of every row ("" where blank: the image alone) and the spec with a
    ``group_name`` that says what was done. A group column that is named but absent is an
    error: falling back to the image id would make a grouped split image-level, silently."""
    col = spec.group_column
    if col is None:
        if spec.group_name != "image":
            log.warning("%s: spec %r names %ss but no group_column: each image is its own "
                        "group", source, spec.name, spec.group_name)
        return pd.Series("", index=range(len(raw))), spec.with_columns(group_name="image")
    if col not in raw.columns:
        joined = f" (nor in its {' / '.join(spec.metadata_file)})" if spec.metadata_file else ""
        raise DataError(f"{source}: group column {col} not found{joined} (found: "
                        f"{', '.join(raw.columns)}); name the column that groups images with "
                        "--group-col (spec file: group_column), or drop it for a set without "
                        "groups")
    group = _as_text(raw[col]).reset_index(drop=True)
    if spec.group_name == "image":   # a spec file naming the column but not what a group is
        spec = spec.with_columns(group_name=col.removesuffix("_id") or col)
    if (group == "").all():
        log.warning("%s: group column %s is blank on every row: each image is its own group "
                    "(an image-level split)", source, col)
        spec = spec.with_columns(group_name="image")
    return group, spec


def _join_metadata(raw: pd.DataFrame, root: Path, spec: DatasetSpec,
                   image_col: str) -> pd.DataFrame:
    hits = find_files(root, spec.metadata_file, depth=1)
    if not hits:
        log.warning("%s: no %s; every metadata field is missing", root,
                    " or ".join(spec.metadata_file))
        return raw
    meta = read_table(hits[0])
    if image_col not in meta.columns:
        raise DataError(f"{hits[0]}: missing required column(s) {image_col}")
    meta = meta.drop_duplicates(image_col).set_index(image_col)
    keep = [c for c in meta.columns if c not in raw.columns]
    log.info("%s: metadata from %s", root, hits[0])
    return raw.join(meta[keep], on=image_col)


def _check_named_fields(raw: pd.DataFrame, spec: DatasetSpec, source: Path, columns: dict,
                        spec_arg) -> None:
    """A metadata field the user named (--numeric / --categorical, or a spec file) that the
    table lacks is an error, like a missing group column: a typo (``agee``) would otherwise
    train as a field missing on every row. A preset's fields may be absent (no metadata file)."""
    named = [*(columns.get("numeric") or ()), *(columns.get("categorical") or ())]
    if isinstance(spec_arg, (str, Path)):
        named += list(spec.metadata)
    absent = [c for c in dict.fromkeys(f.lower() for f in named) if c not in raw.columns]
    if absent:
        raise DataError(f"{source}: metadata field(s) {', '.join(absent)} not in the table "
                        f"(columns: {', '.join(raw.columns)}); check the spelling of "
                        "--numeric / --categorical (spec file: numeric, categorical)")


def apply_task(dx: pd.Series, classes: tuple[str, ...], task: Task | None,
               spec: DatasetSpec) -> tuple[pd.Series, tuple[str, ...], Task]:
    """Class codes and class list for ``task``; a two-class set with a positive class is binary."""
    if task is None:
        task = Task("binary", spec.positive) if spec.positive and len(classes) == 2 else Task()
    if not task.binary:
        return dx, classes, task
    positive = task.positive or spec.positive
    if positive is None:
        raise DataError(f"--task binary needs a class: binary:CODE with CODE one of "
                        f"{', '.join(classes)}")
    if positive not in classes:
        raise DataError(f"--task binary:{positive}: no class {positive!r}; the classes are "
                        f"{', '.join(classes)}")
    # A two-class set keeps its own names (benign, malignant); otherwise "not_<class>".
    negative = next(c for c in classes if c != positive) if len(classes) == 2 else \
        f"not_{positive}"
    return dx.where(dx == positive, negative), (negative, positive), Task("binary", positive)


def load_dataset(path: str | Path, preset: str = "auto", spec: DatasetSpec | str | Path | None =
                 None, task: Task | str | None = None, images: bool = True,
                 **columns) -> Dataset:
    """Read any supported labelled set into the validated table (see the module docstring).

    ``images=False`` reads the tables alone (``path`` left blank): enough for stage two, which
    needs the labels, groups and metadata beside a cache, not the image files."""
    spec_arg = spec
    spec, source = resolve_spec(path, preset, spec, **columns)
    root = source.parent
    index = None
    stored = image_index(root, spec) if images else None   # images as bytes in an HDF5 file
    if stored is None and images and Path(path).is_dir() and spec.name != "csv":
        index = index_images(root, spec)
        if not index:
            zips = sorted(p.name for p in root.glob("*.zip"))
            if zips:
                raise DataError(f"{root}: images are still packed in {', '.join(zips)}; "
                                f"run: skinfeat data unpack {root}")
            raise DataError(f"{root}: no images ({', '.join(spec.image_suffixes)}) found")
    raw = read_table(source)
    if len(raw) == 0:
        raise DataError(f"{source}: the table has no rows")
    image_col = _image_column(raw, spec, source)
    if spec.metadata_file:
        raw = _join_metadata(raw, root, spec, image_col)
    spec = _default_fields(spec, raw)
    dx = _labels(raw, spec, source)
    group, spec = _groups(raw, spec, source)   # before the (slow) image look-up
    if stored is not None:
        ids, paths = resolve_hdf5(raw[image_col], root, spec, source, stored)
    elif images:
        ids, paths = resolve_images(raw, image_col, root, spec, source, index)
    else:
        ids = [image_key(v, spec) for v in raw[image_col].astype(str)]
        paths = [""] * len(ids)
    table = pd.DataFrame({"image_id": ids})
    dupes = table["image_id"][table["image_id"].duplicated()].unique()
    if len(dupes):
        raise DataError(f"{source}: {len(dupes)} duplicate image id(s), "
                        f"e.g. {', '.join(dupes[:3])}")
    table["group_id"] = group.where(group != "", table["image_id"])  # blank group: the image
    table["path"] = paths
    table["dx"] = dx.to_numpy()
    classes = spec.classes or tuple(sorted(set(dx)))
    # A class the release lists but never uses (ISIC 2019's UNK) is dropped; any other class of
    # a fixed list stays, so that models of one set always share one output order.
    dropped = tuple(c for c in spec.optional_classes if c not in set(table["dx"]))
    if dropped:
        log.warning("%s: class(es) %s have no images and are dropped", source, ", ".join(dropped))
        classes = tuple(c for c in classes if c not in dropped)
    table["dx"], classes, task = apply_task(table["dx"], classes, Task.parse(task) if
                                            isinstance(task, str) else task, spec)
    table["label"] = table["dx"].map({c: i for i, c in enumerate(classes)}).astype(np.int64)
    _check_named_fields(raw, spec, source, columns, spec_arg=spec_arg)
    meta = clean_metadata(raw.reset_index(drop=True), spec, source)
    table = pd.concat([table, meta], axis=1)
    # Subgroup-only columns (acquisition source, how the label was confirmed) are kept beside
    # the table, never in it: the table is what models read.
    described = pd.DataFrame({c: clean_category(raw.reset_index(drop=True), c, spec)
                              for c in spec.subgroup_only if c in raw.columns and
                              c not in table.columns}, index=table.index)
    log.info("%s (%s): %d images, %d %ss", source, spec.name, len(table),
             table["group_id"].nunique(), spec.group_name)
    return Dataset(table, spec, classes, task, source, dropped, described)


def load_images(path: str | Path, spec: DatasetSpec | None = None,
                files: bool = True) -> pd.DataFrame:
    """An unlabelled table of images for predict: ``image_id``, ``path`` and its other columns
    (metadata is cleaned later, by the model's own description). ``files=False`` reads the ids
    alone (``path`` left blank), for embeddings looked up in a cache."""
    path = Path(path)
    spec = spec or PRESETS["csv"]
    raw = read_table(path)
    if len(raw) == 0:
        raise DataError(f"{path}: the table has no rows")
    col = next((c for c in (spec.image_column.lower(), *PATH_COLUMNS) if c in raw.columns), None)
    if col is None:
        raise DataError(f"{path}: needs a column image (file path) or image_id "
                        f"(found: {', '.join(raw.columns)})")
    stored = image_index(path.parent, spec) if files else None
    if stored is not None:
        ids, paths = resolve_hdf5(raw[col], path.parent, spec, path, stored)
    elif files:
        ids, paths = resolve_images(raw, col, path.parent, spec, path)
    else:
        ids = [image_key(v, spec) for v in raw[col].astype(str).str.strip()]
        paths = [""] * len(ids)
    rest = raw.drop(columns=[c for c in ("image_id", "path") if c in raw.columns])
    return pd.concat([pd.DataFrame({"image_id": ids, "path": paths}), rest.reset_index(drop=True)],
                     axis=1)


def summarize(data: Dataset | pd.DataFrame) -> dict:
    """Counts for ``skinfeat data check``: per class, images per group, missing metadata."""
    if isinstance(data, pd.DataFrame):  # a HAM10000 table
        data = Dataset(data, HAM10000, CLASSES)
    table, spec = data.table, data.spec
    per_class = table.groupby("dx").agg(images=("image_id", "size"), groups=("group_id", "nunique"))
    per_class = per_class.reindex(list(data.classes), fill_value=0)
    per_group = table.groupby("group_id").size().value_counts().sort_index()
    missing = {c: int(table[c].isna().sum()) for c in spec.metadata}
    return {
        "preset": spec.name, "table": str(data.source), "task": str(data.task),
        "classes": list(data.classes), "dropped_classes": list(data.dropped_classes),
        "images": int(len(table)), "group": spec.group_name,
        "groups": int(table["group_id"].nunique()),
        "lesions": int(table["group_id"].nunique()),
        "per_class": {dx: {"images": int(row["images"]), "groups": int(row["groups"])}
                      for dx, row in per_class.iterrows()},
        "images_per_group": {int(k): int(v) for k, v in per_group.items()},
        "fields": {"numeric": list(spec.numeric), "categorical": list(spec.categorical)},
        "missing": missing,
        "leaky_columns_ignored": [c for c in spec.leaky],
    }
