"""The dataset presets: the public releases' facts (files, columns, classes, metadata fields,
missing-value spellings) as ``DatasetSpec`` values, by name (``--preset``)."""
from __future__ import annotations

from .spec import KNOWN_LEAKY, DatasetSpec

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
        image_dirs=("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images"),
        evaluation_only=True,
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
