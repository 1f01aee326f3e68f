"""Contact sheets of an audit: the closest pairs side by side, and the top label issues and
outliers with their labels, drawn from the image files (PIL only)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from ..atomic import atomic_write
from ..data.images import open_image

TILE = 160        # px, each image's side in a sheet
CAPTION = 30      # px of text under each tile


def _tile(locator: str | None) -> Image.Image:
    canvas = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    if locator:
        try:
            with open_image(locator) as img:
                img = img.convert("RGB")
                img.thumbnail((TILE, TILE))
                canvas.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
        except (OSError, ValueError, KeyError):
            ImageDraw.Draw(canvas).text((8, TILE // 2), "unreadable", fill=(160, 0, 0))
    else:
        ImageDraw.Draw(canvas).text((8, TILE // 2), "no image file", fill=(120, 120, 120))
    return canvas


def _save(sheet: Image.Image, path: Path) -> Path:
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


def _grid(cells: list[tuple[list[str | None], list[str]]], per_row: int, path: Path) -> Path:
    """Each cell: its images (side by side) and caption lines under them."""
    width = max(len(imgs) for imgs, _ in cells) * TILE
    cell_h = TILE + CAPTION
    rows = (len(cells) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (width + 8), rows * (cell_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (imgs, caption) in enumerate(cells):
        x, y = (n % per_row) * (width + 8), (n // per_row) * (cell_h + 8)
        for k, loc in enumerate(imgs):
            sheet.paste(_tile(loc), (x + k * TILE, y))
        for line_no, line in enumerate(caption[:2]):
            draw.text((x + 2, y + TILE + 2 + 13 * line_no), line[:width // 6], fill="black")
    return _save(sheet, path)


def pair_sheet(pairs: pd.DataFrame, paths: dict[str, str], path: Path,
               top: int = 24) -> Path | None:
    """The ``top`` closest pairs of another group or set (same-group pairs are expected)."""
    shown = pairs[pairs["kind"] != "same_group"].head(top)
    if shown.empty or not paths:
        return None
    cells = [([paths.get(r.image_id_a), paths.get(r.image_id_b)],
              [f"{r.image_id_a} | {r.image_id_b}",
               f"cos {r.cosine:.3f} phash {_bits(r.phash_distance)} {r.kind} "
               f"{r.label_a}/{r.label_b}"]) for r in shown.itertuples()]
    return _grid(cells, 3, path)


def _bits(x) -> str:
    return "-" if pd.isna(x) else f"{int(x)}"


def single_sheet(frame: pd.DataFrame, paths: dict[str, str], path: Path, caption,
                 top: int = 30) -> Path | None:
    """The first ``top`` rows of ``frame`` (label issues, outliers), one image each."""
    shown = frame.head(top)
    if shown.empty or not paths:
        return None
    cells = [([paths.get(r.image_id)], [str(r.image_id), caption(r)]) for r in shown.itertuples()]
    return _grid(cells, 6, path)
