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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal, Mapping

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
    def from_dict(cls, d: Mapping, source: str = "dataset spec", at: str = "") -> "DatasetSpec":
        """A spec from a table (a spec file's, or the ``dataset`` entry of a bundle's
        config.json, ``at="dataset"``); errors name ``source`` and the key."""
        return parse(cls, d, source, SpecError, at)

    def with_columns(self, **changes) -> "DatasetSpec":
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
    def from_dict(cls, d: Mapping, source: str = "task", at: str = "") -> "Task":
        """A task from a table (the ``task`` entry of a bundle's config.json)."""
        return parse(cls, d, source, SpecError, at)

    @classmethod
    def parse(cls, text: str | None) -> "Task | None":
        """``multiclass``, ``binary`` (the set's own positive class) or ``binary:CODE``."""
        if text is None or text == "":
            return None
        kind, _, positive = text.partition(":")
        if kind not in ("multiclass", "binary") or (kind == "multiclass" and positive):
            raise SpecError(f"--task {text!r}: use multiclass, binary or binary:CLASS (e.g. "
                            "binary:mel)")
        return cls(kind, positive.strip().lower() or None)

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    def __str__(self) -> str:
        return f"binary:{self.positive}" if self.binary else "multiclass"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the public releases
HAM_CLASS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
ISIC_SITES_NOTE = "ISIC sites: anterior/posterior/lateral torso, head/neck, upper/lower extremity"

# ISIC 2024 (SLICE-3D) fields. The train-only columns are the ones the Kaggle challenge's data
# description (kaggle.com/competitions/isic-2024-challenge/data) marks as absent from
# test-metadata.csv: the label and its diagnosis chain, histology, and the vendor's lesion DNN
# score. attribution and copyright_license name the contributing clinic (as HAM10000's
# ``dataset`` does): a source proxy, never an input. image_type is one constant value
# ("TBP tile: close-up"), so it is no field either.
ISIC2024_TRAIN_ONLY = ("target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3",
                       "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm",
                       "tbp_lv_dnn_lesion_confidence", "attribution", "copyright_license")
ISIC2024_NUMERIC = (
    "age_approx", "clin_size_long_diam_mm", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext",
    "tbp_lv_C", "tbp_lv_Cext", "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext",
    "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean", "tbp_lv_deltaA",
    "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm",
    "tbp_lv_eccentricity", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence", "tbp_lv_norm_border",
    "tbp_lv_norm_color", "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max", "tbp_lv_stdL",
    "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y",
    "tbp_lv_z")
ISIC2024_CATEGORICAL = ("sex", "anatom_site_general", "tbp_tile_type", "tbp_lv_location",
                        "tbp_lv_location_simple")

PRESETS: dict[str, DatasetSpec] = {
    # Tschandl et al., Sci. Data 5, 180161 (2018). Kaggle: HAM10000_metadata.csv; Harvard
    # Dataverse: HAM10000_metadata (tab-separated, no extension, or .tab) plus a dataset column.
    "ham10000": DatasetSpec(
        name="ham10000", classes=tuple(HAM_CLASS_NAMES), class_names=HAM_CLASS_NAMES,
        labels_file=("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata",
                     "HAM10000_metadata.txt"),
        label_column="dx", image_column="image_id",
        image_dirs=("HAM10000_images_part_1", "HAM10000_images_part_2"),
        group_column="lesion_id", group_name="lesion",
        numeric=("age",), categorical=("sex", "localization"), missing_tokens=("unknown",),
        ranges={"age": (0.0, 120.0)}, reference_recipe=True, subgroups=("dataset", "dx_type"),
        citation="HAM10000 (Tschandl et al. 2018), CC BY-NC 4.0"),
    # ISIC 2019 Task 1: one-hot ground truth + a separate metadata table; UNK has no training
    # images; lesion_id is blank for part of the set (those images are their own group).
    "isic2019": DatasetSpec(
        name="isic2019", classes=("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc", "unk"),
        class_names={"mel": "melanoma", "nv": "melanocytic nevus", "bcc": "basal cell carcinoma",
                     "ak": "actinic keratosis", "bkl": "benign keratosis",
                     "df": "dermatofibroma", "vasc": "vascular lesion",
                     "scc": "squamous cell carcinoma", "unk": "none of the others"},
        labels_file=("ISIC_2019_Training_GroundTruth.csv",), label_column=None, onehot=True,
        metadata_file=("ISIC_2019_Training_Metadata.csv",), image_column="image",
        image_dirs=("ISIC_2019_Training_Input",), id_suffixes=("_downsampled",),
        group_column="lesion_id", group_name="lesion", numeric=("age_approx",),
        categorical=("anatom_site_general", "sex"), missing_tokens=("unknown",),
        optional_classes=("unk",),
        ranges={"age_approx": (0.0, 120.0)}, citation="ISIC 2019 (BCN20000, HAM10000, MSK), "
        "CC BY-NC 4.0"),
    # SIIM-ISIC 2020: binary melanoma task, grouped by patient. Kaggle names the table
    # train.csv, the ISIC archive ISIC_2020_Training_GroundTruth(_v2).csv.
    "isic2020": DatasetSpec(
        name="isic2020", classes=("benign", "malignant"),
        class_names={"benign": "benign", "malignant": "malignant (melanoma)"},
        labels_file=("train.csv", "ISIC_2020_Training_GroundTruth_v2.csv",
                     "ISIC_2020_Training_GroundTruth.csv"),
        label_column="benign_malignant", image_column="image_name",
        image_dirs=("train", "jpeg/train", "ISIC_2020_Training_JPEG"), group_column="patient_id",
        group_name="patient", numeric=("age_approx",),
        categorical=("sex", "anatom_site_general_challenge"), missing_tokens=("unknown",),
        ranges={"age_approx": (0.0, 120.0)}, positive="malignant",
        subgroups=("anatom_site_general_challenge",),
        citation="SIIM-ISIC 2020 (Rotemberg et al. 2021), CC BY-NC 4.0"),
    # PAD-UFES-20 (Pacheco et al., Data in Brief 2020): smartphone images, 6 classes (BOD is
    # already merged into SCC), about 20 clinical fields, UNK = unknown.
    "pad-ufes-20": DatasetSpec(
        name="pad-ufes-20", classes=("ack", "bcc", "mel", "nev", "scc", "sek"),
        class_names={"ack": "actinic keratosis", "bcc": "basal cell carcinoma",
                     "mel": "melanoma", "nev": "nevus",
                     "scc": "squamous cell carcinoma (incl. Bowen's disease)",
                     "sek": "seborrheic keratosis"},
        labels_file=("metadata.csv",), label_column="diagnostic", image_column="img_id",
        image_dirs=("images",), group_column="patient_id", group_name="patient",
        numeric=("age", "diameter_1", "diameter_2"),
        categorical=("smoke", "drink", "background_father", "background_mother", "pesticide",
                     "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
                     "has_sewage_system", "fitspatrick", "region", "itch", "grew", "hurt",
                     "changed", "bleed", "elevation"),
        missing_tokens=("unk",), ranges={"age": (0.0, 120.0)}, merges={"bod": "scc"},
        subgroups=("fitspatrick", "biopsed"),
        citation="PAD-UFES-20 (Pacheco et al. 2020), CC BY 4.0"),
    # ISIC 2024 (SLICE-3D): lesion crops from 3D total-body photography, binary target, grouped
    # by patient; the crops are JPEG bytes in train-image.hdf5 (or files in train-image/image).
    "isic2024": DatasetSpec(
        name="isic2024", classes=("benign", "malignant"),
        class_names={"benign": "benign", "malignant": "malignant"},
        labels_file=("train-metadata.csv",), label_column="target",
        merges={"0": "benign", "1": "malignant"}, image_column="isic_id",
        image_file=("train-image.hdf5",), image_dirs=("train-image/image", "train-image"),
        group_column="patient_id", group_name="patient",
        numeric=ISIC2024_NUMERIC, categorical=ISIC2024_CATEGORICAL,
        leaky=(*KNOWN_LEAKY, *ISIC2024_TRAIN_ONLY), ranges={"age_approx": (0.0, 120.0)},
        positive="malignant",
        citation="ISIC 2024 / SLICE-3D (Kurtansky et al., Sci. Data 11, 884, 2024), CC BY-NC 4.0"),
    # ISIC 2018 Task 3 test set: one-hot ground truth with HAM10000's classes, no metadata.
    "isic2018-test": DatasetSpec(
        name="isic2018-test", classes=tuple(HAM_CLASS_NAMES), class_names=HAM_CLASS_NAMES,
        labels_file=("ISIC2018_Task3_Test_GroundTruth.csv", "ISIC2018_Task3_Test_GroundTruth",
                     "ISIC2018_Task3_Test_GroundTruth.tab", "ISIC2018_Task3_Test_GroundTruth.txt"),
        label_column=None, onehot=True, image_column="image",
        image_dirs=("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images"), evaluation_only=True,
        citation="ISIC 2018 Task 3 test set, CC BY-NC 4.0"),
    # Any table: columns given by flags or a spec file; defaults read today's generic CSV
    # (image or path or image_id, dx, optional lesion_id, age, sex, localization).
    "csv": DatasetSpec(name="csv", label_column="dx", image_column="image",
                       missing_tokens=("unknown",)),
}
# What makes a file the label table of a preset, beyond its name (train.csv is a common name).
REQUIRED_COLUMNS = {"isic2020": ("image_name", "benign_malignant"),
                    "isic2024": ("isic_id", "target", "patient_id"),
                    "pad-ufes-20": ("img_id", "diagnostic"), "isic2019": ("image", "mel")}
