"""Options and helpers shared by the commands."""
from __future__ import annotations

from pathlib import Path

import click

from ..backbone import DEFAULT_BACKBONE

DEFAULT_CACHE_DIR = Path("cache")


def progress_bar(desc: str, unit: str = "img"):
    from tqdm.auto import tqdm
    return tqdm(desc=desc, unit=unit, dynamic_ncols=True, disable=None)


def weights_options(f):
    f = click.option("--weights-file", type=click.Path(exists=True, dir_okay=False),
                     help="Local checkpoint for the backbone (no network needed).")(f)
    f = click.option("--weights", type=click.Choice(["pretrained", "random"]), default="pretrained",
                     show_default=True, help="ImageNet weights via timm/HF hub, or seeded random "
                     "init (tests, offline smoke runs).")(f)
    return click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
                        help="Any timm model name.")(f)


def default_cache(data: str, backbone: str, weights: str) -> Path:
    return DEFAULT_CACHE_DIR / f"{Path(data).resolve().name}-{backbone}-{weights}.h5"


def find_cache(data: str) -> Path:
    hits = sorted(DEFAULT_CACHE_DIR.glob(f"{Path(data).resolve().name}-*.h5"))
    if len(hits) != 1:
        raise click.UsageError(f"pass --cache: {len(hits)} candidate caches for {data} in "
                               f"{DEFAULT_CACHE_DIR}/ ({', '.join(map(str, hits)) or 'none'})")
    return hits[0]
