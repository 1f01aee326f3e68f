"""Stage one's speed per encoder family: images per second of each family's ViT-B/16 beside
timm's convnext_tiny, measured in one run, batch by batch in turn (shared machines are noisy:
read the ratios), at every precision this machine offers, with the cosine vs fp32.

    .venv/bin/python benchmarks/encoders.py [--rounds 6] [--batch-size 16] [--threads N]

The encoders (random weights: speed does not depend on the weight values; no network needed):
  timm convnext_tiny (the default), timm vit_base_patch16_224, open_clip ViT-B-16 (the CLIP
  image tower, projected embedding), transformers ViT-B/16 (``ViTConfig()``, saved to a
  temporary ``save_pretrained`` folder and loaded by path, as a published folder would be).
Model time only (decoding is the same for every encoder; ``benchmarks/extract.py`` measures it).
Needs the ``encoders`` extra (open_clip_torch, transformers); a family not installed is skipped.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skinfeat.embed.backbone import (WeightSource, bf16_supported, cpu_flags, create_backbone,
                                     resolve_device)
from skinfeat.embed.encoders import FamilyEncoder, installed_families


def hf_vit_b16(folder: Path) -> str:
    """A ViT-B/16 (transformers' default ViTConfig) saved as a published folder would be."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return f"hf:{folder}"


def encoders(tmp: Path) -> dict[str, tuple[str, WeightSource]]:
    found = installed_families()
    out = {"timm convnext_tiny": ("convnext_tiny", WeightSource("random")),
           "timm vit_base_patch16_224": ("vit_base_patch16_224", WeightSource("random"))}
    if found.get("open_clip"):
        out["open_clip ViT-B-16"] = ("open_clip:ViT-B-16", WeightSource("random"))
    if found.get("hf"):
        name = hf_vit_b16(tmp / "hf-vit-b16")
        out["hf ViT-B/16"] = (name, WeightSource("local", str(tmp / "hf-vit-b16")))
    return out


def forward(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                enabled=precision == "bf16"):
        out = model.pooled(x) if isinstance(model, FamilyEncoder) else model(x)
    return out.float()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="timed batches per encoder")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    vector = " ".join(f for f in cpu_flags().split() if f.startswith(("avx", "amx")))
    print(f"CPU vector flags: {vector or 'none'}; torch threads "
          f"{torch.get_num_threads()}; precisions offered: {', '.join(precisions)}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for label, (name, source) in encoders(Path(tmp)).items():
            models[label] = create_backbone(name, source).eval()
        x = torch.rand(args.batch_size, 3, 224, 224)
        times = {(m, p): [] for m in models for p in precisions}
        ref = {m: forward(models[m], x, "fp32") for m in models}   # also the warm-up
        cosine = {}
        for p in precisions[1:]:
            for m in models:
                got = forward(models[m], x, p)
                cosine[(m, p)] = torch.nn.functional.cosine_similarity(got, ref[m]).min().item()
        for _ in range(args.rounds):          # in turn, so every encoder sees the same load
            for m in models:
                for p in precisions:
                    t0 = time.perf_counter()
                    forward(models[m], x, p)
                    times[(m, p)].append(time.perf_counter() - t0)
    base = args.batch_size / np.median(times[("timm convnext_tiny", "fp32")])
    print(f"\n{'encoder':28}{'width':>6}{'precision':>10}{'img/s':>8}{'vs convnext fp32':>18}"
          f"{'min cos vs fp32':>17}")
    for m in models:
        for p in precisions:
            rate = args.batch_size / np.median(times[(m, p)])
            cos = f"{cosine[(m, p)]:.6f}" if (m, p) in cosine else "-"
            print(f"{m:28}{ref[m].shape[-1]:>6}{p:>10}{rate:>8.1f}{rate / base:>17.2f}x{cos:>17}")
    print(f"\n{args.rounds} batches of {args.batch_size} random 224x224 images per entry, median "
          "batch time; model only (no decoding).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
