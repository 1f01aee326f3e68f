"""Dataset commands: check, unpack, download; where the weights come from."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..backbone import DEFAULT_BACKBONE
from .common import progress_bar


@click.group()
def data() -> None:
    """Inspect and prepare a dataset folder."""


@data.command("check")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_check(root: str, as_json: bool) -> None:
    """Validate a HAM10000 folder and print images/lesions per class and metadata gaps."""
    from ..datasets import load_ham10000, summarize

    s = summarize(load_ham10000(root))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"{root}: {s['images']} images, {s['lesions']} lesions")
    click.echo(f"{'class':<7}{'images':>8}{'lesions':>9}")
    for dx, c in s["per_class"].items():
        click.echo(f"{dx:<7}{c['images']:>8}{c['lesions']:>9}")
    per = ", ".join(f"{k}: {v}" for k, v in s["images_per_lesion"].items())
    click.echo(f"images per lesion (lesions): {per}")
    click.echo(f"missing age: {s['missing_age']}, unknown sex: {s['unknown_sex']}, "
               f"unknown localization: {s['unknown_localization']}")


@data.command("unpack")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
def data_unpack(root: str) -> None:
    """Extract the dataset zips in ROOT (Harvard Dataverse download) in place."""
    from ..download import unpack_zip

    zips = sorted(Path(root).glob("*.zip"))
    if not zips:
        raise click.ClickException(f"{root}: no .zip files to unpack")
    for z in zips:
        click.echo(f"{z.name} -> {unpack_zip(z, Path(root))}")


@click.command()
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
def weights(backbone: str) -> None:
    """Where the backbone's pretrained weights come from and whether they are cached."""
    from ..backbone import pretrained_location

    hub_id, cached = pretrained_location(backbone)
    if hub_id is None:
        click.echo(f"{backbone}: no pretrained weights known to timm; use --weights-file PATH")
        return
    click.echo(f"{backbone}: Hugging Face hub repo {hub_id}")
    click.echo("cached locally: yes" if cached else
               "cached locally: no (fetched on first use; offline, pass --weights-file PATH)")


@click.group()
def download() -> None:
    """Fetch datasets."""


@download.command("ham10000")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False))
@click.option("--with-isic2018-test", is_flag=True, help="Also the ISIC 2018 Task 3 test set.")
def download_ham10000(dest: str, with_isic2018_test: bool) -> None:
    """HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T), resumable and checksummed."""
    from ..download import download_ham10000 as fetch

    bars: dict = {}

    def progress(name: str, done: int, total: int | None) -> None:
        if name not in bars:
            bars[name] = progress_bar(name, unit="B")
            bars[name].total = total
        bars[name].n = done
        bars[name].refresh()

    fetch(Path(dest), with_isic2018_test=with_isic2018_test, progress=progress)
    for b in bars.values():
        b.close()
    click.echo(f"done; next: skinfeat data check {dest}")
