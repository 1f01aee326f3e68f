"""Dataset descriptions: what a dermatology set looks like, as a value every command reads.

A ``DatasetSpec`` says where the labels come from (a column of codes, or one-hot columns), how
image ids map to files, which column groups related images (lesion, patient, or none), which
columns are metadata, which tokens mean "missing", and which columns must never reach a model
because they leak the label. The built-in presets match the public releases file for file;
``csv`` describes any table given by flags or by a spec file (JSON or TOML).

A ``Task`` picks what is learned from the labels: every class (``multiclass``) or one class
against the rest (``binary:mel``). Sets with two classes (ISIC 2020) are binary by themselves.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from ..schema import ONE_OR_MANY, SchemaError, dump, parse, read_settings, validate

log = logging.getLogger(__name__)

# Columns that leak the label in the public sets: how the diagnosis was confirmed (HAM10000
# dx_type, PAD-UFES-20 biopsed), the source clinic, and ISIC 2020's label spelled three ways.
KNOWN_LEAKY = ("dx_type", "dataset", "biopsed", "diagnosis", "benign_malignant", "target")
# Values that mean "missing" in every set (compared after strip + lower-case).
COMMON_MISSING = ("", "nan", "none", "null", "na", "n/a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class SpecError(SchemaError):
    """A dataset description that cannot be used: unknown key, wrong type, a leaky column as an
    input, or a spec that contradicts itself (duplicate classes, merges in a cycle, ...)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything skinfeat needs to know about one dataset layout.

    Built in Python or read from a file (:meth:`from_dict`, :func:`load_spec`), every field is
    type-checked (``skinfeat.schema``) and the whole checked for consistency (:meth:`check`).
    Merges go straight to a kept class: a chain (``a -> b -> c``) is refused rather than
    followed, because the written order would decide where ``a`` lands, and a cycle has no end.
    """
    name: str
    classes: tuple[str, ...] = ()              # ordered class codes; () = the sorted labels found
    class_names: dict[str, str] = field(default_factory=dict)
    labels_file: Annotated[tuple[str, ...], ONE_OR_MANY] = ()  # candidate label tables, in root
    label_column: str | None = "dx"            # a column of class codes ...
    onehot: bool = False                       # ... or one column per class code (ISIC style)
    metadata_file: Annotated[tuple[str, ...], ONE_OR_MANY] = ()  # joined on the image id
    image_column: str = "image_id"             # ids, file names or paths (relative to the table)
    image_dirs: tuple[str, ...] = ()           # folders (under root) that hold the images
    # ... or an HDF5 file (under root) of encoded image bytes keyed by image id; used when present
    image_file: Annotated[tuple[str, ...], ONE_OR_MANY] = ()
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    id_suffixes: tuple[str, ...] = ()          # file-name endings that are not part of the id
    group_column: str | None = None            # images of one group stay on one side of splits
    group_name: str = "image"                  # what a group is, for reports: lesion, patient
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    missing_tokens: tuple[str, ...] = ()       # this set's own spellings of "missing"
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # plausible numeric values
    leaky: tuple[str, ...] = KNOWN_LEAKY       # KNOWN_LEAKY is refused as an input in any case
    # Columns that describe the data (source, how the label was confirmed, skin type) for the
    # subgroup tables; one that is not numeric/categorical never reaches a model (check_inputs).
    subgroups: tuple[str, ...] = ()
    merges: dict[str, str] = field(default_factory=dict)   # class code -> code it is merged into
    optional_classes: tuple[str, ...] = ()     # dropped, with a note, when they have no images
    positive: str | None = None                # the positive class of a two-class set
    evaluation_only: bool = False              # a test set: no training on it (ISIC 2018 Task 3)
    reference_recipe: bool = False             # the published Keras recipe was reported on it
    citation: str = ""

    def __post_init__(self) -> None:
        where = f"spec {self.name!r}"
        v = validate(self, where, SpecError)   # types first: a string is never a list of letters
        # Tables are read with lower-case column names, and labels stripped and lower-cased: so
        # are a spec's column names and class codes.
        col, code = str.lower, (lambda c: c.strip().lower())
        v.update(image_column=col(v["image_column"]), numeric=tuple(map(col, v["numeric"])),
                 label_column=v["label_column"] and col(v["label_column"]),
                 group_column=v["group_column"] and col(v["group_column"]),
                 categorical=tuple(map(col, v["categorical"])), leaky=tuple(map(col, v["leaky"])),
                 subgroups=tuple(map(col, v["subgroups"])),
                 ranges=_lower_keys(v["ranges"], col, "ranges", where),
                 classes=tuple(map(code, v["classes"])),
                 class_names=_lower_keys(v["class_names"], code, "class_names", where),
                 merges={code(k): code(t) for k, t in
                         _lower_keys(v["merges"], code, "merges", where).items()},
                 optional_classes=tuple(map(code, v["optional_classes"])),
                 positive=v["positive"] and code(v["positive"]))
        for name, value in v.items():
            object.__setattr__(self, name, value)
        self.check()

    @property
    def metadata(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def subgroup_only(self) -> tuple[str, ...]:
        """Subgroup columns that are not model inputs (they must never become one)."""
        return tuple(c for c in self.subgroups if c not in self.metadata)

    def check_inputs(self, fields) -> None:
        """Refuse model input ``fields`` (an encoder's or a bundle's) that include a
        subgroup-only or leaky column: describing the data must never feed the model."""
        forbidden = {*self.subgroup_only, *KNOWN_LEAKY, *self.leaky}
        bad = sorted(f for f in fields if str(f).lower() in forbidden)
        if bad:
            raise SpecError(f"{', '.join(bad)} describe(s) the data (subgroups / leaky) and can "
                            "never be a model input", "subgroups", f"spec {self.name!r}")

    @property
    def missing(self) -> frozenset[str]:
        """Every token that means missing in this set, lower-cased."""
        return frozenset(COMMON_MISSING) | {t.strip().lower() for t in self.missing_tokens}

    def check(self) -> None:
        """The leakage guard (no label-leaking column, no label column, as a model input) and
        the spec's agreement with itself; each error names the key at fault."""
        def refuse(key: str, detail: str):
            raise SpecError(detail, key, f"spec {self.name!r}")

        if not self.onehot and not self.label_column:
            refuse("label_column", "give label_column, or onehot = true")
        if self.onehot and not self.classes:
            refuse("classes", "onehot = true needs the classes (the one-hot column names)")
        for key in ("classes", "numeric", "categorical"):
            values = getattr(self, key)
            twice = sorted({c for c in values if values.count(c) > 1})
            if twice:
                refuse(key, f"{', '.join(twice)} listed twice (compared lower-case)")
        forbidden = {c.lower() for c in (*KNOWN_LEAKY, *self.leaky)}
        if self.label_column:
            forbidden.add(self.label_column.lower())
        if self.onehot:
            forbidden |= set(self.classes)
        for key in ("numeric", "categorical"):
            bad = sorted(c for c in getattr(self, key) if c.lower() in forbidden)
            if bad:
                refuse(key, f"{', '.join(bad)} leak(s) the label and can never be a model input "
                       "(dx_type, dataset, biopsed, diagnosis, benign_malignant, target and the "
                       "label itself)")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            refuse("categorical", f"{', '.join(both)} both numeric and categorical")
        self._check_merges(refuse)
        if self.classes:
            for key, codes in (("class_names", self.class_names),
                               ("optional_classes", self.optional_classes),
                               ("positive", (self.positive,) if self.positive else ())):
                unknown = [c for c in codes if c not in self.classes]
                if unknown:
                    refuse(key, f"{', '.join(unknown)} not among the classes "
                           f"({', '.join(self.classes)})")
        for column, (low, high) in self.ranges.items():
            if low > high:
                refuse(f"ranges.{column}", f"low {low:g} is above high {high:g}")

    def _check_merges(self, refuse) -> None:
        merges = self.merges
        for source, target in merges.items():
            if source == target:
                refuse(f"merges.{source}", f"merges {source!r} into itself")
        for source, target in merges.items():
            if target in merges:   # follow it: a chain, or a cycle back onto itself
                path = [source, target]
                while path[-1] in merges and path[-1] not in path[:-1]:
                    path.append(merges[path[-1]])
                if path[-1] in path[:-1]:
                    refuse(f"merges.{source}", f"{' -> '.join(path)} is a cycle of merges")
                refuse(f"merges.{source}", f"{' -> '.join(path)} is a chain of merges; merge "
                       f"each code straight into its class ({source} = {path[-1]!r})")
        if self.classes:
            kept = [c for c in merges if c in self.classes]
            if kept:
                refuse(f"merges.{kept[0]}", f"{kept[0]!r} is merged into {merges[kept[0]]!r} "
                       "but also listed in classes; a merged code is not a class of its own")
            unknown = sorted(set(merges.values()) - set(self.classes))
            if unknown:
                refuse("merges", f"merges into unknown class(es) {', '.join(unknown)} (classes: "
                       f"{', '.join(self.classes)})")

    def to_dict(self) -> dict:
        return dump(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "dataset spec", at: str = "") -> DatasetSpec:
        """A spec from a table (a spec file's, or the ``dataset`` entry of a bundle's
        config.json, ``at="dataset"``); errors name ``source`` and the key."""
        return parse(cls, d, source, SpecError, at)

    def with_columns(self, **changes) -> DatasetSpec:
        """A copy with some fields changed (command-line flags over a preset or a spec file)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _lower_keys(d: dict, norm, key: str, where: str) -> dict:
    out = {norm(k): v for k, v in d.items()}
    if len(out) < len(d):
        twice = sorted({norm(k) for k in d if sum(norm(j) == norm(k) for j in d) > 1})
        raise SpecError(f"{', '.join(twice)} given twice (compared lower-case)", key, where)
    return out


def load_spec(path: str | Path) -> DatasetSpec:
    """A spec file: JSON, or TOML (``.toml``), with the keys of ``DatasetSpec``, at the top or
    in a ``[dataset]`` table (a bundle's config.json works too: its ``dataset`` entry)."""
    path = Path(path)
    try:
        data = read_settings(path, SpecError)
    except OSError as exc:
        raise SpecError(f"cannot read the dataset spec ({exc.strerror or exc})",
                        source=str(path)) from exc
    at = ""
    if isinstance(data, Mapping) and "dataset" in data:
        rest = [k for k in data if k != "dataset"]
        if rest and "format" not in data:   # "format": a bundle's config.json, read as a spec
            raise SpecError(f"key(s) {', '.join(rest)} outside the [dataset] table: move them "
                            "into it, or drop the table", source=str(path))
        data, at = data["dataset"], "dataset"
    return DatasetSpec.from_dict(data, str(path), at)


@dataclass(frozen=True)
class Task:
    """``multiclass`` (every class) or ``binary`` (``positive`` against the rest)."""
    kind: Literal["multiclass", "binary"] = "multiclass"
    positive: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "task", at: str = "") -> Task:
        """A task from a table (the ``task`` entry of a bundle's config.json)."""
        return parse(cls, d, source, SpecError, at)

    @classmethod
    def parse(cls, text: str | None) -> Task | None:
        """``multiclass``, ``binary`` (the set's own positive class) or ``binary:CODE``."""
        if text is None or text == "":
            return None
        kind, _, positive = text.partition(":")
        if kind == "binary":
            return cls("binary", positive.strip().lower() or None)
        if kind == "multiclass" and not positive:
            return cls("multiclass", None)
        raise SpecError(f"--task {text!r}: use multiclass, binary or binary:CLASS (e.g. "
                        "binary:mel)")

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    def __str__(self) -> str:
        return f"binary:{self.positive}" if self.binary else "multiclass"

    def to_dict(self) -> dict:
        return asdict(self)
