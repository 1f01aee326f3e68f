"""Synthetic datasets in each public layout, for the demo and the tests.

Images carry a class-dependent visual signal (lesion colour, size, border and texture on a skin
background); metadata follows HAM10000-like distributions with missing ages and "unknown"
categories; some lesions have several images (jittered copies), as in the real data.
``make_synthetic(preset, root)`` writes the other presets' exact layouts (``synthetic_layouts``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from .datasets import CLASSES

LOCALIZATIONS = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                 "lower extremity", "neck", "scalp", "trunk", "upper extremity")
# Share of lesions per class (HAM10000 is ~67 % nv; flattened so small sets keep every class).
CLASS_SHARE = {"akiec": 0.08, "bcc": 0.09, "bkl": 0.12, "df": 0.07, "mel": 0.12, "nv": 0.45,
               "vasc": 0.07}
# (lesion RGB, radius fraction, irregularity, mean age, favoured sites)
LOOK = {
    "akiec": ((190, 95, 90), 0.22, 0.30, 68, ("face", "scalp", "hand")),
    "bcc": ((215, 160, 165), 0.20, 0.15, 66, ("face", "back", "neck")),
    "bkl": ((150, 105, 65), 0.26, 0.20, 60, ("back", "trunk", "face")),
    "df": ((120, 80, 60), 0.14, 0.05, 45, ("lower extremity", "upper extremity")),
    "mel": ((45, 30, 30), 0.30, 0.45, 58, ("back", "upper extremity", "trunk")),
    "nv": ((110, 70, 45), 0.18, 0.05, 42, ("back", "lower extremity", "trunk", "abdomen")),
    "vasc": ((150, 30, 70), 0.16, 0.10, 50, ("abdomen", "trunk", "lower extremity")),
    "scc": ((175, 75, 55), 0.24, 0.35, 72, ("face", "hand", "scalp")),
}


def _draw_lesion(rng: np.random.Generator, dx: str, size: tuple[int, int],
                 params: dict) -> Image.Image:
    w, h = size
    skin = np.array([225, 180, 160]) + rng.normal(0, 8, 3)
    img = Image.new("RGB", size, tuple(int(c) for c in np.clip(skin, 0, 255)))
    draw = ImageDraw.Draw(img)
    color, radius, irregular = params["color"], params["radius"], params["irregular"]
    cx, cy = w / 2 + rng.normal(0, w * 0.05), h / 2 + rng.normal(0, h * 0.05)
    r = radius * min(w, h) * (1 + rng.normal(0, 0.08))
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    radii = r * (1 + irregular * params["shape"] + rng.normal(0, 0.03, 40))
    pts = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]
    fill = tuple(int(c) for c in np.clip(np.array(color) + rng.normal(0, 10, 3), 0, 255))
    draw.polygon(pts, fill=fill)
    if dx in ("mel", "bkl"):  # dark dots / globules
        for _ in range(12):
            x, y = cx + rng.normal(0, r / 2), cy + rng.normal(0, r / 2)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(20, 15, 15))
    if dx == "bcc":  # arborizing vessels
        for _ in range(5):
            x0, y0 = cx + rng.normal(0, r / 2), cy + rng.normal(0, r / 2)
            draw.line([x0, y0, x0 + rng.normal(0, r / 2), y0 + rng.normal(0, r / 2)],
                      fill=(180, 40, 50), width=1)
    if dx == "df":  # pale centre
        draw.ellipse([cx - r / 3, cy - r / 3, cx + r / 3, cy + r / 3], fill=(200, 170, 150))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8))


def draw(rng: np.random.Generator, look: str, size: tuple[int, int]) -> Image.Image:
    """One image of a new lesion that looks like ``look`` (a key of ``LOOK``)."""
    color, radius, irregular, _, _ = LOOK[look]
    params = {"color": color, "radius": radius, "irregular": irregular,
              "shape": rng.normal(0, 1, 40)}
    return _draw_lesion(rng, look, size, params)


def make_synthetic(preset: str, root: str | Path, n_images: int = 120, seed: int = 0,
                   image_size: tuple[int, int] = (64, 48)) -> Path:
    """Write a small synthetic set in ``preset``'s public layout under ``root``."""
    from .synthetic_layouts import WRITERS

    if preset == "ham10000":
        return make_synthetic_ham(root, n_images=n_images, seed=seed, image_size=image_size,
                                  min_lesions_per_class=4)
    if preset not in WRITERS:
        raise ValueError(f"no synthetic layout for {preset!r}; expected one of "
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
    rows, img_no = [], 24306
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
