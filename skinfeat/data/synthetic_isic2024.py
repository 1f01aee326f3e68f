"""A synthetic set in ISIC 2024's (SLICE-3D) layout: ``train-metadata.csv`` with the release's 55
columns (train-only ones included, as leaky columns to ignore) and ``train-image.hdf5``, one
scalar ``np.bytes_`` dataset of JPEG bytes per ``isic_id``.

Patients have several lesions each (4-14); positives are rare (about 8 %, spread over at least
six patients so that a 3-fold patient split keeps some on every side). Positive lesions are
drawn with the melanoma look and are larger and more irregular in the TBP measurements, and
each patient's own lesions share a patient-level offset (skin tone, age): the signal that
patient context features ("ugly duckling") recover.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .presets import ISIC2024_NUMERIC

SITES = ("posterior torso", "anterior torso", "lower extremity", "upper extremity", "head/neck")
LOCATIONS = {"posterior torso": "Torso Back", "anterior torso": "Torso Front",
             "lower extremity": "Left Leg", "upper extremity": "Right Arm",
             "head/neck": "Head & Neck"}
ATTRIBUTIONS = ("Memorial Sloan Kettering Cancer Center", "Department of Dermatology, "
                "University of Athens", "Frazer Institute, The University of Queensland")


def _jpeg(rng: np.random.Generator, look: str, size: tuple[int, int]) -> bytes:
    from .synthetic_draw import draw
    buf = io.BytesIO()
    draw(rng, look, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _measurements(rng: np.random.Generator, positive: bool, tone: float) -> dict:
    """TBP lesion-visualizer values: a shared skin tone per patient, positives larger, more
    irregular and darker against it."""
    size = float(rng.lognormal(np.log(5.5 if positive else 3.5), 0.25))
    out = {c: float(rng.normal(0, 1)) for c in ISIC2024_NUMERIC if c.startswith("tbp_lv_")}
    out.update(clin_size_long_diam_mm=round(size, 2), tbp_lv_areaMM2=round(size ** 2 * 0.7, 3),
               tbp_lv_perimeterMM=round(size * 3.3, 3), tbp_lv_minorAxisMM=round(size * 0.7, 3),
               tbp_lv_L=round(tone - (12 if positive else 4) + rng.normal(0, 3), 3),
               tbp_lv_Lext=round(tone + rng.normal(0, 2), 3),
               tbp_lv_norm_border=round(float(rng.normal(6 if positive else 3, 1.5)), 3),
               tbp_lv_nevi_confidence=round(float(rng.uniform(0, 40 if positive else 100)), 3),
               tbp_lv_x=round(float(rng.normal(0, 150)), 2),
               tbp_lv_y=round(float(rng.normal(1000, 300)), 2),
               tbp_lv_z=round(float(rng.normal(0, 60)), 2))
    out["tbp_lv_deltaL"] = round(out["tbp_lv_Lext"] - out["tbp_lv_L"], 3)
    return out


def write_isic2024(root: Path, n_images: int, rng: np.random.Generator,
                   size: tuple[int, int]) -> Path:
    """``train-metadata.csv`` and ``train-image.hdf5`` under ``root`` (about ``n_images``
    lesions; one image per lesion, as in the release)."""
    import h5py
    root.mkdir(parents=True, exist_ok=True)
    n_patients = max(8, n_images // 9)
    counts = rng.integers(4, 15, n_patients)
    counts = np.maximum(1, np.round(counts * n_images / counts.sum())).astype(int)
    n_pos = max(6, round(0.08 * counts.sum()))
    # Positives in distinct patients first (at least six), the rest anywhere.
    holders = list(rng.permutation(n_patients)[:min(n_pos, n_patients)])
    pos_of = {p: 1 for p in holders}
    for p in rng.integers(0, n_patients, n_pos - len(holders)):
        pos_of[int(p)] = pos_of.get(int(p), 0) + 1
    rows, images, n = [], {}, 0
    for p, count in enumerate(counts):
        patient = f"IP_{1000000 + p * 7919:07d}"
        age = float(np.clip(round(rng.normal(60, 12) / 5) * 5, 20, 85))
        sex = str(rng.choice(["male", "female", ""], p=[.52, .45, .03]))
        tone, tile = float(rng.normal(60, 8)), str(rng.choice(["3D: XP", "3D: white"]))
        labels = np.zeros(max(count, pos_of.get(p, 0)), dtype=int)
        labels[:pos_of.get(p, 0)] = 1
        for target in rng.permutation(labels):
            n += 1
            isic_id = f"ISIC_{15670 + n * 31:07d}"
            site = str(rng.choice(SITES)) if rng.random() > 0.02 else ""
            images[isic_id] = _jpeg(rng, "mel" if target else "nv", size)
            diagnosis = "Malignant::Malignant melanocytic proliferations (Melanoma)::" \
                "Melanoma Invasive" if target else "Benign"
            rows.append({"isic_id": isic_id, "target": int(target), "patient_id": patient,
                         "age_approx": "" if rng.random() < 0.02 else age, "sex": sex,
                         "anatom_site_general": site, "image_type": "TBP tile: close-up",
                         "tbp_tile_type": tile, **_measurements(rng, bool(target), tone),
                         "tbp_lv_location": LOCATIONS.get(site, "Unknown"),
                         "tbp_lv_location_simple": LOCATIONS.get(site, "Unknown").split()[0],
                         "attribution": str(rng.choice(ATTRIBUTIONS)),
                         "copyright_license": "CC-BY-NC",
                         "lesion_id": f"IL_{n:07d}" if target or rng.random() < 0.05 else "",
                         "iddx_full": diagnosis, "iddx_1": diagnosis.split("::")[0],
                         "iddx_2": "", "iddx_3": "", "iddx_4": "", "iddx_5": "",
                         "mel_mitotic_index": "", "mel_thick_mm": 0.4 if target else "",
                         "tbp_lv_dnn_lesion_confidence": round(float(
                             rng.uniform(60, 100) if target else rng.uniform(0, 60)), 3)})
    table = pd.DataFrame(rows)
    table = table.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    table.to_csv(root / "train-metadata.csv", index=False)
    with h5py.File(root / "train-image.hdf5", "w") as f:
        for isic_id, data in images.items():
            f.create_dataset(isic_id, data=np.bytes_(data))
    return root
