"""Stage-one benchmark: ratios measured in one run on the real HAM10000 sample.

    .venv/bin/python benchmarks/extract.py [--data ../shared/data/ham10000-sample] [--limit N]
                                           [--device auto|cpu|cuda|mps] [--precisions fp32,int8]

Prints the machine's CPU flags, then for every precision the machine offers (CPU: fp32, bf16
where native, int8 where OpenVINO is installed; CUDA: fp32 and bf16 / fp16; Apple: fp32, fp16),
with the machine's own numbers (shared machines are noisy: read the ratios), for one encoder
pass per image (``--average-views none``; extract's default averages five views, five passes):
  1. throughput vs fp32 eager, interleaved batch by batch so every engine sees the same load:
     decode + model (stage one's loop with in-process decoding, a lower bound: real runs overlap
     decoding in workers) and the model alone; plus whole extract passes (decode workers, cache),
     total with the one-off torch.compile or int8 quantization, and steady; target: the fastest
     offered precision, and int8 on CPUs without bf16, >= 2.5x fp32 eager with decoding;
  2. per-image cosine similarity vs fp32 embeddings, min and median;
  3. fit-head balanced accuracy and macro F1 on each precision's embeddings vs fp32 (target:
     within 1 point), as the mean of 100 paired fits (fit-head's recipe on the folds of 20
     lesion-grouped 5-fold CVs) with its standard error: one fit on the sample moves by 5-6
     points when its inputs change in the last bits, so a few fits cannot tell;
  4. peak RSS of extraction at two dataset sizes (must not grow with the number of images);
  5. the reference's training style (frozen backbone recomputed for every image in every epoch)
     vs extract-once + fit-head (target: >= 10x), and the formula for the full 10,015 images.
Random backbone weights (no network here): speed does not depend on the weight values, but the
agreement of bf16, fp16 and especially int8 with fp32 does; random weights are a weak proxy for
the quantization error of real weights. With real weights, check your own (see the README):
    .venv/bin/python benchmarks/extract.py --data YOUR_HAM10000 \\
        --weights-file convnext_tiny.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ham10000-sample"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_line() -> str:
    """Model name and the flags that decide the fast path (lscpu's, from /proc/cpuinfo)."""
    from skinfeat.embed.device import cpu_flags

    name = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                        "")
    flags = cpu_flags().split()
    have = [f for f in FLAGS if f in flags]
    from skinfeat.embed.device import isa_capped_below_bf16, onednn_isa_cap

    cap = (f"; oneDNN capped at ONEDNN_MAX_CPU_ISA={onednn_isa_cap()}: run as a CPU without "
           "bf16") if isa_capped_below_bf16() else ""
    return (f"CPU: {name or 'unknown'}, {os.cpu_count()} logical cores; flags: "
            f"{' '.join(have) or '(none of ' + ' '.join(FLAGS) + ')'}{cap}")


def offered_precisions(device: torch.device) -> list[str]:
    from skinfeat.embed.device import bf16_supported
    from skinfeat.embed.engines import int8_available

    if device.type == "cpu":
        return ["fp32"] + ["bf16"] * bf16_supported(device) + ["int8"] * int8_available()
    return ["fp32", "bf16" if bf16_supported(device) else "fp16"]


def timed_extract(table, path, **kw) -> dict:
    from skinfeat.embed.extract import extract

    marks: list[float] = []
    t0 = time.perf_counter()
    res = extract(table, path, progress=lambda n: marks.append((time.perf_counter(), n)), **kw)
    total = time.perf_counter() - t0
    first_t, first_n = marks[0]
    steady = (len(table) - first_n) / max(marks[-1][0] - first_t, 1e-9)
    return {"total_s": total, "first_s": first_t - t0, "ips_total": len(table) / total,
            "ips_steady": steady, "precision": res.precision, "cache": res.contents}


def interleaved_rates(table, args, precisions: list[str], device: torch.device,
                      batches: int = 6, rounds: int = 3) -> tuple[dict, dict]:
    """Images/s of each engine, batch by batch in turn so that every engine sees the same load
    (a shared machine's load moves by 2x within minutes; whole passes one after another are not
    comparable). Two rates: decode + model (stage one's own loop, decoding in the process: no
    overlap, so a lower bound for runs with decode workers) and the model alone on one
    preloaded batch (best of ``rounds``)."""
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.engines import make_embedder
    from skinfeat.embed.extract import cache_identity, embed_files
    from skinfeat.embed.transform import preprocess, transform_for

    model = create_backbone(args.name, args.source)
    spec = transform_for(model)
    bs = args.batch_size
    x = torch.stack([preprocess(p, spec) for p in table["path"].iloc[:bs]])
    engines = {}
    for prec in precisions:
        ident = cache_identity(args.name, args.source, spec, prec, (),
                               calibration=args.calibration.get(prec), family=args.family)
        engines[prec] = make_embedder(model, device, ident, spec, compile=prec != "fp32")
        engines[prec](x)  # warm-up (and compile); int8 comes from the store the pass filled
    batches = max(1, min(batches, len(table) // bs - 1))
    paths = table["path"].iloc[bs:bs * (batches + 1)].tolist()
    loops = {p: embed_files(e, paths, spec, batch_size=bs, num_workers=0)
             for p, e in engines.items()}
    spent = {p: 0.0 for p in precisions}
    done = {p: 0 for p in precisions}
    for b in range(batches):
        order = precisions[b % len(precisions):] + precisions[:b % len(precisions)]
        for prec in order:
            t0 = time.perf_counter()
            done[prec] += next(loops[prec]).size
            spent[prec] += time.perf_counter() - t0
    best = {p: float("inf") for p in precisions}
    for _ in range(rounds):
        for prec, run in engines.items():
            t0 = time.perf_counter()
            run(x)
            best[prec] = min(best[prec], time.perf_counter() - t0)
    return {p: done[p] / spent[p] for p in precisions}, {p: len(x) / t for p, t in best.items()}


def cosines(a, b, center: np.ndarray | float = 0.0) -> np.ndarray:
    rows = b.rows_for(list(a.image_ids))
    x, y = a.embeddings - center, b.embeddings[rows] - center
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def peak_rss_child(data: Path, limit: int, backbone: str) -> float:
    """Peak RSS (MiB) of a fresh process extracting ``limit`` images."""
    code = f"""
import resource, tempfile, sys
sys.path.insert(0, {str(ROOT)!r})
from skinfeat.data.datasets import load_dataset
from skinfeat.embed.weights import WeightSource
from skinfeat.embed.extract import extract
t = load_dataset({str(data)!r}, "ham10000").table.sort_values('image_id').iloc[:{limit}]
with tempfile.TemporaryDirectory() as d:
    extract(t, d + '/c.h5', backbone={backbone!r}, weights=WeightSource('random'),
            precision='auto', compile='off', num_workers=1, average_views=())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def reference_epoch_seconds(table, backbone: str, batch: int = 64) -> float:
    """One epoch the reference's way: decode + fp32 backbone forward for every image, then the
    head."""
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.extract import Embedder
    from skinfeat.embed.transform import preprocess, transform_for
    from skinfeat.embed.weights import WeightSource

    model = create_backbone(backbone, WeightSource("random"))
    spec = transform_for(model)
    emb = Embedder(model, torch.device("cpu"), "fp32")
    head = torch.nn.Linear(model.num_features, 7)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    y = torch.as_tensor(table["label"].to_numpy())
    t0 = time.perf_counter()
    for start in range(0, len(table), batch):
        x = torch.stack([preprocess(p, spec) for p in table["path"].iloc[start:start + batch]])
        loss = torch.nn.functional.cross_entropy(head(emb(x).clone()), y[start:start + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def benchmark_weights(backbone: str, weights_file: Path | None):
    """(backbone ref, weight source) of the benchmark: a local model folder (local-dir:PATH,
    hf:PATH, open_clip:PATH) carries real weights and they are used, recorded by sha256, never a
    random init of its architecture; elsewhere random weights unless --weights-file."""
    from skinfeat.embed.encoders import parse_backbone, resolve_backbone
    from skinfeat.embed.weights import WeightSource, resolve_weights

    own = parse_backbone(backbone).folder is not None
    source = resolve_weights(weights_file=weights_file) if weights_file \
        else WeightSource("pretrained" if own else "random")
    return resolve_backbone(backbone, source)


def check(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images")
    ap.add_argument("--backbone", default="convnext_tiny")
    ap.add_argument("--weights-file", type=Path, help="real weights (default: random; a local "
                    "folder, --backbone local-dir:PATH / hf:PATH / open_clip:PATH, brings its own)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", help="comma-separated (default: all the machine offers)")
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--agreement-seeds", type=int, default=20,
                    help="5-fold CVs (fold assignments) in the agreement check: 20 give 100 "
                         "paired fits per precision")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from skinfeat.data.datasets import load_dataset
    from skinfeat.embed.device import resolve_device
    from skinfeat.embed.engines import calibration_files, calibration_identity
    from skinfeat.learn.cv import CVConfig, run_cv
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run

    if not (args.data / "HAM10000_metadata.csv").is_file():
        sys.exit(f"no HAM10000 sample at {args.data}; pass --data DIR")
    table = load_dataset(args.data, "ham10000").table.sort_values("image_id").reset_index(drop=True)
    if args.limit:
        table = table.iloc[: args.limit].reset_index(drop=True)
    n = len(table)
    device = resolve_device(args.device)
    precisions = args.precisions.split(",") if args.precisions else offered_precisions(device)
    ref, args.source = benchmark_weights(args.backbone, args.weights_file)
    args.name, args.family = ref.name, ref.family
    args.calibration = {"int8": calibration_identity(calibration_files(
        table["image_id"], table["path"], args.calibration_images))} if "int8" in precisions \
        else {}
    print(cpu_line())
    print(f"{n} images from {args.data}; {args.backbone} ({args.source.describe()}); device "
          f"{device}; {torch.get_num_threads()} torch threads; precisions {', '.join(precisions)}")
    results: dict = {}
    home = tempfile.TemporaryDirectory()  # int8: quantize from scratch, so "total" includes it
    os.environ["SKINFEAT_HOME"] = home.name
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # one encoder pass per image, the unit every ratio and target here is about:
        # extract's default averages five views (the image, its flip, three turns), x5 passes
        kw = dict(backbone=args.backbone, weights=args.source, batch_size=args.batch_size,
                  device=str(device), calibration_images=args.calibration_images,
                  average_views=())
        runs = {}
        for prec in precisions:  # fp32 eager first: the reference every ratio divides by
            runs[prec] = timed_extract(table, tmp / f"{prec}.h5", precision=prec,
                                       compile="off" if prec == "fp32" else "on", **kw)
        with_decode, alone = interleaved_rates(table, args, precisions, device)
        fp32 = runs["fp32"]
        print("\n1. throughput, images/s. Interleaved, batch by batch: decode + model (stage "
              "one's loop, decoding in-process)\n   and model alone (one preloaded batch). "
              "Whole extract passes one after another (decode workers,\n   cache; noisy on a "
              "shared machine): total with the one-off compile / quantization, and steady.")
        print(f"   {'precision':<16}{'decode+model':>13}{'model':>8}{'vs fp32 (decode+model)':>24}"
              f"{'pass total':>12}{'pass steady':>12}  first batch after")
        for prec, r in runs.items():
            what = {"fp32": "fp32 eager", "bf16": "bf16 + compile", "fp16": "fp16 + compile",
                    "int8": "int8 OpenVINO"}[prec]
            r["ratio"] = with_decode[prec] / with_decode["fp32"]
            r["ratio_model"] = alone[prec] / alone["fp32"]
            r["decode_model_ips"], r["model_ips"] = with_decode[prec], alone[prec]
            print(f"   {what:<16}{with_decode[prec]:13.1f}{alone[prec]:8.1f}"
                  f"{r['ratio']:23.2f}x{r['ips_total']:12.1f}{r['ips_steady']:12.1f}  "
                  f"{r['first_s']:.1f} s")
        best = max(precisions, key=lambda p: runs[p]["ratio"])
        print(f"   fastest: {best}, {runs[best]['ratio']:.2f}x fp32 eager with decoding "
              f"({runs[best]['ratio_model']:.2f}x model alone)   [target >= 2.5x: "
              f"{check(runs[best]['ratio'] >= 2.5)}]")
        if "int8" in precisions:
            print(f"   int8: {runs['int8']['ratio']:.2f}x fp32 eager with decoding   "
                  f"[target on CPUs without bf16 >= 2.5x: {check(runs['int8']['ratio'] >= 2.5)}]")
        if device.type == "cpu" and "bf16" not in offered_precisions(device):
            print("   this CPU has no native bf16: --precision auto runs fp32 (1.00x)")

        print("\n2. per-image cosine vs fp32")
        for prec in precisions[1:]:
            cos = cosines(fp32["cache"], runs[prec]["cache"])
            runs[prec]["cos"] = cos
            centred = cosines(fp32["cache"], runs[prec]["cache"],
                              center=fp32["cache"].embeddings.mean(0))
            print(f"   {prec:<5} min {cos.min():.5f}  median {np.median(cos):.5f}  "
                  f"(images below 0.99: {(cos < 0.99).sum()} of {len(cos)}); mean-centred: "
                  f"min {centred.min():.4f}  median {np.median(centred):.4f}")
        print("   (random-weight embeddings of different images are nearly parallel, so the "
              "mean-centred cosine\n   shows better what a precision does to the part that "
              "tells images apart)")

        # Head training is chaotic: a one-ulp change of the inputs can move early stopping to
        # another epoch, and one fit's balanced accuracy on a 200-image test part by 5-6 points.
        # So the agreement is a paired comparison over many fits: fit-head's recipe (training
        # path, inner validation, calibration) on every fold of a lesion-grouped 5-fold CV,
        # repeated over --agreement-seeds fold assignments, the same folds for every precision.
        seeds = tuple(range(args.agreement_seeds))
        cv_cfg = CVConfig(folds=5, models=("head",), inputs=("fused",), seeds=seeds)
        for prec in precisions:
            t0 = time.perf_counter()
            recs = run_cv(table, runs[prec]["cache"], cv_cfg, jobs=0).records
            runs[prec]["cv_s"] = time.perf_counter() - t0
            runs[prec]["cv"] = {(r["seed"], r["fold"]): r["metrics"] for r in recs}
        n_fits = len(runs["fp32"]["cv"])
        print(f"\n3. fit-head's recipe on each precision's embeddings vs fp32: {n_fits} "
              "paired fits "
              f"(5-fold lesion-grouped CV x {len(seeds)} seeds, the same folds for all); mean "
              "difference in points,\n   its standard error, and one fit's spread (sd), "
              "which is why a handful of fits cannot tell")
        keys = sorted(runs["fp32"]["cv"])
        for prec in precisions:
            line, worst = [], 0.0
            for k in ("balanced_accuracy", "macro_f1", "accuracy"):
                mine = np.array([runs[prec]["cv"][key][k] for key in keys])
                diff = 100 * (mine - np.array([runs["fp32"]["cv"][key][k] for key in keys]))
                if prec == "fp32":
                    line.append(f"{k} {mine.mean():.4f}")
                    continue
                se = diff.std(ddof=1) / np.sqrt(len(diff))
                if k != "accuracy":
                    worst = max(worst, abs(diff.mean()))
                line.append(f"{k} {mine.mean():.4f} ({diff.mean():+.2f} ± {se:.2f}, sd "
                            f"{diff.std(ddof=1):.1f})")
            runs[prec]["metric_diff_points"] = worst
            tail = "" if prec == "fp32" else f"   [mean within 1 point: {check(worst <= 1.0)}]"
            print(f"   {prec:<5} " + "  ".join(line) + tail)
        # Section 5 needs one fit-head run (its epochs and seconds) on fp32 and the fastest.
        for prec in dict.fromkeys(("fp32", best)):
            out = tmp / f"run-{prec}"
            t0 = time.perf_counter()
            res = fit_run(table, tmp / f"{prec}.h5", out, RunConfig(seed=0))
            runs[prec]["fits"] = [{"info": res.info, "seconds": time.perf_counter() - t0}]
        results = {p: {k: v for k, v in r.items() if k not in ("cache", "fits", "cos", "cv")}
                   | ({"cos_min": float(r["cos"].min()), "cos_median": float(np.median(r["cos"]))}
                      if "cos" in r else {})
                   for p, r in runs.items()}
    home.cleanup()

    small = max(32, n // 4)
    rss_small, rss_full = (peak_rss_child(args.data, k, args.backbone) for k in (small, n))
    print(f"\n4. peak RSS: {small} images {rss_small:.0f} MiB, {n} images {rss_full:.0f} MiB "
          f"(ratio {rss_full / rss_small:.2f}; streaming keeps it flat)")

    fast = runs[best]
    epochs = runs["fp32"]["fits"][0]["info"].epochs_run
    epoch_s = reference_epoch_seconds(table, args.backbone)
    ref_total = epoch_s * epochs
    head_s = fast["fits"][0]["seconds"]
    ours = fast["total_s"] + head_s
    print(f"\n5. reference style: one measured epoch (decode + fp32 backbone for all {n} "
          "images + head) "
          f"{epoch_s:.1f} s x {epochs} epochs (as many as our head ran) = {ref_total:.0f} s")
    print(f"   extract once ({best}) {fast['total_s']:.1f} s + fit-head {head_s:.1f} s "
          f"= {ours:.1f} s   speed-up {ref_total / ours:.1f}x   [target >= 10x: "
          f"{check(ref_total / ours >= 10)}]")
    t_ref, t_fast = epoch_s / n, 1.0 / fast["ips_steady"]
    once_s = max(fast["total_s"] - n * t_fast, 0.0)
    print("   full HAM10000 (N = 10,015): reference ~ N x epochs x t_fp32 = "
          f"10015 x E x {t_ref * 1000:.0f} ms; ours ~ N x t_{best} + one-off + head = "
          f"10015 x {t_fast * 1000:.0f} ms + {once_s:.0f} s + head")
    print(f"   with E = {epochs}: reference ~ {10015 * epochs * t_ref / 3600:.1f} h, ours ~ "
          f"{(10015 * t_fast + once_s) / 60:.1f} min + head; speed-up ~ "
          f"{10015 * epochs * t_ref / (10015 * t_fast + once_s):.0f}x")
    print(json.dumps({"precisions": results, "rss_mib": [rss_small, rss_full],
                      "reference_speedup": ref_total / ours}, default=float))


if __name__ == "__main__":
    main()
