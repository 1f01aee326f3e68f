"""The ensemble's two combinations against its members, on HAM10000's real MobileNetV2 embeddings.

    PYTHONPATH=. .venv/bin/python benchmarks/ensemble.py [--data ../shared/data] [--folds 5]
        [--seed 42] [--inputs image] [--max-folds N] [--combine stack]

Per lesion-grouped outer fold (``skinfeat.learn.cv.make_folds``, as ``skinfeat cv`` makes them:
the model trains on the fold's training rows, early-stops and calibrates on its inner
validation rows, and is scored on the held-out fold), one ``--model ensemble --combine stack``
fit (members head, linear, lgbm, each with its defaults; its stacker on 3-fold inner grouped
out-of-fold predictions). From that one fit, through ``train.finish_split`` (calibration on the
validation rows, then the balanced decision rule, as cv scores every model), five models are
scored on the same held-out fold: each member alone (the head and the linear probe exactly as
``--model head`` / ``--model linear`` fit them: same rows, defaults and seed), the members
combined by ``logmean`` and by ``stack``. So the rows differ by their combination only.
Prints the CPU flags, the load, per fold and at the end the balanced accuracy mean ± sd over
the folds done, and CPU seconds per fold.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skinfeat.data.datasets import load_dataset  # noqa: E402
from skinfeat.embed.cache import read_cache  # noqa: E402
from skinfeat.learn.cv import CVConfig, align_dataset, make_folds  # noqa: E402
from skinfeat.learn.ensemble import EnsembleConfig, EnsembleModel  # noqa: E402
from skinfeat.learn.train import encode_split, finish_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-folds", type=int, default=0, help="the first N folds only")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--inputs", default="image", choices=("image", "fused"))
    ap.add_argument("--combine", default="stack", choices=("logmean", "stack"),
                    help="logmean: fit without the stacker (a quarter of the fits)")
    args = ap.parse_args()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in flags.splitlines()
                    if line.startswith(("Model name", "CPU(s)", "Flags"))))
    print(f"load before {os.getloadavg()}", flush=True)
    data = load_dataset(args.data / "HAM10000_metadata_full.csv", "ham10000", images=False)
    data, image = align_dataset(data, read_cache(args.data / "ham10000-mobilenetv2-embeddings.h5"))
    cfg = CVConfig(folds=args.folds, seeds=(args.seed,), models=("ensemble",),
                   inputs=(args.inputs,), params={"ensemble": EnsembleConfig(combine=args.combine)})
    recipe = cfg.task_recipe("ensemble", args.inputs, args.seed)
    scores: dict[str, list[float]] = {}
    folds = make_folds(data.with_described(), args.folds, "group", args.seed)
    for fold in folds[:args.max_folds or None]:
        t, cpu = time.perf_counter(), time.process_time()
        enc = encode_split(data, image, {"train": fold.train, "val": fold.val,
                                         "test": fold.test}, recipe.encoding)
        train, val = enc.parts["train"], enc.parts["val"]
        model = EnsembleModel(recipe.params).fit(
            train, val, enc.groups["train"], n_classes=len(data.classes),
            meta_fields=enc.encoder.dropout_fields())
        fit_s, fit_cpu = time.perf_counter() - t, time.process_time() - cpu
        logmean = copy.copy(model)
        logmean.stacker_ = None
        named = [(m.kind, m) for m in model.members_] + [("ensemble logmean", logmean)] + \
            ([("ensemble stack", model)] if model.stacker_ is not None else [])
        row = {}
        for name, m in named:
            row[name] = finish_split(data, enc, m, recipe).metrics["balanced_accuracy"]
            scores.setdefault(name, []).append(row[name])
        print(f"fold {fold.fold} ({args.inputs}): "
              + ", ".join(f"{k} {100 * v:.2f}" for k, v in row.items())
              + f"; fit {fit_s:.0f} s wall, {fit_cpu:.0f} s CPU; load {os.getloadavg()[0]:.1f}",
              flush=True)
    print(f"| model | inputs | balanced accuracy, mean ± sd over {len(scores['head'])} folds "
          "| per fold |")
    print("|---|---|---|---|")
    for name, values in scores.items():
        v = 100 * np.array(values)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        print(f"| {name} | {args.inputs} | {v.mean():.2f} ± {sd:.2f} % | "
              f"{', '.join(f'{x:.1f}' for x in v)} |")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
