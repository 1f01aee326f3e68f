"""Stage-one options of a timm CNN from one pass over the images, for ``benchmarks/features.py``.

``skinfeat extract`` runs the encoder once per option; on a shared 2-core machine the full
10,015 images take tens of minutes each. The pooling and layer options differ only after the
encoder, and the view averages only by extra views, so this pass runs the encoder once per view
(``forward_intermediates``) and writes one cache per option, each with exactly the identity
``skinfeat extract`` gives it (``skinfeat.embed.extract.cache_identity``): ``skinfeat cv`` and
``compare`` read them as extract's own. ``verify`` checks that on a few images: it runs
``skinfeat.embed.extract.extract`` once per option (the library path, compile off, decoding in
this process) and reports its wall and CPU seconds, the ratio to the default's in the same run,
and the cosine of its rows to this pass's (the pass is eager; extract compiles from 2,000 images).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinfeat.embed.backbone import create_backbone
from skinfeat.embed.cache import CacheWriter, comparable, read_cache
from skinfeat.embed.device import resolve_precision
from skinfeat.embed.encoders import resolve_backbone
from skinfeat.embed.engines import AUTOCAST
from skinfeat.embed.extract import (
    VIEW_NAMES,
    ImageFiles,
    cache_identity,
    extract,
    library_versions,
)
from skinfeat.embed.pooling import concat_stages, pool_map, same_stage
from skinfeat.embed.transform import transform_for
from skinfeat.embed.weights import WeightSource

# option -> extract()'s keyword arguments (``benchmarks/features.py`` OPTIONS has the flags);
# "default" is the default before issue 29 (--layers last), the options' reference
EXTRACT_KW: dict[str, dict] = {
    "default": {"layers": "last"}, "gem": {"pool": "gem"}, "avgmax": {"pool": "avgmax"},
    "last2": {"layers": "last2"}, "last3": {"layers": "last3"},
    "flip": {"average_views": ("flip",)}, "views": {"average_views": VIEW_NAMES},
    "size288": {"image_size": 288},
}
for _kw in EXTRACT_KW.values():      # one view unless asked: extract averages five by default
    _kw.setdefault("average_views", ())
IN_PASS = ("default", "gem", "avgmax", "last2", "last3", "flip", "views")


class AllPools(torch.nn.Module):
    """One forward, every pooling and layer option of ``pooling.timm_pooled``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        final, inters = self.model.forward_intermediates(x, indices=3)
        if inters and same_stage(inters[-1], final):
            inters = inters[:-1]
        avg = pool_map(final, "avg")
        earlier = [pool_map(t, "avg") for t in inters[-2:]]
        return {"default": avg, "gem": pool_map(final, "gem"),
                "avgmax": pool_map(final, "avgmax"),
                "last2": concat_stages([earlier[-1], avg]), "last3": concat_stages([*earlier, avg])}


def shared_pass(table, backbone: str, paths: dict[str, Path], batch_size: int = 32,
                workers: int = 1) -> dict[str, float]:
    """Write ``paths[option]`` for the options of IN_PASS; returns wall and CPU seconds."""
    options = [o for o in paths if o in IN_PASS]
    views = VIEW_NAMES if "views" in options else ("flip",) if "flip" in options else ()
    ref, weights = resolve_backbone(backbone, WeightSource("pretrained"))
    model = create_backbone(ref.name, weights)
    spec = transform_for(model)
    device = torch.device("cpu")
    prec = resolve_precision("auto", device)
    net = AllPools(model.to(memory_format=torch.channels_last)).eval()

    @torch.inference_mode()
    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        dtype = AUTOCAST.get(prec)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x.contiguous(memory_format=torch.channels_last))
        return {k: v.float().numpy() for k, v in out.items()}

    with torch.inference_mode():
        widths = {k: v.shape[-1] for k, v in
                  net(torch.zeros(1, 3, spec.size, spec.size)).items()}
    attrs = {"versions": json.dumps(library_versions()), "backbone": ref.name,
             "weights": weights.describe(), "precision": prec}
    t, cpu = time.perf_counter(), time.process_time()
    with contextlib.ExitStack() as stack:
        writers = {}
        for o in options:
            kw = EXTRACT_KW[o]
            base = "default" if o in ("flip", "views") else o
            ident = cache_identity(ref.name, weights, spec, prec, (), family=ref.family,
                                   pool=kw.get("pool"), embed_dim=widths[base],
                                   location=ref.location, layers=kw.get("layers", "last"),
                                   average_views=kw.get("average_views", ()))
            writers[o] = stack.enter_context(CacheWriter(paths[o], ident, attrs))
        todo = table[~table["image_id"].isin(set.intersection(*(w.done for w in
                                                                  writers.values())))]
        ids = todo["image_id"].tolist()
        # the copies turn the squashed tensor, as extract makes averaged views (TURNED_TENSOR)
        loader = DataLoader(ImageFiles(todo["path"].tolist(), spec, views, turned=True),
                            batch_size=batch_size, num_workers=workers)
        for n, (idx, x, reasons) in enumerate(loader):
            ok = np.array([r == "" for r in reasons])
            for i, r in zip(idx.tolist(), reasons, strict=True):
                if r:
                    for w in writers.values():
                        w.add_failure(ids[i], r)
            if not ok.any():
                continue
            x = x[torch.from_numpy(ok)]
            outs = [run(x[:, v]) for v in range(1 + len(views))]
            rows = [ids[i] for i in idx[torch.from_numpy(ok)].tolist()]
            per = dict(outs[0])
            if "flip" in options:
                per["flip"] = np.mean([outs[0]["default"], outs[1]["default"]], axis=0,
                                      dtype=np.float64).astype(np.float32)
            if "views" in options:
                per["views"] = np.mean([o["default"] for o in outs], axis=0,
                                       dtype=np.float64).astype(np.float32)
            for o, w in writers.items():
                keep = [j for j, r in enumerate(rows) if r not in w.done]
                if keep:
                    w.add([rows[j] for j in keep], per[o][keep])
            if n % 20 == 0:
                print(f"  pass: {(n + 1) * batch_size} / {len(todo)} images, "
                      f"{time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.1f}",
                      flush=True)
        for w in writers.values():
            w.finalize()
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - cpu}


def verify(table, backbone: str, paths: dict[str, Path], options: list[str], work: Path,
           n: int = 64, rounds: int = 2) -> None:
    """Per option: ``extract`` on the first ``n`` images (timed, in this process) against this
    pass's rows of the same images. One untimed warm-up extract first (the first call pays the
    model's loading and the allocator's growth), then ``rounds`` rounds, every other one in
    reverse order (ABBA), so that a drift in the machine's load falls on every option alike; the
    median CPU seconds per option are compared with the default's."""
    sub = table.iloc[:n]
    print(f"\nstage one per option, {n} images through skinfeat's extract (compile off, "
          f"decoding in this process), one warm-up then {rounds} rounds (ABBA) in one run; "
          "cosine to the one-pass cache:")

    def run(o: str, images) -> tuple[float, float, float, object]:
        out = work / f"verify-{o}.h5"
        for stale in (out, Path(f"{out}.partial")):
            if stale.is_file():
                stale.unlink()
        load = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        res = extract(images, out, backbone=backbone, num_workers=0, compile="off",
                      **EXTRACT_KW[o])
        return time.perf_counter() - t, time.process_time() - cpu, load, res

    run(options[0], sub.iloc[:8])   # warm-up, untimed
    times: dict[str, list[tuple[float, float, float]]] = {o: [] for o in options}
    results = {}
    for r in range(rounds):
        for o in (options if r % 2 == 0 else options[::-1]):
            wall, cpu, load, results[o] = run(o, sub)
            times[o].append((wall, cpu, load))
    base = float(np.median([c for _, c, _ in times[options[0]]]))
    for o in options:
        res = results[o]
        wall = float(np.median([w for w, _, _ in times[o]]))
        cpu = float(np.median([c for _, c, _ in times[o]]))
        loads = [ld for _, _, ld in times[o]]
        line = (f"  {o:8} {wall:7.1f} s wall {cpu:7.1f} s CPU  x{cpu / base:.2f}  "
                f"(CPU per round: {', '.join(f'{c:.1f}' for _, c, _ in times[o])}; "
                f"load {min(loads):.1f}-{max(loads):.1f})")
        if o in paths and paths[o].is_file():
            shared = read_cache(paths[o])
            a = res.contents.embeddings
            b = shared.embeddings[shared.rows_for(res.contents.image_ids)]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            same = comparable(res.contents.identity) == comparable(shared.identity)
            line += f"  cosine min {cos.min():.5f}  identity {'equal' if same else 'DIFFERS'}"
        print(line, flush=True)
