"""The ``skinfeat`` command line: each command parses, calls the library, prints."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .backbone import DEFAULT_BACKBONE, RESIZE_MODES

log = logging.getLogger("skinfeat")
DEFAULT_CACHE_DIR = Path("cache")


class Group(click.Group):
    """Turns the library's expected errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        from .bundle import BundleError
        from .backbone import WeightsUnavailable
        from .cache import CacheError
        from .datasets import DataError
        from .download import DownloadError

        try:
            return super().invoke(ctx)
        except (DataError, CacheError, BundleError, WeightsUnavailable, DownloadError,
                FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("\ninterrupted; rerun the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="skinfeat")
def main(verbose: int) -> None:
    """Multi-modal skin lesion classification on cached frozen-backbone embeddings."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skinfeat").setLevel(min(level, logging.INFO) if verbose else level)


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


# ---------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Inspect and prepare a dataset folder."""


@data.command("check")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_check(root: str, as_json: bool) -> None:
    """Validate a HAM10000 folder and print images/lesions per class and metadata gaps."""
    from .datasets import load_ham10000, summarize

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
    from .download import unpack_zip

    zips = sorted(Path(root).glob("*.zip"))
    if not zips:
        raise click.ClickException(f"{root}: no .zip files to unpack")
    for z in zips:
        click.echo(f"{z.name} -> {unpack_zip(z, Path(root))}")


# ---------------------------------------------------------------- stage one
def parse_shard(value: str | None) -> tuple[int, int] | None:
    import os
    if value:
        try:
            i, n = (int(x) for x in value.split("/"))
        except ValueError:
            raise click.BadParameter("use I/N, e.g. 0/4") from None
        return i, n
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:  # torchrun
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return None


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="HAM10000 folder (Kaggle or Dataverse layout).")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="HDF5 cache file [default: cache/<data>-<backbone>-<weights>.h5].")
@weights_options
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="squash", show_default=True,
              help="squash: whole image to NxN (the reference); crop: timm eval transform.")
@click.option("--image-size", type=int, help="Input size [default: the model's].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="DataLoader decode workers.")
@click.option("--views", type=click.Choice(["none", "flip", "rot90", "all"]), default="none",
              show_default=True, help="Also store embeddings of flipped/rotated copies.")
@click.option("--shard", help="Embed only shard I of N (I/N); automatic under torchrun.")
def extract(data_dir, cache_path, backbone, weights, weights_file, resize, image_size, precision,
            device, batch_size, workers, views, shard) -> None:
    """Stage one: embed every image once into the HDF5 cache (resumable)."""
    from .backbone import resolve_weights
    from .datasets import load_ham10000
    from .extract import VIEW_PRESETS, extract as run_extract

    table = load_ham10000(data_dir)
    source = resolve_weights(weights, weights_file)
    shard_t = parse_shard(shard)
    kind = "file" if weights_file else weights
    cache_path = Path(cache_path) if cache_path else default_cache(data_dir, backbone, kind)
    if shard_t and not shard:  # torchrun: one file per rank
        cache_path = cache_path.with_name(f"{cache_path.stem}.shard{shard_t[0]}of{shard_t[1]}.h5")
    if source.kind == "random":
        click.echo("NOTE: random backbone weights: embeddings carry no ImageNet knowledge.")
    bar = progress_bar("extract")
    res = run_extract(table, cache_path, backbone=backbone, weights=source, resize=resize,
                      image_size=image_size, precision=precision, device=device,
                      batch_size=batch_size, num_workers=workers, views=VIEW_PRESETS[views],
                      shard=shard_t, progress=bar.update,
                      on_start=lambda todo, skipped: setattr(bar, "total", todo))
    bar.close()
    click.echo(f"{cache_path}: {len(res.contents.image_ids)} embeddings of dim "
               f"{res.contents.dim} ({res.embedded} new, {res.skipped} already cached; "
               f"{res.precision} on {res.device})")
    if res.failures:
        click.echo(f"{len(res.failures)} image(s) could not be read and were skipped:")
        for iid, why in sorted(res.failures.items())[:20]:
            click.echo(f"  {iid}: {why}")


@main.group()
def cache() -> None:
    """Inspect and merge embedding caches."""


@cache.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def cache_info(path: str) -> None:
    """Identity, counts, views and failures of a cache file."""
    from .cache import read_cache

    c = read_cache(path)
    failures = json.loads(c.attrs.get("failures", "[]"))
    click.echo(f"{path}: {len(c.image_ids)} images x {c.dim} dims, format "
               f"{c.attrs.get('format', 'external')}")
    click.echo(f"weights: {c.attrs.get('weights', 'unknown')}")
    click.echo(f"views: {', '.join(c.views) or 'none'}")
    click.echo("identity: " + json.dumps(c.identity, sort_keys=True))
    click.echo("versions: " + str(c.attrs.get("versions", "unknown")))
    click.echo(f"failures: {len(failures)}")
    for iid, why in failures[:20]:
        click.echo(f"  {iid}: {why}")


@cache.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def cache_merge(inputs: tuple[str, ...], out: str) -> None:
    """Merge shard caches of one identity into OUT."""
    from .cache import merge_caches

    c = merge_caches(list(inputs), out)
    click.echo(f"{out}: {len(c.image_ids)} embeddings merged from {len(inputs)} file(s)")


# ---------------------------------------------------------------- stage two
def head_options(f):
    for opt in reversed([
        click.option("--split", type=click.Choice(["lesion", "image"]), default="lesion",
                     show_default=True, help="lesion: grouped by lesion_id (honest); image: the "
                     "reference's leaky image-level split."),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option("--head", "head_kind", type=click.Choice(["reference", "film"]),
                     default="reference", show_default=True),
        click.option("--epochs", type=int, default=40, show_default=True),
        click.option("--meta-dropout", type=float, default=0.0, show_default=True,
                     help="Probability of blanking a metadata field per sample in training."),
        click.option("--tta/--no-tta", default=False, show_default=True,
                     help="Average predictions over cached views."),
    ]):
        f = opt(f)
    return f


@main.command("fit-head")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--cache", "cache_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@head_options
@click.option("--inputs", type=click.Choice(["fused", "image", "meta"]), default="fused",
              show_default=True)
@click.option("--model", type=click.Choice(["head", "lgbm"]), default="head", show_default=True)
@click.option("--select-on", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Split that picks the epoch; 'test' reproduces the reference's flaw.")
def fit_head(data_dir, cache_path, out, split, seed, head_kind, epochs, meta_dropout, tta, inputs,
             model, select_on) -> None:
    """Stage two: train the fusion head (or LightGBM) on cached embeddings + metadata."""
    from .baseline import LGBMConfig
    from .datasets import load_ham10000
    from .head import HeadConfig
    from .train import fit_run

    table = load_ham10000(data_dir)
    cache_path = cache_path or find_cache(data_dir)
    res = fit_run(table, cache_path, out, split=split, seed=seed, select_on=select_on, model=model,
                  head_cfg=HeadConfig(head=head_kind, inputs=inputs, seed=seed, max_epochs=epochs,
                                      meta_dropout=meta_dropout),
                  lgbm_cfg=LGBMConfig(inputs=inputs, seed=seed), tta=tta)
    print_run_summary(res, out)


def print_run_summary(res: dict, out: str | Path) -> None:
    m, b, info = res["metrics"], res["baseline"], res["info"]
    if info["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    click.echo(f"split {info['split']} (test {info['sizes']['test']} images), "
               f"epoch chosen on {info['select_on']}")
    click.echo(f"{'':<20}{'model':>10}{'majority':>10}")
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        click.echo(f"{k:<20}{m[k]:>10.4f}{b[k]:>10.4f}")
    click.echo(f"report: {Path(out) / 'report.md'}")


# ---------------------------------------------------------------- demo, weights, download
@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-images", default=1500, show_default=True)
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", type=click.Choice(["auto", "pretrained", "random"]), default="auto",
              show_default=True, help="auto: pretrained if cached or fetchable, else random.")
def demo(out: str, n_images: int, backbone: str, weights: str) -> None:
    """Synthetic HAM10000-layout data -> extract -> fit-head -> report, offline, in minutes."""
    from .demo import run_demo

    res = run_demo(Path(out), n_images=n_images, backbone=backbone, weights=weights,
                   echo=click.echo, progress=progress_bar)
    print_run_summary(res, out)


@main.command()
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
def weights(backbone: str) -> None:
    """Where the backbone's pretrained weights come from and whether they are cached."""
    from .backbone import pretrained_location

    hub_id, cached = pretrained_location(backbone)
    if hub_id is None:
        click.echo(f"{backbone}: no pretrained weights known to timm; use --weights-file PATH")
        return
    click.echo(f"{backbone}: Hugging Face hub repo {hub_id}")
    click.echo("cached locally: yes" if cached else
               "cached locally: no (fetched on first use; offline, pass --weights-file PATH)")


@main.group()
def download() -> None:
    """Fetch datasets."""


@download.command("ham10000")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False))
@click.option("--with-isic2018-test", is_flag=True, help="Also the ISIC 2018 Task 3 test set.")
def download_ham10000(dest: str, with_isic2018_test: bool) -> None:
    """HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T), resumable and checksummed."""
    from .download import download_ham10000 as fetch

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


if __name__ == "__main__":
    main()
