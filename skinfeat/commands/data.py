"""Dataset commands: check, unpack, download; where the weights come from."""
from __future__ import annotations

import json

import click

from ..embed.backbone import DEFAULT_BACKBONE
from ..embed.weights import OFFLINE_ROUTES
from .common import dataset_options, load_data, pop_dataset_options, progress_bar


@click.group()
def data() -> None:
    """Inspect and prepare a dataset folder."""


@data.command("check")
@click.argument("root", type=click.Path(exists=True))
@dataset_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_check(root: str, as_json: bool, **kwargs) -> None:
    """Detect the layout of ROOT (a dataset folder or table), validate it and print images and
    groups per class, and the missing values of every metadata field."""
    from ..api import check_dataset

    s = check_dataset(load_data(root, pop_dataset_options(kwargs)))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    group = s["group"]
    click.echo(f"{root}: preset {s['preset']} (table {s['table']}), task {s['task']}")
    groups = f"{s['groups']} {group}s" if group != "image" else "no groups (each image alone)"
    click.echo(f"{s['images']} images, {groups}, {len(s['classes'])} classes")
    if s["dropped_classes"]:
        click.echo(f"dropped (no images): {', '.join(s['dropped_classes'])}")
    width = max(7, *(len(c) + 2 for c in s["per_class"]))
    click.echo(f"{'class':<{width}}{'images':>8}{group + 's':>10}")
    for dx, c in s["per_class"].items():
        click.echo(f"{dx:<{width}}{c['images']:>8}{c['groups']:>10}")
    per = ", ".join(f"{k}: {v}" for k, v in s["images_per_group"].items())
    click.echo(f"images per {group} ({group}s): {per}")
    fields = s["fields"]
    if not fields["numeric"] and not fields["categorical"]:
        click.echo("metadata: none")
    for kind in ("numeric", "categorical"):
        for name in fields[kind]:
            click.echo(f"missing {name}: {s['missing'][name]} of {s['images']} ({kind})")
    click.echo(f"never model inputs (leak the label): {', '.join(s['leaky_columns_ignored'])}")


@data.command("unpack")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
def data_unpack(root: str) -> None:
    """Extract the dataset zips in ROOT (Harvard Dataverse download) in place."""
    from ..api import unpack

    for z, where in unpack(root):
        click.echo(f"{z.name} -> {where}")


@click.command()
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
def weights(backbone: str) -> None:
    """Where the backbone's pretrained weights come from and whether they are cached."""
    from ..api import weights_location

    hub_id, cached = weights_location(backbone)
    if hub_id is None:
        click.echo(f"{backbone}: no pretrained weights known to timm; offline, pass a "
                   f"{OFFLINE_ROUTES}")
        return
    click.echo(f"{backbone}: Hugging Face hub repo {hub_id}")
    click.echo("cached locally: yes" if cached else
               f"cached locally: no (fetched on first use; offline, pass a {OFFLINE_ROUTES})")


@click.group()
def download() -> None:
    """Fetch datasets."""


@download.command("ham10000")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False))
@click.option("--with-isic2018-test", is_flag=True, help="Also the ISIC 2018 Task 3 test set.")
def download_ham10000(dest: str, with_isic2018_test: bool) -> None:
    """HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T), resumable and checksummed."""
    from ..api import download_ham10000 as fetch

    bars: dict = {}

    def progress(name: str, done: int, total: int | None) -> None:
        if name not in bars:
            bars[name] = progress_bar(name, unit="B")
            bars[name].total = total
        bars[name].n = done
        bars[name].refresh()

    fetch(dest, with_isic2018_test=with_isic2018_test, progress=progress)
    for b in bars.values():
        b.close()
    # With the test set beside it the folder holds two tables: name the one to read.
    preset = " --preset ham10000" if with_isic2018_test else ""
    click.echo(f"done; next: skinfeat data check {dest}{preset}")
