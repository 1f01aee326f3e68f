"""Synthetic datasets in each public layout, for the demo and the tests.

Images carry a class-dependent visual signal (lesion colour, size, border and texture on a skin
background); metadata follows HAM10000-like distributions with missing ages and "unknown"
categories; some lesions have several images (jittered copies), as in the real data.
``make_synthetic(preset, root)`` writes the other presets' exact layouts (``synthetic_layouts``);
the images are drawn by ``synthetic_draw``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .datasets import CLASSES
from .synthetic_draw import LOOK, _draw_lesion
from .synthetic_layouts import WRITERS

LOCALIZATIONS = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                 "lower extremity", "neck", "scalp", "trunk", "upper extremity")
# Share of lesions per class (HAM10000 is ~67 % nv; flattened so small sets keep every class).
CLASS_SHARE = {"akiec": 0.08, "bcc": 0.09, "bkl": 0.12, "df": 0.07, "mel": 0.12, "nv": 0.45,
               "vasc": 0.07}
def make_synthetic(preset: str, root: str | Path, n_images: int = 120, seed: int = 0,
                   image_size: tuple[int, int] = (64, 48)) -> Path:
    """Write a small synthetic set in ``preset``'s public layout under ``root``."""
    if preset == "ham10000":
        return make_synthetic_ham(root, n_images=n_images, seed=seed, image_size=image_size,
                                  min_lesions_per_class=4)
    if preset not in WRITERS:
        raise InputError(f"no synthetic layout for {preset!r}; expected one of "
                         f"ham10000, {', '.join(WRITERS)}")
    return WRITERS[preset](Path(root), n_images, np.random.default_rng(seed), image_size)


def make_synthetic_ham(root: str | Path, n_images: int = 700, seed: int = 0,
                       image_size: tuple[int, int] = (200, 150),
                       min_lesions_per_class: int = 6) -> Path:
    """Write ``HAM10000_metadata.csv`` and images under ``HAM10000_images_part_{1,2}/``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    parts = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    for p in parts:
        p.mkdir(parents=True, exist_ok=True)
    # 1 to 3 images per lesion, 1.67 on average (HAM10000 has 1.34, but more multi-image
    # lesions make the lesion-grouped split matter here too).
    n_lesions = max(len(CLASSES) * min_lesions_per_class, int(n_images / 1.67))
    counts = {dx: max(min_lesions_per_class, int(round(CLASS_SHARE[dx] * n_lesions)))
              for dx in CLASSES}
    rows: list[dict] = []
    img_no = 24306
    for dx in CLASSES:
        color, radius, irregular, mean_age, sites = LOOK[dx]
        for _ in range(counts[dx]):
            lesion_id = f"HAM_{len({r['lesion_id'] for r in rows}) + 1:07d}"
            n_img = int(rng.choice([1, 1, 1, 2, 2, 3]))
            age = float(np.clip(round(rng.normal(mean_age, 12) / 5) * 5, 0, 85))
            sex = str(rng.choice(["male", "female"], p=[0.55, 0.45]))
            site = str(rng.choice(sites)) if rng.random() < 0.7 else str(rng.choice(LOCALIZATIONS))
            if rng.random() < 0.03:
                age = float("nan")
            if rng.random() < 0.02:
                sex = "unknown"
            if rng.random() < 0.03:
                site = "unknown"
            params = {"color": color, "radius": radius, "irregular": irregular,
                      "shape": rng.normal(0, 1, 40)}
            for _ in range(n_img):
                image_id = f"ISIC_{img_no:07d}"
                img_no += 1
                folder = parts[int(rng.random() < 0.5)]
                _draw_lesion(rng, dx, image_size, params).save(folder / f"{image_id}.jpg",
                                                               quality=90)
                rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": dx,
                             "dx_type": "histo" if dx != "nv" else "follow_up",
                             "age": age, "sex": sex, "localization": site})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root
