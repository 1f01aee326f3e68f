"""Synthetic sets in the exact public layouts of ISIC 2019, SIIM-ISIC 2020, ISIC 2024
(``synthetic_isic2024``), PAD-UFES-20, the ISIC 2018 Task 3 test set and a generic CSV: file and
column names, id formats, image formats, missing tokens, blank group ids and an empty class, as
the releases have them.

Each writer draws ``n_images`` images of groups (lesions or patients) of 1-3 images whose look
depends on the class (``synthetic.LOOK``), and metadata that carries some class signal.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .synthetic_draw import LOOK, draw
from .synthetic_isic2024 import write_isic2024

Writer = Callable[[Path, int, np.random.Generator, tuple[int, int]], Path]


def groups(rng: np.random.Generator, looks: dict[str, str], n_images: int,
           min_groups: int = 4) -> Iterator[tuple[str, int, int, float]]:
    """(class code, group number, images in the group, age) until about ``n_images`` images;
    at least ``min_groups`` groups per class so every class survives a 3-fold split."""
    per_class = max(min_groups, int(n_images / 2 / len(looks)))
    g = 0
    for code, look in looks.items():
        for _ in range(per_class):
            g += 1
            age = float(np.clip(round(rng.normal(LOOK[look][3], 10) / 5) * 5, 5, 85))
            yield code, g, int(rng.choice([1, 1, 2, 3])), age


def _site(rng: np.random.Generator, look: str, sites: dict[str, str], blank: float) -> str:
    """A site name: mostly the one favoured by the class, sometimes any, sometimes blank."""
    if rng.random() < blank:
        return ""
    favoured = [sites[s] for s in LOOK[look][4] if s in sites]
    return str(rng.choice(favoured if favoured and rng.random() < 0.7 else list(sites.values())))


def _shuffled(rows: list[dict], rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 31)))


# ---------------------------------------------------------------- ISIC 2019
ISIC19_LOOKS = {"mel": "mel", "nv": "nv", "bcc": "bcc", "ak": "akiec", "bkl": "bkl", "df": "df",
                "vasc": "vasc", "scc": "scc"}
ISIC19_SITES = {"back": "posterior torso", "trunk": "anterior torso", "abdomen": "anterior torso",
                "face": "head/neck", "scalp": "head/neck", "neck": "head/neck",
                "upper extremity": "upper extremity", "lower extremity": "lower extremity",
                "hand": "upper extremity", "foot": "palms/soles", "chest": "lateral torso"}


def write_isic2019(root: Path, n_images: int, rng: np.random.Generator,
                   size: tuple[int, int]) -> Path:
    """One-hot ground truth (UNK column all zero: no training images), a separate metadata table
    with blank lesion ids for part of the set, and ``_downsampled`` images."""
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(parents=True, exist_ok=True)
    truth, meta, n = [], [], 0
    for code, g, count, age in groups(rng, ISIC19_LOOKS, n_images):
        look = ISIC19_LOOKS[code]
        lesion = "" if rng.random() < 0.3 else f"BCN_{g:07d}"   # blank: grouped by image
        sex, site = str(rng.choice(["male", "female", ""], p=[.5, .45, .05])), \
            _site(rng, look, ISIC19_SITES, 0.05)
        for _ in range(count if lesion else 1):
            n += 1
            image = f"ISIC_{n:07d}" + ("_downsampled" if rng.random() < 0.2 else "")
            draw(rng, look, size).save(folder / f"{image}.jpg", quality=90)
            truth.append({"image": image, **{c.upper(): float(c == code) for c in
                                             (*ISIC19_LOOKS, "unk")}})
            meta.append({"image": image, "age_approx": "" if rng.random() < 0.03 else age,
                         "anatom_site_general": site, "lesion_id": lesion, "sex": sex})
    order = rng.permutation(len(truth))
    pd.DataFrame(truth).iloc[order].to_csv(root / "ISIC_2019_Training_GroundTruth.csv",
                                           index=False)
    pd.DataFrame(meta).iloc[order].to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    return root


# ---------------------------------------------------------------- SIIM-ISIC 2020
ISIC20_SITES = {"back": "torso", "trunk": "torso", "face": "head/neck", "scalp": "head/neck",
                "upper extremity": "upper extremity", "lower extremity": "lower extremity",
                "foot": "palms/soles", "genital": "oral/genital"}


def write_isic2020(root: Path, n_images: int, rng: np.random.Generator,
                   size: tuple[int, int]) -> Path:
    """Kaggle's ``train.csv`` (binary target, grouped by patient) and ``train/`` JPEGs."""
    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    looks = {"benign": "nv", "malignant": "mel"}
    for code, g, count, age in groups(rng, looks, n_images, min_groups=6):
        patient = f"IP_{1000000 + g * 7919:07d}"
        sex = str(rng.choice(["male", "female", ""], p=[.5, .45, .05]))
        for _ in range(count):
            n += 1
            image = f"ISIC_{2000000 + n * 37:07d}"
            draw(rng, looks[code], size).save(folder / f"{image}.jpg", quality=90)
            rows.append({"image_name": image, "patient_id": patient, "sex": sex,
                         "age_approx": "" if rng.random() < 0.03 else age,
                         "anatom_site_general_challenge": _site(rng, looks[code], ISIC20_SITES,
                                                                0.05),
                         "diagnosis": "melanoma" if code == "malignant" else
                         str(rng.choice(["nevus", "unknown"])),
                         "benign_malignant": code, "target": int(code == "malignant")})
    _shuffled(rows, rng).to_csv(root / "train.csv", index=False)
    return root


# ---------------------------------------------------------------- PAD-UFES-20
PAD_LOOKS = {"ACK": "akiec", "BCC": "bcc", "MEL": "mel", "NEV": "nv", "SCC": "scc", "SEK": "bkl"}
PAD_SITES = {"face": "FACE", "scalp": "SCALP", "hand": "HAND", "back": "BACK", "chest": "CHEST",
             "upper extremity": "ARM", "lower extremity": "THIGH", "neck": "NECK",
             "abdomen": "ABDOMEN", "foot": "FOOT", "ear": "EAR"}
PAD_BOOLEANS = ("smoke", "drink", "pesticide", "skin_cancer_history", "cancer_history",
                "has_piped_water", "has_sewage_system", "itch", "grew", "hurt", "changed",
                "bleed", "elevation")
PAD_COLUMNS = ("patient_id", "lesion_id", "smoke", "drink", "background_father",
               "background_mother", "age", "pesticide", "gender", "skin_cancer_history",
               "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick", "region",
               "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed",
               "bleed", "elevation", "img_id", "biopsed")


def write_pad_ufes_20(root: Path, n_images: int, rng: np.random.Generator,
                      size: tuple[int, int]) -> Path:
    """``metadata.csv`` (26 columns, UNK and blanks for unknown) and PNG smartphone images in
    ``images/imgs_part_1..3``, grouped by patient."""
    parts = [root / "images" / f"imgs_part_{i}" for i in (1, 2, 3)]
    for p in parts:
        p.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for code, g, count, age in groups(rng, PAD_LOOKS, n_images):
        look = PAD_LOOKS[code]
        known = rng.random() > 0.15   # some patients have only the core fields (blank others)
        patient: dict[str, str | float] = {c: (str(rng.random() < 0.4) if known else "")
                                           for c in PAD_BOOLEANS}
        patient.update(background_father=str(rng.choice(["POMERANIA", "GERMANY", "UNK"]))
                       if known else "", background_mother=str(rng.choice(["ITALY", "UNK"]))
                       if known else "",
                       gender=str(rng.choice(["FEMALE", "MALE"])) if known else "",
                       fitspatrick=float(rng.integers(1, 7)) if known else "")
        for _ in range(count):
            n += 1
            img_id = f"PAT_{g}_{100 + g}_{n}.png"
            draw(rng, look, size).save(parts[n % 3] / img_id)
            d = round(float(rng.normal(8 if code in ("MEL", "BCC", "SCC") else 5, 1.5)), 1)
            rows.append({**patient, "patient_id": f"PAT_{g}", "lesion_id": 100 + g, "age": int(age),
                         "region": _site(rng, look, PAD_SITES, 0.0) or "UNK",
                         "diameter_1": d if known else "",
                         "diameter_2": round(d - 1, 1) if known else "",
                         "diagnostic": code, "img_id": img_id,
                         "biopsed": str(code in ("BCC", "MEL", "SCC"))})
    _shuffled(rows, rng)[list(PAD_COLUMNS)].to_csv(root / "metadata.csv", index=False)
    return root


# ---------------------------------------------------------------- ISIC 2018 Task 3 test set
ISIC18_LOOKS = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl",
                "DF": "df", "VASC": "vasc"}


def write_isic2018_test(root: Path, n_images: int, rng: np.random.Generator,
                        size: tuple[int, int]) -> Path:
    """The one-hot ground truth (no metadata at all) and ``ISIC2018_Task3_Test_Input/``."""
    folder = root / "ISIC2018_Task3_Test_Input"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        code = list(ISIC18_LOOKS)[i % len(ISIC18_LOOKS)]
        image = f"ISIC_{34524 + i:07d}"
        draw(rng, ISIC18_LOOKS[code], size).save(folder / f"{image}.jpg", quality=90)
        rows.append({"image": image, **{c: float(c == code) for c in ISIC18_LOOKS}})
    _shuffled(rows, rng).to_csv(root / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    return root


# ---------------------------------------------------------------- any CSV
CSV_LOOKS = {"benign": "nv", "melanoma": "mel", "carcinoma": "bcc"}


def write_csv(root: Path, n_images: int, rng: np.random.Generator, size: tuple[int, int]) -> Path:
    """``labels.csv`` with relative image paths in ``photos/``, a label column ``diagnosis_code``,
    patients as groups and two fields of its own (``age_years``, ``body_site``)."""
    folder = root / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for code, g, count, age in groups(rng, CSV_LOOKS, n_images):
        site = _site(rng, CSV_LOOKS[code], {k: k for k in LOOK["nv"][4] + LOOK["bcc"][4]}, 0.1)
        for _ in range(count):
            n += 1
            name = f"photos/img{n:04d}.jpg"
            draw(rng, CSV_LOOKS[code], size).save(root / name, quality=90)
            rows.append({"file": name, "diagnosis_code": code, "patient": f"P{g:03d}",
                         "age_years": "" if rng.random() < 0.05 else age, "body_site": site})
    _shuffled(rows, rng).to_csv(root / "labels.csv", index=False)
    return root


WRITERS: dict[str, Writer] = {"isic2019": write_isic2019, "isic2020": write_isic2020,
                              "isic2024": write_isic2024, "pad-ufes-20": write_pad_ufes_20,
                              "isic2018-test": write_isic2018_test, "csv": write_csv}
