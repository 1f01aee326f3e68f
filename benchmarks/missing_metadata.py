"""Robustness to missing metadata, on real HAM10000 embeddings (issue #10).

    .venv/bin/python benchmarks/missing_metadata.py \
        [--study table,calibration,bootstrap,defaults | all]

Real ImageNet MobileNetV2 embeddings of all 10,015 HAM10000 images with the real metadata,
lesion-grouped stratified 5-fold CV; in each fold the encoder is fitted on the training rows,
early stopping uses an inner lesion-grouped validation part of the training folds, and the
held-out fold is scored with its metadata as given, with one field missing, and with every
field missing (``MetadataEncoder.blank``: the very vector a blank, ``unknown``, unseen or absent
value gets). Balanced accuracy, mean +- std over folds.

``table`` (default): image-only, fused and metadata-only heads with the default (robust) encoding
and head config, plus the fused head with ``--encoding reference`` and the reference config, which
shows the failure the issue reports; then checks the targets (fused with all metadata missing
within 1 point of image-only; fused with full metadata above image-only).
``defaults``: the grid of field-dropout probability x early-stopping criterion behind the
defaults of ``HeadConfig``. ``calibration``: class-wise ECE and mean predicted probability vs
prevalence of the held-out folds for each ``Calibrator`` method. ``bootstrap``: widths of the
image and the lesion (cluster) bootstrap intervals on one lesion-level hold-out.
The data files live beside the repository (``../shared/data``) and are not part of it.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from skinfeat.data.datasets import CLASSES, load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.data.splits import fold_ids, holdout_mask
from skinfeat.embed.cache import read_cache
from skinfeat.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    classwise_calibration,
    softmax,
)
from skinfeat.learn.calibration import METHODS, Calibrator
from skinfeat.learn.head import STOP_ON, HeadConfig, head_logits
from skinfeat.learn.head_batch import fit_head

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data"
FIELDS = ("age", "sex", "localization")
CONDITIONS = ("full", *(f"no {f}" for f in FIELDS), "all missing")
VAL_FRACTION = 0.125  # as skinfeat cv: 10 % of all rows at 5 folds


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next((line for line in out.splitlines() if line.startswith("Flags")), "Flags: ?")
    except (OSError, subprocess.CalledProcessError):
        return "Flags: (lscpu unavailable)"


def load(embeddings: Path, metadata: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The validated HAM10000 table (skinfeat's own reader: dx_type never reaches it, "unknown"
    is missing), embeddings and labels, aligned."""
    contents = read_cache(embeddings)
    table = load_dataset(metadata, "ham10000", images=False).table
    image = contents.embeddings[contents.rows_for(table["image_id"].tolist())]
    return table, image, table["label"].to_numpy(np.int64)


def make_folds(table: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """(train, val, test) row numbers per fold; val: a lesion-grouped part of the training rows."""
    folds = fold_ids(table, n_folds, "lesion", seed)
    out = []
    for k in range(n_folds):
        rest = np.flatnonzero(folds != k)
        inner = holdout_mask(table.iloc[rest].reset_index(drop=True), VAL_FRACTION, "lesion", seed)
        out.append((rest[~inner], rest[inner], np.flatnonzero(folds == k)))
    return out


def balanced_accuracy(y: np.ndarray, logits: np.ndarray) -> float:
    return classification_metrics(y, softmax(logits), CLASSES)["balanced_accuracy"]


def fit_fold(table, image, y, fold, cfg: HeadConfig, encoding: str = "robust") -> dict:
    """Fit one head on one fold; logits of val and of test under every missing condition."""
    train, val, test = fold
    enc = MetadataEncoder(encoding=encoding).fit(table.iloc[train])
    meta = enc.transform(table)
    res = fit_head((image[train], meta[train], y[train]), (image[val], meta[val], y[val]),
                   len(CLASSES), cfg, enc.dropout_fields())
    scored = {"full": meta[test], "all missing": enc.blank(meta[test])}
    scored.update({f"no {f}": enc.blank(meta[test], f) for f in FIELDS})
    return {"val": head_logits(res.model, image[val], meta[val]),
            "test": {c: head_logits(res.model, image[test], m) for c, m in scored.items()},
            "class_weights": np.asarray(res.class_weights), "best_epoch": res.best_epoch}


def cross_validate(table, image, y, folds, cfg: HeadConfig, encoding: str = "robust") -> dict:
    """Balanced accuracy per condition over folds, plus each fold's raw outputs."""
    fits = [fit_fold(table, image, y, f, cfg, encoding) for f in folds]
    scores = {c: [balanced_accuracy(y[f[2]], r["test"][c])
                  for f, r in zip(folds, fits, strict=False)]
              for c in CONDITIONS}
    return {"scores": scores, "fits": fits, "epochs": [r["best_epoch"] for r in fits]}


def pm(values) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():5.1f} ± {v.std(ddof=1):3.1f}"


def study_table(table, image, y, folds, cfg: HeadConfig) -> dict:
    rows = {}
    for inputs in ("image", "fused", "meta"):
        rows[f"{inputs} (robust)"] = cross_validate(table, image, y, folds,
                                                    replace(cfg, inputs=inputs))
    rows["fused (--encoding reference)"] = cross_validate(
        table, image, y, folds, HeadConfig.reference(seed=cfg.seed), "reference")
    print(f"\nbalanced accuracy (%), lesion-grouped {len(folds)}-fold CV, mean ± std over folds; "
          f"head config: meta_dropout={cfg.meta_dropout}, stop_on={cfg.stop_on}")
    print(f"| head | {' | '.join(CONDITIONS)} |\n|---|{'---|' * len(CONDITIONS)}")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(pm(r["scores"][c]) for c in CONDITIONS) + " |")
    img = np.mean(rows["image (robust)"]["scores"]["full"])
    fused = rows["fused (robust)"]["scores"]
    gap = 100 * (np.mean(fused["all missing"]) - img)
    gain = 100 * (np.mean(fused["full"]) - img)
    print(f"\ntarget 1, fused with all metadata missing within 1 point of image-only: "
          f"{gap:+.1f} points -> {'PASS' if gap >= -1.0 else 'FAIL'}")
    print(f"target 2, fused with full metadata beats image-only: {gain:+.1f} points -> "
          f"{'PASS' if gain > 0 else 'FAIL'}")
    return rows


# (meta_dropout, meta_dropout_all, stop_on) settings of the fused head, then image-only per stop_on.
GRID = ("0:0:loss,0.05:0:loss,0.1:0:loss,0.2:0:loss,0.3:0:loss,0.1:0.1:loss,"
        "0.1:0:balanced_loss,0.1:0:balanced_accuracy,image:loss,image:balanced_loss,"
        "image:balanced_accuracy")


def study_defaults(table, image, y, folds, cfg: HeadConfig, grid: str = GRID) -> None:
    print("\nfield dropout x early stopping: balanced accuracy (%) with full metadata / one field "
          "/ all metadata missing in the scored fold; mean best epoch")
    print("| inputs | meta_dropout | meta_dropout_all | stop_on | full | no site | all missing | "
          "best epoch |\n|---|---|---|---|---|---|---|---|")
    for item in grid.split(","):
        parts = item.split(":")
        if parts[0] == "image":
            run = replace(cfg, inputs="image", stop_on=parts[1])
        else:
            run = replace(cfg, meta_dropout=float(parts[0]), meta_dropout_all=float(parts[1]),
                          stop_on=parts[2])
        r = cross_validate(table, image, y, folds, run)
        s = r["scores"]
        fused = run.inputs == "fused"
        print(f"| {run.inputs} | {run.meta_dropout if fused else ''} | "
              f"{run.meta_dropout_all if fused else ''} | {run.stop_on} | {pm(s['full'])} | "
              f"{pm(s['no localization']) if fused else ''} | "
              f"{pm(s['all missing']) if fused else ''} | {np.mean(r['epochs']):.1f} |", flush=True)


def study_calibration(y, folds, fits) -> None:
    """Pool the held-out folds' probabilities per calibration method (fitted on each fold's val)."""
    ys = np.concatenate([y[f[2]] for f in folds])
    print("\ncalibration of the fused head on the held-out folds (pooled), each method fitted on "
          "its fold's validation part")
    per_method = {}
    for method in ("none", *METHODS):
        probas, decided = [], []
        for f, r in zip(folds, fits, strict=False):
            if method == "none":
                probas.append(softmax(r["test"]["full"]))
                decided.append(probas[-1].argmax(1))
                continue
            cal = Calibrator(method).fit(r["val"], y[f[1]], r["class_weights"])
            probas.append(cal(r["test"]["full"]))
            decided.append(cal.predict(r["test"]["full"]))
        proba, pred = np.concatenate(probas), np.concatenate(decided)
        m = classification_metrics(ys, proba, CLASSES)
        bal = classification_metrics(ys, proba, CLASSES, y_pred=pred)["balanced_accuracy"]
        nll = float(-np.log(np.clip(proba[np.arange(len(ys)), ys], 1e-12, None)).mean())
        per_method[method] = (classwise_calibration(ys, proba, CLASSES), m, nll, bal)
    print("| method | class-wise ECE | top-label ECE | NLL | balanced acc. argmax p | "
          "balanced acc. Calibrator.predict | max ratio mean p / prevalence |\n"
          "|---|---|---|---|---|---|---|")
    for method, (cw, m, nll, bal) in per_method.items():
        print(f"| {method} | {cw['classwise_ece']:.4f} | {m['ece']:.4f} | {nll:.3f} | "
              f"{100 * m['balanced_accuracy']:.1f} | {100 * bal:.1f} | "
              f"{cw['max_prior_ratio']:.2f} |")
    print("\nper class: ECE / mean predicted probability (prevalence)")
    print("| class | prevalence | " + " | ".join(per_method) + " |\n|---|---|"
          + "---|" * len(per_method))
    for c in CLASSES:
        prev = per_method["none"][0]["per_class"][c]["prevalence"]
        cells = [f"{v[0]['per_class'][c]['ece']:.4f} / {v[0]['per_class'][c]['mean_proba']:.4f}"
                 for v in per_method.values()]
        print(f"| {c} | {prev:.4f} | " + " | ".join(cells) + " |")


def study_bootstrap(table, image, y, cfg: HeadConfig, seed: int, n_boot: int) -> None:
    """One 70/10/20 lesion-level split as fit-head makes it: image vs lesion bootstrap widths."""
    test = holdout_mask(table, 0.2, "lesion", seed)
    rest = np.flatnonzero(~test)
    inner = holdout_mask(table.iloc[rest].reset_index(drop=True), 0.125, "lesion", seed)
    fold = (rest[~inner], rest[inner], np.flatnonzero(test))
    r = fit_fold(table, image, y, fold, cfg)
    proba = softmax(r["test"]["full"])
    yt, lesions = y[fold[2]], table["group_id"].to_numpy()[fold[2]]
    t0 = time.perf_counter()
    by_image = bootstrap_ci(yt, proba, CLASSES, n_boot=n_boot, seed=seed)
    t1 = time.perf_counter()
    by_lesion = bootstrap_ci(yt, proba, CLASSES, n_boot=n_boot, seed=seed, groups=lesions)
    t2 = time.perf_counter()
    print(f"\nbootstrap 95 % intervals, fused head, lesion-level hold-out: {len(yt)} images of "
          f"{len(set(lesions))} lesions, {n_boot} resamples ({t1 - t0:.1f} s by image, "
          f"{t2 - t1:.1f} s by lesion)")
    print("| metric | image bootstrap | width | lesion bootstrap | width | lesion / image |\n"
          "|---|---|---|---|---|---|")
    for k in by_image:
        a, b = by_image[k], by_lesion[k]
        wa, wb = a[1] - a[0], b[1] - b[0]
        print(f"| {k} | {a[0]:.3f}-{a[1]:.3f} | {wa:.3f} | {b[0]:.3f}-{b[1]:.3f} | {wb:.3f} | "
              f"{wb / wa:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embeddings", type=Path, default=DATA / "ham10000-mobilenetv2-embeddings.h5")
    ap.add_argument("--metadata", type=Path, default=DATA / "HAM10000_metadata_full.csv")
    ap.add_argument("--study", default="table", help="comma-separated: table, defaults, "
                    "calibration, bootstrap, or all")
    ap.add_argument("--grid", default=GRID, help="settings of --study defaults: "
                    "DROPOUT:DROPOUT_ALL:STOP_ON or image:STOP_ON, comma-separated")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--meta-dropout", type=float, default=HeadConfig.meta_dropout)
    ap.add_argument("--meta-dropout-all", type=float, default=HeadConfig.meta_dropout_all)
    ap.add_argument("--stop-on", choices=STOP_ON, default=HeadConfig.stop_on)
    args = ap.parse_args(argv)
    for path in (args.embeddings, args.metadata):
        if not path.is_file():
            print(f"{path}: not found (the shared real data is not part of the repository; "
                  "pass --embeddings / --metadata)", file=sys.stderr)
            return 2
    print(cpu_flags())
    # HAM10000 has 7 'acral' images: a fold may train without one; that warning is expected here.
    logging.getLogger("skinfeat.data.metadata").setLevel(logging.ERROR)
    start = time.perf_counter()
    table, image, y = load(args.embeddings, args.metadata)
    print(f"{len(table)} images, {table['group_id'].nunique()} lesions, embeddings "
          f"{image.shape[1]}-d from {args.embeddings.name}")
    cfg = HeadConfig(seed=args.seed, meta_dropout=args.meta_dropout,
                     meta_dropout_all=args.meta_dropout_all, stop_on=args.stop_on)
    folds = make_folds(table, args.folds, args.seed)
    studies = {"table", "defaults", "calibration", "bootstrap"} if args.study == "all" else \
        set(args.study.split(","))
    if studies & {"table", "calibration"}:
        rows = study_table(table, image, y, folds, cfg) if "table" in studies else \
            {"fused (robust)": cross_validate(table, image, y, folds, cfg)}
        if "calibration" in studies:
            study_calibration(y, folds, rows["fused (robust)"]["fits"])
    if "defaults" in studies:
        study_defaults(table, image, y, folds, cfg, args.grid)
    if "bootstrap" in studies:
        study_bootstrap(table, image, y, cfg, args.seed, args.n_boot)
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
