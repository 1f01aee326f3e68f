"""Stage one commands: extract, cache info, cache merge, backbones."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..embed.device import DEVICES, PRECISIONS
from ..embed.transform import RESIZE_MODES
from .common import (
    dataset_options,
    default_cache,
    load_data,
    pop_dataset_options,
    progress_bar,
    weights_options,
)


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


def rank_device(device: str, precision: str) -> str:
    """Under torchrun on a node with several GPUs, each rank on its own (``LOCAL_RANK``), not
    every rank on cuda:0; anything else (int8, which runs on the CPU, included) as given."""
    import os
    local = os.environ.get("LOCAL_RANK")
    if local is None or device not in ("auto", "cuda") or precision == "int8":
        return device
    import torch
    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(local) % torch.cuda.device_count()}"


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="Dataset folder (any preset) or a CSV table of images.")
@dataset_options
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="HDF5 cache file [default: cache/<data>-<backbone>-<weights>.h5].")
@weights_options
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="squash", show_default=True,
              help="squash: whole image to NxN (the reference); crop: timm eval transform.")
@click.option("--size", "size", default=None, metavar="train|test|N",
              help="Input side: train (the size the encoder was trained at) [default], test "
              "(timm's test_input_size, e.g. 288 for convnext_tiny.fb_in1k) or N pixels.")
@click.option("--image-size", "image_size", type=int, hidden=True,
              help="Input size in pixels (older spelling of --size N).")
@click.option("--pool", type=click.Choice(["avg", "gem", "avgmax", "cls", "mean", "proj"]),
              default=None,
              help="Pooling, per family [default: timm avg, open_clip proj (CLIP's projected "
              "embedding), hf cls]; timm CNNs: gem (generalised mean, p=3), avgmax; cls / "
              "mean: the class token / mean of the patch tokens.")
@click.option("--layers", type=click.Choice(["last", "last2", "last3"]), default=None,
              help="Pool the last 1, 2 or 3 stages (timm, hf), each standardised per image, "
              "concatenated [default: last3 for timm encoders (last where a model has fewer "
              "stages), last for open_clip and hf; an existing cache keeps its own].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 where native (AMX / avx512-bf16 CPUs, CUDA), fp16 on Apple and "
              "older CUDA GPUs, else fp32. int8: OpenVINO post-training quantization calibrated "
              "on this data set (pip install 'skinfeat[openvino]').")
@click.option("--calibration-images", type=int, default=300, show_default=True,
              help="int8: images of the data set used to calibrate the quantization.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: CUDA, else Apple GPU (mps), else CPU.")
@click.option("--batch-size", type=int, default=None,
              help="[default: 32 on a CPU, 64 on mps, up to 256 on CUDA by memory]")
@click.option("--workers", type=int, default=None,
              help="DataLoader decode workers [default: cores - 1, at most 4 (8 on a GPU)].")
@click.option("--views", type=click.Choice(["none", "flip", "rot90", "all"]), default="none",
              show_default=True, help="Also store embeddings of flipped/rotated copies.")
@click.option("--average-views", type=click.Choice(["none", "flip", "rot90", "all"]),
              default=None,
              help="Store the mean of the image's and these copies' embeddings as its one "
              "embedding (all: flip and three rotations, five encoder passes per image) "
              "[default: all; none with --views; an existing cache keeps its own].")
@click.option("--shard", help="Embed only shard I of N (I/N); automatic under torchrun.")
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]),
              default="auto", show_default=True,
              help="torch.compile the backbone (auto: from 2,000 images to embed).")
def extract(data_dir, cache_path, backbone, weights, weights_file, resize, size, image_size,
            pool, layers, precision, calibration_images, device, batch_size, workers, views,
            average_views, shard, compile_mode, **kwargs) -> None:
    """Stage one: embed every image of a dataset once into the HDF5 cache (resumable).

    Any preset works, test sets (isic2018-test) and CSV tables included, so evaluation sets are
    cached once too."""
    from ..api import extract as run_extract

    data = load_data(data_dir, pop_dataset_options(kwargs))
    shard_t = parse_shard(shard)
    kind = "file" if weights_file else weights
    cache_path = Path(cache_path) if cache_path else default_cache(data_dir, backbone, kind)
    if shard_t and not shard:  # torchrun: one file per rank
        cache_path = cache_path.with_name(f"{cache_path.stem}.shard{shard_t[0]}of{shard_t[1]}.h5")
    if weights == "random" and not weights_file:
        click.echo("NOTE: random backbone weights: embeddings carry no ImageNet knowledge.")
    fresh = not cache_path.exists() and not Path(f"{cache_path}.partial").exists()
    if average_views is None and views == "none" and fresh:   # a cache keeps its own
        click.echo("NOTE: each embedding averages the image with its flip and three quarter "
                   "turns: five encoder passes per image (--average-views none: one).")
    bar = progress_bar("extract")
    res = run_extract(data, cache_path, backbone=backbone, weights=weights,
                      weights_file=weights_file, resize=resize, image_size=size or image_size,
                      precision=precision, device=rank_device(device, precision),
                      batch_size=batch_size, num_workers=workers, views=views, shard=shard_t,
                      compile=compile_mode, pool=pool, layers=layers,
                      average_views=average_views,
                      calibration_images=calibration_images, progress=bar.update,
                      on_start=lambda todo, skipped: setattr(bar, "total", todo)).run
    assert res is not None   # extract always records its run
    bar.close()
    averaged = res.contents.identity.get("average_views")
    click.echo(f"{cache_path}: {len(res.contents.image_ids)} embeddings of dim "
               f"{res.contents.dim} ({res.embedded} new, {res.skipped} already cached; "
               f"{res.precision} on {res.device}"
               + (f"; views averaged: image, {', '.join(averaged)}" if averaged else "") + ")")
    if res.failures:
        click.echo(f"{len(res.failures)} image(s) could not be read and were skipped:")
        for iid, why in sorted(res.failures.items())[:20]:
            click.echo(f"  {iid}: {why}")


@click.group()
def cache() -> None:
    """Inspect and merge embedding caches."""


@cache.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def cache_info(path: str) -> None:
    """Identity, counts, views and failures of a cache file."""
    from ..api import open_cache

    c = open_cache(path).contents
    failures = sorted(c.failures.items())
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
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (refused otherwise).")
def cache_merge(inputs: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Merge shard caches of one identity into OUT."""
    from ..api import merge_caches

    c = merge_caches(list(inputs), out, overwrite=overwrite).contents
    click.echo(f"{out}: {len(c.image_ids)} embeddings merged from {len(inputs)} file(s)")


@click.command()
def backbones() -> None:
    """Recommended encoders (family, width, input size, licence, weights) and the installed
    encoder families."""
    from ..api import backbones as catalogue

    rows, families = catalogue()
    click.echo(f"{'backbone':44} {'family':9} {'width':>5} {'input':>5}  {'licence':11} weights")
    for r in rows:
        click.echo(f"{r['backbone']:44} {r['family']:9} {r['width'] or '-':>5} "
                   f"{r['input_size'] or '-':>5}  {r['licence']:11} {r['weights']}"
                   + ("" if r["installed"] else "  [not installed]"))
    click.echo("families: " + ", ".join(
        f"{f} {v}" if v else f"{f} (not installed: pip install 'skinfeat[encoders]')"
        for f, v in families.items()))
