"""Does metadata hurt where it is absent? Leave-one-source-out on real HAM10000 embeddings
(issue 20, item 5).

    .venv/bin/python benchmarks/held_out_source.py [--seeds 0,1,2] [--dropout-all 0,0.3]

An external test set often has no metadata at all (the ISIC 2018 test images), and there the
fused head scored below the image-only head although internal blanking (lesion-grouped CV,
every field blanked in the scored fold) said otherwise. This is the development proxy for it:
each acquisition source of HAM10000 (the ``dataset`` column: vidir_molemax, vidir_modern,
rosendahl, vienna_dias) is held out in turn, the head trains on the other three (early stopping
on a lesion-grouped part of them, metadata as given), and the held-out source is scored with
every metadata field blanked (``MetadataEncoder.blank``: the vector a missing value gets) and,
for comparison, with its metadata as given. The 9 lesions whose images sit in two sources are
left out first (``splits.drop_crossing_groups``).

For each ``--dropout-all`` value (``HeadConfig.meta_dropout_all``: whole-row metadata dropout
in training) the fused head is compared with the image-only head of the same seed and split:
balanced accuracy per held-out source and pooled over all held-out rows, and the paired
difference fused - image with its standard error over seeds. The four folds of a seed train as
one batched fit (``head_batch.fit_heads``). Unless ``--no-fallback``, each fused fold's
image-only fallback (``learn/fallback.py``) trains in the same batch, as fit-head trains it, and
the rows ``fused + fallback`` give the same fused heads with the rows whose every field is
missing scored by it (with metadata blanked: every held-out row).
The data files live beside the repository (``../shared/data``) and are not part of it.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from missing_metadata import DATA, VAL_FRACTION, balanced_accuracy, cpu_flags, load  # noqa: E402

from skinfeat.data.datasets import CLASSES  # noqa: E402
from skinfeat.data.metadata import MetadataEncoder  # noqa: E402
from skinfeat.data.splits import drop_crossing_groups, fold_ids, holdout_mask, source_values  # noqa: E402
from skinfeat.learn.fallback import fallback_rows, image_part  # noqa: E402
from skinfeat.learn.head import HeadConfig, head_logits  # noqa: E402
from skinfeat.learn.head_batch import fit_heads  # noqa: E402
from skinfeat.learn.head_model import HeadModel  # noqa: E402

SPLIT = "by:dataset"


def load_sources(embeddings: Path, metadata: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The validated table with its ``dataset`` column (the reader keeps declared fields only,
    so it is joined back by image id), without the lesions that cross sources."""
    table, image, y = load(embeddings, metadata)
    source = pd.read_csv(metadata, usecols=["image_id", "dataset"]).set_index("image_id")
    table = table.assign(dataset=source.loc[table["image_id"], "dataset"].to_numpy(),
                         _row=np.arange(len(table)))
    kept, _ = drop_crossing_groups(table, "dataset")
    rows = kept["_row"].to_numpy()
    return kept.drop(columns="_row"), image[rows], y[rows]


def make_folds(table: pd.DataFrame, seed: int) -> list[tuple[np.ndarray, ...]]:
    """(train, val, test) row numbers per held-out source; val: lesion-grouped, of the others."""
    folds = fold_ids(table, 4, SPLIT, seed)
    out = []
    for k in range(int(folds.max()) + 1):
        rest = np.flatnonzero(folds != k)
        inner = holdout_mask(table.iloc[rest].reset_index(drop=True), VAL_FRACTION, "lesion", seed)
        out.append((rest[~inner], rest[inner], np.flatnonzero(folds == k)))
    return out


def run_seed(table, image, y, folds, cfg: HeadConfig,
             fallback: bool = False) -> dict[str, list[np.ndarray]]:
    """One batched fit of the folds' heads; held-out logits with metadata blanked / as given.
    ``fallback``: each fold's image-only fallback trains in the same batch, as fit-head trains
    it (``learn/fallback.py``), and scores the rows whose every field is missing
    (``fb_blank``, ``fb_given``)."""
    encs = [MetadataEncoder().fit(table.iloc[f[0]]) for f in folds]
    metas = [e.transform(table) for e in encs]
    parts = [((image[tr], m[tr], y[tr]), (image[va], m[va], y[va]))
             for (tr, va, _), m in zip(folds, metas, strict=False)]
    fields = [e.dropout_fields() for e in encs]
    if fallback:
        parts += [(image_part(tr), image_part(va)) for tr, va in parts]
        fields += [None] * len(folds)
    fits = fit_heads(parts, len(CLASSES), cfg, fields)
    out = {"blank": [], "given": [], "fb_blank": [], "fb_given": []}
    for k, ((_, _, te), m, e, r) in enumerate(zip(folds, metas, encs, fits, strict=False)):
        for name, meta in (("blank", e.blank(m[te])), ("given", m[te])):
            lg = head_logits(r.model, image[te], meta)
            out[name].append(lg)
            if fallback:
                fb = HeadModel.fitted(cfg, fits[len(folds) + k].model).image_only(
                    image.shape[1], len(CLASSES))
                rows = fallback_rows(meta, e.missing_row())
                lg = lg.copy()
                lg[rows] = fb.logits(image[te][rows], meta[rows])
                out[f"fb_{name}"].append(lg)
    return out


def scores(y, folds, logits: list[np.ndarray]) -> list[float]:
    """Balanced accuracy per held-out source, then pooled over all held-out rows."""
    per = [balanced_accuracy(y[f[2]], lg) for f, lg in zip(folds, logits, strict=False)]
    pooled = balanced_accuracy(np.concatenate([y[f[2]] for f in folds]), np.concatenate(logits))
    return per + [pooled]


def mean_se(values) -> str:
    v = 100 * np.asarray(values)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.1f} ± {se:.1f}"


def diff_se(values) -> str:
    v = 100 * np.asarray(values)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():+.1f} ± {se:.1f}"


def print_table(sources, seeds, meta_dropout, image_s, fused_blank, fused_given) -> None:
    """The table over the seeds run so far (printed after each seed: a long run can be cut)."""
    cols = [*sources, "pooled"]
    img = np.asarray(image_s)
    print(f"\nbalanced accuracy (%), leave-one-source-out, mean ± s.e. over {len(seeds)} seeds "
          f"({','.join(map(str, seeds))}); meta_dropout={meta_dropout}; difference: paired by seed")
    print(f"| head | meta_dropout_all | held-out metadata | {' | '.join(cols)} |\n"
          f"|---|---|---|{'---|' * len(cols)}")
    print("| image only | | | " + " | ".join(mean_se(img[:, j]) for j in range(len(cols))) + " |")
    for p in fused_blank:
        b, g = np.asarray(fused_blank[p]), np.asarray(fused_given[p])
        print(f"| fused | {p} | blanked | "
              + " | ".join(mean_se(b[:, j]) for j in range(len(cols))) + " |")
        print(f"| fused - image | {p} | blanked | "
              + " | ".join(diff_se(b[:, j] - img[:, j]) for j in range(len(cols))) + " |")
        print(f"| fused | {p} | as given | "
              + " | ".join(mean_se(g[:, j]) for j in range(len(cols))) + " |")
        print(f"| fused - image | {p} | as given | "
              + " | ".join(diff_se(g[:, j] - img[:, j]) for j in range(len(cols))) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embeddings", type=Path, default=DATA / "ham10000-mobilenetv2-embeddings.h5")
    ap.add_argument("--metadata", type=Path, default=DATA / "HAM10000_metadata_with_dataset.csv")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split and weights)")
    ap.add_argument("--dropout-all", default=f"{HeadConfig.meta_dropout_all:g}",
                    help="comma-separated meta_dropout_all values of the fused head")
    ap.add_argument("--meta-dropout", type=float, default=HeadConfig.meta_dropout)
    ap.add_argument("--no-fallback", action="store_true",
                    help="leave out the fused head's image-only fallback (learn/fallback.py)")
    args = ap.parse_args(argv)
    for path in (args.embeddings, args.metadata):
        if not path.is_file():
            print(f"{path}: not found, skipped (the shared real data is not part of the "
                  "repository; pass --embeddings / --metadata)", file=sys.stderr)
            return 0
    print(cpu_flags())
    logging.getLogger("skinfeat.data.metadata").setLevel(logging.ERROR)
    logging.getLogger("skinfeat.data.splits").setLevel(logging.ERROR)
    start = time.perf_counter()
    table, image, y = load_sources(args.embeddings, args.metadata)
    sources = source_values(table, SPLIT)
    counts = table["dataset"].value_counts()
    print(f"{len(table)} images (crossing lesions left out), {image.shape[1]}-d embeddings; "
          + ", ".join(f"{s} {counts[s]}" for s in sources))
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [float(p) for p in args.dropout_all.split(",")]
    base = HeadConfig(meta_dropout=args.meta_dropout)
    # per setting: (seed -> scores) for image, fused blanked, fused given
    labels = [f"{p:g}" for p in settings] + \
        ([] if args.no_fallback else [f"{p:g} + fallback" for p in settings])
    image_s, fused_blank, fused_given = [], {p: [] for p in labels}, {p: [] for p in labels}
    for seed in seeds:
        folds = make_folds(table, seed)
        t0 = time.perf_counter()
        img = run_seed(table, image, y, folds, replace(base, inputs="image", seed=seed))
        image_s.append(scores(y, folds, img["blank"]))
        for p in settings:
            r = run_seed(table, image, y, folds, replace(base, meta_dropout_all=p, seed=seed),
                         fallback=not args.no_fallback)
            fused_blank[f"{p:g}"].append(scores(y, folds, r["blank"]))
            fused_given[f"{p:g}"].append(scores(y, folds, r["given"]))
            if not args.no_fallback:   # the same fused heads, with their fallbacks
                fused_blank[f"{p:g} + fallback"].append(scores(y, folds, r["fb_blank"]))
                fused_given[f"{p:g} + fallback"].append(scores(y, folds, r["fb_given"]))
        print(f"\nseed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        print_table(sources, seeds[:len(image_s)], args.meta_dropout, image_s, fused_blank,
                    fused_given)
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
