"""Stage one's speed per encoder family: images per second of each family's ViT-B/16 beside
timm's convnext_tiny, all at one input size, measured in one run batch by batch in turn (shared
machines are noisy: read the ratios), at every precision this machine offers, with the embedding
width and the cosine vs fp32.

    .venv/bin/python benchmarks/encoders.py [--size base|tiny] [--image-size 224]
                                            [--rounds 6] [--batch-size 16] [--threads N]

Runs offline. Every encoder is randomly initialised (speed does not depend on the weight
values; the cosine of bf16 vs fp32 does, so random weights are a weak proxy for it) and built
the way stage one builds it, through skinfeat's loaders: timm by name; open_clip from an
``open_clip_config.json`` folder and transformers from a ``config.json`` +
``preprocessor_config.json`` folder, as published folders are (config only: random weights).
``--size base``: timm convnext_tiny and vit_base_patch16_224, open_clip ViT-B-16 (the CLIP image
tower, projected embedding), transformers ViT-B/16 (``ViTConfig()``). ``--size tiny``: a few-
layer model of each family, for a quick check that everything runs (the numbers mean little).
Prints the CPU's flags (lscpu's) and the load average before and after: on a shared machine
the ratios hold better than the img/s. Model time only (decoding is the same for every encoder;
``benchmarks/extract.py`` measures it). A family whose library is not installed is skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skinfeat.embed.backbone import create_backbone
from skinfeat.embed.device import bf16_supported, resolve_device
from skinfeat.embed.encoders import installed_families, resolve_backbone
from skinfeat.embed.encoders.base import freeze
from skinfeat.embed.engines import PooledFeatures
from skinfeat.embed.transform import transform_for
from skinfeat.embed.weights import WeightSource

HERE = Path(__file__).resolve().parent


def cpu_line() -> str:
    """``benchmarks/extract.py``'s CPU line (model name and the flags that pick the fast path)."""
    spec = importlib.util.spec_from_file_location("bench_extract", HERE / "extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cpu_line()


def timm_model(name: str, size: int, vit: bool) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": size} if vit else {}   # a ViT's position grid is fixed at build time
    return freeze(timm.create_model(name, pretrained=False, num_classes=0, **kwargs))


def open_clip_folder(folder: Path, size: int, tiny: bool) -> str:
    """An open_clip folder's config (no weights: built randomly from it)."""
    import open_clip

    if tiny:
        cfg = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16,
                                               "head_width": 32},
               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                            "layers": 1}}
    else:
        cfg = open_clip.get_model_config("ViT-B-16")
    cfg["vision_cfg"]["image_size"] = size
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return f"open_clip:{folder}"


def hf_folder(folder: Path, size: int, tiny: bool) -> str:
    """A transformers ViT folder's config and image processor (no weights)."""
    from transformers import ViTConfig, ViTImageProcessor

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128) if tiny else {}
    ViTConfig(image_size=size, patch_size=16, **small).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return f"hf:{folder}"


def encoders(tmp: Path, size: int, tiny: bool) -> dict[str, torch.nn.Module]:
    """label -> frozen encoder, every one for ``size`` x ``size`` inputs."""
    cnn, vit = ("test_convnext", "test_vit") if tiny else ("convnext_tiny", "vit_base_patch16_224")
    out = {f"timm {cnn}": timm_model(cnn, size, vit=False),
           f"timm {vit}": timm_model(vit, size, vit=True)}
    found = installed_families()
    folders = {"open_clip": open_clip_folder, "hf": hf_folder}
    labels = {"open_clip": "open_clip " + ("tiny CLIP" if tiny else "ViT-B-16"),
              "hf": "hf " + ("tiny ViT" if tiny else "ViT-B/16")}
    for family, write in folders.items():
        if not found.get(family):
            print(f"{family}: not installed ({family} encoders need the encoders extra), skipped")
            continue
        ref, source = resolve_backbone(write(tmp / family, size, tiny), WeightSource("random"))
        out[labels[family]] = create_backbone(ref.name, source)
    return out


def forward(net: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                enabled=precision == "bf16"):
        out = net(x)
    return out.float()


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("base", "tiny"), default="base",
                    help="base: each family's ViT-B/16 and convnext_tiny; tiny: a quick check")
    ap.add_argument("--image-size", type=int, default=224, help="one input size for all")
    ap.add_argument("--rounds", type=int, default=6, help="timed batches per encoder")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    print(cpu_line())
    print(f"torch threads {torch.get_num_threads()}; precisions offered: "
          f"{', '.join(precisions)}; load average (1, 5, 15 min) at start: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        models = encoders(Path(tmp), args.image_size, args.size == "tiny")
    configured = {m: transform_for(models[m]).size for m in models}
    nets = {m: PooledFeatures(models[m]).eval() for m in models}   # pooled as stage one pools
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    times = {(m, p): [] for m in nets for p in precisions}
    ref = {m: forward(nets[m], x, "fp32") for m in nets}           # also the warm-up
    cosine = {(m, p): torch.nn.functional.cosine_similarity(forward(nets[m], x, p),
                                                            ref[m]).min().item()
              for p in precisions[1:] for m in nets}
    for _ in range(args.rounds):          # in turn, so every encoder sees the same load
        for m in nets:
            for p in precisions:
                t0 = time.perf_counter()
                forward(nets[m], x, p)
                times[(m, p)].append(time.perf_counter() - t0)
    first = next(iter(nets))
    base = args.batch_size / np.median(times[(first, "fp32")])
    print(f"\n{'encoder':30}{'input':>14}{'width':>6}{'precision':>10}{'img/s':>9}"
          f"{'vs ' + first.split()[-1] + ' fp32':>24}{'min cos vs fp32':>17}")
    for m in nets:
        # the size fed, and the model's own configured size where that differs
        size = f"{args.image_size}" + ("" if configured[m] == args.image_size
                                       else f" (cfg {configured[m]})")
        for p in precisions:
            rate = args.batch_size / np.median(times[(m, p)])
            cos = f"{cosine[(m, p)]:.6f}" if (m, p) in cosine else "-"
            print(f"{m:30}{size:>14}{ref[m].shape[-1]:>6}{p:>10}{rate:>9.1f}"
                  f"{rate / base:>23.2f}x{cos:>17}")
    print(f"\n{args.rounds} batches of {args.batch_size} random {args.image_size}x"
          f"{args.image_size} images per entry, median batch time; model only (no decoding); "
          f"random weights. Load average at end: {load()}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
