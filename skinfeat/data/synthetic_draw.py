"""Drawing synthetic lesion images: a class-dependent look (colour, size, border, texture) on a
skin background, shared by every synthetic layout (``synthetic``, ``synthetic_layouts``)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
    pts = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii, strict=True)]
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
